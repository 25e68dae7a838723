"""The step-time measurement: one interleaved timer behind every speed claim.

`interleaved_step_times` times compiled models in chunks of steps, one chunk
per model per round, so that drift of the machine affects all of them alike;
each ratio pairs a chunk with the baseline's chunk of the same round.
`step_times` (`keras-balance speed`), `overhead` (`keras-balance bench
overhead`) and the step-time column of `run_comparison` all use it.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import resolve
from keras_balance.bench.run import DEFAULTS, _check_positive_int, problem_name
from keras_balance.models import JACOBIAN_MODES
from keras_balance.pinn import PINNModel, build_pinn

#: The Helmholtz boundary option that gives K loss terms.
HELMHOLTZ_TERMS = {2: "combined", 3: "per_axis", 5: "per_edge"}


def _train_chunk(model, iterator, steps):
    """Run `steps` compiled training steps and wait for the last one; return seconds.

    Calls the model's compiled train function directly, so that the timing
    holds the steps themselves and not `fit`'s per-call set-up.
    """
    model.make_train_function()
    function = model.train_function
    start = time.perf_counter()
    outputs = None
    for _ in range(steps):
        outputs = function(iterator)
    result = outputs.get_value() if hasattr(outputs, "get_value") else outputs
    float(keras.tree.flatten(result)[0])  # wait for the device
    return time.perf_counter() - start


def interleaved_step_times(models, steps, repeats, baseline=None, seed=None):
    """Milliseconds per training step of compiled models, timed in interleaved chunks.

    Every model first runs one chunk untimed (a new iterator may retrace).
    Then each of `repeats` rounds runs one timed chunk of `steps` steps per
    model (the compiled train function called directly, no input pipeline
    set-up), in a fresh random order per round when `seed` is given, so that
    no model always runs first or right after a slow one.

    Args:
        models: `{key: (model, iterator)}`, compiled models and the iterators they train on.
        steps: steps per chunk.
        repeats: timed chunks per model.
        baseline: the key the ratios refer to (None: no ratios).
        seed: seeds the order of each round (None: the order of `models`, every round).

    Returns:
        `{key: {"ms_per_step": median over the rounds, "ratio": median over the
        rounds of (chunk time / the baseline's chunk time in the same round)}}`;
        `ratio` is None without a baseline.
    """
    keys = list(models)
    order = None if seed is None else np.random.default_rng(seed)
    for key in keys:
        model, iterator = models[key]
        _train_chunk(model, iterator, steps)  # warm up
    samples = {key: [] for key in keys}
    ratios = {key: [] for key in keys}
    for _ in range(repeats):
        for index in range(len(keys)) if order is None else order.permutation(len(keys)):
            model, iterator = models[keys[index]]
            samples[keys[index]].append(1000.0 * _train_chunk(model, iterator, steps) / steps)
        if baseline in models:
            for key in keys:
                ratios[key].append(samples[key][-1] / samples[baseline][-1])
    return {
        key: {"ms_per_step": float(np.median(samples[key])),
              "ratio": float(np.median(ratios[key])) if ratios[key] else None}
        for key in keys
    }


def _timing_model(problem, balancer, dataset, seed, learning_rate, jit_compile, num_terms=None,
                  jacobian_mode=None):
    """A fresh PINN of the problem with `balancer` (a name), compiled and traced: `(model, iterator)`."""
    keras.utils.set_random_seed(seed)
    solution = build_pinn(problem, seed=seed)
    model = PINNModel(problem, solution, balancer=resolve(balancer, num_terms, seed=seed))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile,
                  jacobian_mode=jacobian_mode)
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace + build
    return model, iter(dataset)


def step_times(pde="helmholtz", balancers=("sum", "relobralo"), steps=200, repeats=5, seed=0,
               jit_compile=True, baseline="sum"):
    """Median wall time of one training step per balancer, and its ratio to a baseline.

    Every model is built and compiled (and warmed up) first; then the timed
    chunks of `steps` steps run interleaved (`interleaved_step_times`), one
    chunk per balancer per repeat in the order given, so that drift of the
    machine affects all balancers alike. The baseline is measured in the same
    process.

    Returns:
        `{name: {"ms_per_step": median, "ratio": median / baseline median}}`.
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    names = list(dict.fromkeys([baseline, *balancers]))
    problem = pde_lib.get(pde)
    settings = DEFAULTS[problem_name(problem) or "helmholtz"]
    points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
    dataset = tf.data.Dataset.from_tensors(points).repeat()
    models = {name: _timing_model(problem, name, dataset, seed, settings["learning_rate"], jit_compile)
              for name in names}
    times = interleaved_step_times(models, steps, repeats)
    base = times[baseline]["ms_per_step"]
    return {name: {"ms_per_step": row["ms_per_step"], "ratio": row["ms_per_step"] / base}
            for name, row in times.items()}


def overhead(ks=(2, 3, 5), balancers=None, jacobian_modes=("loop",), steps=100, repeats=5, seed=0,
             jit_compile=True, verbose=0):
    """Cost per training step of each balancer on Helmholtz, as a ratio to Sum.

    For every K in `ks` the Helmholtz problem is set up with K terms (the
    residual and 1, 2 or 4 boundary terms); every balancer (and, for
    gradient-level ones, every mode of `jacobian_modes`) trains its own copy of
    the same 4 x 50 PINN on the same 1024 + 256 points. All models are built,
    compiled and warmed up first; the timed chunks of `steps` steps (the
    compiled train function called directly) then run interleaved
    (`interleaved_step_times`), one per model per repeat in a fresh random
    order, so drift of the machine affects all alike. Sum is measured in the
    same run; each ratio is the median over the repeats of (chunk time /
    Sum's chunk time in the same repeat).

    Returns:
        A list of rows `{"K", "balancer", "kind", "jacobian_mode", "ms_per_step", "ratio"}`.
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    names = list(balancers_lib.available()) if balancers is None else list(balancers)
    for mode in jacobian_modes:
        if mode not in JACOBIAN_MODES:
            raise ValueError(f"Unknown jacobian mode {mode!r}; known: {JACOBIAN_MODES}.")
    settings = DEFAULTS["helmholtz"]
    rows = []
    for k in ks:
        if k not in HELMHOLTZ_TERMS:
            raise ValueError(f"Argument `ks` must take values in {sorted(HELMHOLTZ_TERMS)}; received {k!r}.")
        problem = pde_lib.HelmholtzPDE(boundary=HELMHOLTZ_TERMS[k])
        points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
        dataset = tf.data.Dataset.from_tensors(points).repeat()
        configs = [("sum", balancers_lib.LOSS_LEVEL, None)]
        for name in names:
            kind = balancers_lib.available()[name.lower()].kind
            if name == "sum":
                continue
            if kind == balancers_lib.GRADIENT_LEVEL:
                configs.extend((name, kind, mode) for mode in jacobian_modes)
            else:
                configs.append((name, kind, None))
        models = {}
        for name, kind, mode in configs:
            if verbose:
                print(f"K={k}: building {name}{'' if mode is None else f' ({mode})'}", flush=True)
            models[(name, kind, mode)] = _timing_model(problem, name, dataset, seed, settings["learning_rate"],
                                                       jit_compile, num_terms=k, jacobian_mode=mode)
        times = interleaved_step_times(models, steps, repeats, baseline=configs[0], seed=seed)
        rows.extend({"K": k, "balancer": name, "kind": kind, "jacobian_mode": mode, **times[(name, kind, mode)]}
                    for name, kind, mode in models)
        del models
    return rows
