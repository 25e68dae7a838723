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

from keras_balance import balancers as balancers_lib
from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import resolve
from keras_balance.bench.handwritten import HandWrittenStep
from keras_balance.bench.run import DEFAULTS, _check_positive_int, problem_name
from keras_balance.data import full_batch, full_batch_element
from keras_balance.models import JACOBIAN_MODES, training_on
from keras_balance.pinn import PINNModel, build_pinn

#: The Helmholtz options that give K loss terms.
HELMHOLTZ_TERMS = {
    2: {"boundary": "combined"},
    3: {"boundary": "per_axis"},
    5: {"boundary": "per_edge"},
    9: {"boundary": "per_edge", "segments": 2},
    17: {"boundary": "per_edge", "segments": 4},
}


def _train_chunk(model, iterator, steps, batch=None):
    """Run `steps` compiled training steps and wait for the last one; return seconds.

    Calls the model's compiled train function directly, so that the timing
    holds the steps themselves and not `fit`'s per-call set-up. With
    `batch` (a `full_batch` element), the steps train on it as `fit` on
    that `full_batch` dataset does, leaving the iterator alone.
    """
    model.make_train_function()
    function = model.train_function
    start = time.perf_counter()
    outputs = None
    with training_on(model, batch):
        for _ in range(steps):
            outputs = function(iterator)
    result = outputs.get_value() if hasattr(outputs, "get_value") else outputs
    float(keras.tree.flatten(result)[0])  # wait for the device
    return time.perf_counter() - start


def _run_chunk(entry, steps):
    """Seconds for `steps` steps of a timed entry: `(model, iterator[, batch])` or a callable `steps -> seconds`."""
    if callable(entry):
        return entry(steps)
    return _train_chunk(*entry[:2], steps, *entry[2:])


def interleaved_step_times(models, steps, repeats, baseline=None, seed=None):
    """Milliseconds per training step of compiled models, timed in interleaved chunks.

    Every model first runs one chunk untimed (a new iterator may retrace).
    Then each of `repeats` rounds runs one timed chunk of `steps` steps per
    model (the compiled train function called directly, no input pipeline
    set-up), in a fresh random order per round when `seed` is given, so that
    no model always runs first or right after a slow one.

    Args:
        models: `{key: entry}`: `(model, iterator)`, a compiled model and the
            iterator it trains on, or a callable `steps -> seconds` that runs
            `steps` steps of another path (a hand-written step, `fit`) and
            waits for the last one.
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
        _run_chunk(models[key], steps)  # warm up
    samples = {key: [] for key in keys}
    ratios = {key: [] for key in keys}
    for _ in range(repeats):
        for index in range(len(keys)) if order is None else order.permutation(len(keys)):
            samples[keys[index]].append(1000.0 * _run_chunk(models[keys[index]], steps) / steps)
        if baseline in models:
            for key in keys:
                ratios[key].append(samples[key][-1] / samples[baseline][-1])
    return {
        key: {"ms_per_step": float(np.median(samples[key])),
              "ratio": float(np.median(ratios[key])) if ratios[key] else None}
        for key in keys
    }


def _timing_model(problem, balancer, dataset, seed, learning_rate, jit_compile, num_terms=None,
                  jacobian_mode=None, options=None):
    """A fresh PINN of the problem with `balancer` (a name), compiled and traced: `(model, iterator, batch)`.

    `dataset` is a `full_batch` dataset, and the timed steps train on its
    batch as `fit` does.
    """
    keras.utils.set_random_seed(seed)
    solution = build_pinn(problem, seed=seed)
    model = PINNModel(problem, solution, balancer=resolve(balancer, num_terms, options, seed=seed))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile,
                  jacobian_mode=jacobian_mode)
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace + build
    return model, iter(dataset), full_batch_element(dataset)


#: The key of the hand-written step in `step_times` and `overhead`.
HAND_WRITTEN = "hand-written"
#: The key of the hand-written step with one backward pass per term, in `overhead`.
HAND_WRITTEN_PER_TERM = "hand-written per-term"


def _hand_written(problem, points, seed, learning_rate, jit_compile, per_term=False):
    """A timed entry for `HandWrittenStep` on `problem`: the same network as `_timing_model`'s."""
    keras.utils.set_random_seed(seed)
    step = HandWrittenStep(problem, build_pinn(problem, seed=seed).network, learning_rate, jit_compile=jit_compile,
                           per_term=per_term)
    return lambda steps: step.run(points, steps)


def step_times(pde="helmholtz", balancers=("sum", "relobralo"), steps=200, repeats=5, seed=0,
               jit_compile=True, baseline="sum"):
    """Median wall time of one training step per balancer, and its ratio to a baseline.

    Every model is built and compiled (and warmed up) first; then the timed
    chunks of `steps` steps run interleaved (`interleaved_step_times`), one
    chunk per balancer per repeat in the order given, so that drift of the
    machine affects all balancers alike. The baseline is measured in the same
    process, and so is a step written by hand without keras_balance
    (`HandWrittenStep`, the same network, loss and optimizer), under the key
    `"hand-written"`; `baseline="hand-written"` takes it as the baseline.

    Returns:
        `{name: {"ms_per_step": median, "ratio": median / baseline median,
        "vs_hand_written": median / the hand-written step's median}}`, the
        hand-written step included.
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    names = [n for n in dict.fromkeys([baseline, *balancers]) if n != HAND_WRITTEN]
    problem = pde_lib.get(pde)
    settings = DEFAULTS[problem_name(problem) or "helmholtz"]
    points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
    dataset = full_batch(points)
    models = {HAND_WRITTEN: _hand_written(problem, points, seed, settings["learning_rate"], jit_compile)}
    models.update({name: _timing_model(problem, name, dataset, seed, settings["learning_rate"], jit_compile)
                   for name in names})
    times = interleaved_step_times(models, steps, repeats)
    base, hand = times[baseline]["ms_per_step"], times[HAND_WRITTEN]["ms_per_step"]
    return {name: {"ms_per_step": row["ms_per_step"], "ratio": row["ms_per_step"] / base,
                   "vs_hand_written": row["ms_per_step"] / hand}
            for name, row in times.items()}


def overhead(ks=(2, 3, 5), balancers=None, jacobian_modes=("loop",), steps=100, repeats=5, seed=0,
             jit_compile=True, verbose=0, update_every=None):
    """Cost per training step of each balancer on Helmholtz, as a ratio to Sum.

    For every K in `ks` the Helmholtz problem is set up with K terms (the
    residual and 1, 2 or 4 boundary terms); every balancer (and, for
    gradient-level ones, every mode of `jacobian_modes`) trains its own copy of
    the same 4 x 50 PINN on the same 1024 + 256 points. All models are built,
    compiled and warmed up first; the timed chunks of `steps` steps (the
    compiled train function called directly) then run interleaved
    (`interleaved_step_times`), one per model per repeat in a fresh random
    order, so drift of the machine affects all alike. Sum is measured in the
    same run, and so is a step written by hand without keras_balance
    (`HandWrittenStep`, balancer `"hand-written"`, kind `"-"`); each ratio is
    the median over the repeats of (chunk time / Sum's chunk time in the same
    repeat).

    With `update_every=n`, every gradient-level balancer that can hold its
    weights (`holds_weights`) is timed a second time with `update_every=n`
    (its default otherwise, which is 10 for LR annealing): the cost
    amortized over chunks of `steps` steps (make it a multiple of n).

    Returns:
        A list of rows `{"K", "balancer", "kind", "jacobian_mode",
        "update_every", "ms_per_step", "ratio"}` (`update_every` None: the
        balancer's default).
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
        problem = pde_lib.HelmholtzPDE(**HELMHOLTZ_TERMS[k])
        points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
        dataset = full_batch(points)
        configs = [("sum", balancers_lib.LOSS_LEVEL, None, None)]
        for name in names:
            cls = balancers_lib.available()[name.lower()]
            if name == "sum":
                continue
            if cls.kind == balancers_lib.GRADIENT_LEVEL:
                configs.extend((name, cls.kind, mode, None) for mode in jacobian_modes)
                if update_every is not None and cls.holds_weights:
                    configs.extend((name, cls.kind, mode, update_every) for mode in jacobian_modes)
            else:
                configs.append((name, cls.kind, None, None))
        models = {(HAND_WRITTEN, "-", None, None): _hand_written(problem, points, seed, settings["learning_rate"],
                                                                  jit_compile)}
        if any(kind == balancers_lib.GRADIENT_LEVEL for _, kind, _, _ in configs):
            # The least a loop-mode step can cost: one forward pass, K backward passes.
            models[(HAND_WRITTEN_PER_TERM, "-", "loop", None)] = _hand_written(
                problem, points, seed, settings["learning_rate"], jit_compile, per_term=True)
        for name, kind, mode, every in configs:
            if verbose:
                print(f"K={k}: building {name}{'' if mode is None else f' ({mode})'}"
                      f"{'' if every is None else f', update_every={every}'}", flush=True)
            options = None if every is None else {"update_every": every}
            models[(name, kind, mode, every)] = _timing_model(problem, name, dataset, seed, settings["learning_rate"],
                                                              jit_compile, num_terms=k, jacobian_mode=mode,
                                                              options=options)
        times = interleaved_step_times(models, steps, repeats, baseline=configs[0], seed=seed)
        rows.extend({"K": k, "balancer": name, "kind": kind, "jacobian_mode": mode, "update_every": every,
                     **times[(name, kind, mode, every)]}
                    for name, kind, mode, every in models)
        del models
    return rows
