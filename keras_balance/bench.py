"""The harness behind `keras-balance train` and `keras-balance compare`.

`train(...)` trains a PINN on one PDE with one balancer and returns a
`RunResult` (per-term losses and weights over steps, the error against the
exact solution, wall time). `compare(...)` runs several balancers and seeds
on the same budget, and `results_table` formats them.
"""

import dataclasses
import inspect
import time

import keras
import numpy as np
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import pde as pde_lib
from keras_balance.callbacks import ExactErrorHistory, TrainingProgress
from keras_balance.models import JACOBIAN_MODES
from keras_balance.pinn import PINNModel, build_pinn

# Embedded defaults of each problem: a 4 x 50 tanh MLP, Adam, full-batch
# training on a fixed set of collocation points, the network's output scaled
# by the PDE's `characteristic_scale` (1 for Helmholtz, the load-based
# deflection scale for Kirchhoff). The step budgets keep the default run of
# each PDE under 3 minutes on 2 CPU cores.
DEFAULTS = {
    "helmholtz": {
        "steps": 5000,
        "learning_rate": 1e-3,
        "n_interior": 1024,
        "n_boundary": 256,
        "width": 50,
        "depth": 4,
    },
    "kirchhoff": {
        "steps": 2000,
        "learning_rate": 1e-3,
        "n_interior": 1024,
        "n_boundary": 256,
        "width": 50,
        "depth": 4,
    },
}


@dataclasses.dataclass
class RunResult:
    """What one training run produced."""

    pde: str
    balancer: str
    seed: int
    steps: int
    rel_l2: float
    mse: float
    seconds: float
    term_names: tuple
    final_losses: dict
    final_weights: dict
    log_steps: list
    history: dict
    model: object = dataclasses.field(default=None, repr=False)
    problem: object = dataclasses.field(default=None, repr=False)

    def summary(self):
        """The one-object JSON summary written by `--json`."""
        return {
            "pde": self.pde,
            "balancer": self.balancer,
            "seed": self.seed,
            "steps": self.steps,
            "rel_l2": self.rel_l2,
            "mse": self.mse,
            "seconds": round(self.seconds, 3),
            "final_losses": self.final_losses,
            "final_weights": self.final_weights,
        }


def _make_balancer(balancer, seed, options):
    """Instantiate a balancer; seed it with the run's seed if it takes one."""
    if isinstance(balancer, str):
        cls = balancers_lib.available().get(balancer.lower())
        options = dict(options or {})
        if cls is not None and "seed" in inspect.signature(cls.__init__).parameters:
            options.setdefault("seed", seed)
        return balancers_lib.get(balancer, **options)
    return balancers_lib.get(balancer)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Argument `{name}` must be a positive integer; received {name}={value!r}.")
    return int(value)


def train(
    pde="helmholtz",
    balancer="relobralo",
    steps=None,
    seed=0,
    learning_rate=None,
    log_every=None,
    jit_compile=True,
    verbose=1,
    balancer_options=None,
    pde_options=None,
    **overrides,
):
    """Train a PINN on `pde` with `balancer` and return a `RunResult`.

    Args:
        pde: `"helmholtz"`, `"kirchhoff"`, or a `PDE` instance.
        balancer: a balancer name (seeded with `seed` if it is random) or instance.
        steps: optimizer steps (default: the PDE's embedded default).
        seed: seeds the collocation points, the network and the balancer.
        learning_rate: Adam's learning rate (default: the PDE's).
        log_every: steps between two history records (default: steps / 100).
        jit_compile: compile the training step with XLA.
        verbose: 1 shows a progress bar, 0 is silent.
        balancer_options: constructor arguments for a balancer given by name.
        pde_options: constructor arguments for a PDE given by name.
        **overrides: `n_interior`, `n_boundary`, `width`, `depth`, `output_scale`.
    """
    problem = pde_lib.get(pde, **(pde_options or {}))
    key = next((k for k, cls in pde_lib.PROBLEMS.items() if isinstance(problem, cls)), None)
    settings = dict(DEFAULTS.get(key, DEFAULTS["helmholtz"]))
    settings["output_scale"] = problem.characteristic_scale
    unknown = set(overrides) - set(settings)
    if unknown:
        raise TypeError(f"Unknown arguments for train(): {sorted(unknown)}; known: {sorted(settings)}.")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if steps is not None:
        settings["steps"] = steps
    if learning_rate is not None:
        settings["learning_rate"] = learning_rate
    steps = _check_positive_int("steps", settings["steps"])
    seed = int(seed)
    log_every = _check_positive_int("log_every", log_every or max(1, steps // 100))
    log_every = min(log_every, steps)

    keras.utils.set_random_seed(seed)
    balancer_obj = _make_balancer(balancer, seed, balancer_options)
    points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
    solution = build_pinn(
        problem,
        width=settings["width"],
        depth=settings["depth"],
        seed=seed,
        output_scale=settings["output_scale"],
    )
    model = PINNModel(problem, solution, balancer=balancer_obj)
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]), jit_compile=jit_compile
    )
    dataset = tf.data.Dataset.from_tensors(points).repeat()
    callbacks = [ExactErrorHistory(problem, solution.predict_field)]
    if verbose:
        keys = list(problem.term_names) + [f"w_{n}" for n in problem.term_names] + ["rel_l2"]
        callbacks.append(TrainingProgress(steps, log_every, keys=keys))

    history = {}
    log_steps = []
    start = time.perf_counter()
    done = 0
    for chunk, epochs in ((log_every, steps // log_every), (steps % log_every, 1)):
        if chunk == 0 or epochs == 0:
            continue
        if verbose:
            callbacks[-1].steps_per_epoch = chunk
        fit = model.fit(
            dataset, steps_per_epoch=chunk, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks
        )
        for name, values in fit.history.items():
            history.setdefault(name, []).extend(float(v) for v in values)
        log_steps.extend(done + chunk * (i + 1) for i in range(epochs))
        done += chunk * epochs
    seconds = time.perf_counter() - start

    errors = problem.error(solution.predict_field, n=101)
    names = tuple(problem.term_names)
    return RunResult(
        pde=key or type(problem).__name__,
        balancer=balancer if isinstance(balancer, str) else balancer_obj.name,
        seed=seed,
        steps=steps,
        rel_l2=errors["rel_l2"],
        mse=errors["mse"],
        seconds=seconds,
        term_names=names,
        final_losses={n: history[n][-1] for n in names},
        final_weights={n: history[f"w_{n}"][-1] for n in names},
        log_steps=log_steps,
        history=history,
        model=model,
        problem=problem,
    )


def save_figures(result, out_dir):
    """Write the four figures of a run to `out_dir`; return their paths."""
    import os

    from keras_balance import plotting

    os.makedirs(out_dir, exist_ok=True)
    tag = f"{result.pde}_{result.balancer}_seed{result.seed}"
    predict = result.model.solution.predict_field
    title = f"{result.pde}, {result.balancer}, seed {result.seed}"
    return [
        plotting.plot_losses(result.log_steps, result.history, result.term_names,
                             os.path.join(out_dir, f"{tag}_losses.png"), title=title),
        plotting.plot_weights(result.log_steps, result.history, result.term_names,
                              os.path.join(out_dir, f"{tag}_weights.png"), title=title),
        plotting.plot_solution(result.problem, predict, os.path.join(out_dir, f"{tag}_solution.png"),
                               title=title),
        plotting.plot_error(result.problem, predict, os.path.join(out_dir, f"{tag}_error.png"),
                            title=f"|u - u_exact|: {title}"),
    ]


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


def step_times(pde="helmholtz", balancers=("sum", "relobralo"), steps=200, repeats=5, seed=0,
               jit_compile=True, baseline="sum"):
    """Median wall time of one training step per balancer, and its ratio to a baseline.

    Every model is built and compiled (and warmed up) first; then the timed
    chunks of `steps` steps run interleaved, one chunk per balancer per repeat,
    so that drift of the machine affects all balancers alike. The baseline is
    measured in the same process.

    Returns:
        `{name: {"ms_per_step": median, "ratio": median / baseline median}}`.
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    names = list(dict.fromkeys([baseline, *balancers]))
    problem = pde_lib.get(pde)
    key = next((k for k, cls in pde_lib.PROBLEMS.items() if isinstance(problem, cls)), "helmholtz")
    settings = DEFAULTS[key]
    points = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
    dataset = tf.data.Dataset.from_tensors(points).repeat()
    models = {}
    for name in names:
        keras.utils.set_random_seed(seed)
        solution = build_pinn(problem, seed=seed)
        model = PINNModel(problem, solution, balancer=_make_balancer(name, seed, None))
        model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), jit_compile=jit_compile)
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace + build
        iterator = iter(dataset)
        _train_chunk(model, iterator, steps)  # warm up
        models[name] = (model, iterator)
    samples = {name: [] for name in names}
    for _ in range(repeats):
        for name, (model, iterator) in models.items():
            samples[name].append(1000.0 * _train_chunk(model, iterator, steps) / steps)
    base = float(np.median(samples[baseline]))
    return {
        name: {"ms_per_step": float(np.median(v)), "ratio": float(np.median(v)) / base}
        for name, v in samples.items()
    }


#: Constructor arguments for balancers that cannot be built without them (by K).
BENCH_OPTIONS = {"prior_loss": lambda k: {"prior_losses": [1.0] * k}}

#: The Helmholtz boundary option that gives K loss terms.
HELMHOLTZ_TERMS = {2: "combined", 3: "per_axis", 5: "per_edge"}


def overhead(ks=(2, 3, 5), balancers=None, jacobian_modes=("loop",), steps=100, repeats=5, seed=0,
             jit_compile=True, verbose=0):
    """Cost per training step of each balancer on Helmholtz, as a ratio to Sum.

    For every K in `ks` the Helmholtz problem is set up with K terms (the
    residual and 1, 2 or 4 boundary terms); every balancer (and, for
    gradient-level ones, every mode of `jacobian_modes`) trains its own copy of
    the same 4 x 50 PINN on the same 1024 + 256 points. All models are built,
    compiled and warmed up first; the timed chunks of `steps` steps (the
    compiled train function called directly) then run interleaved, one per
    model per repeat in a fresh random order, so drift of the machine affects
    all alike. Sum is measured in the same run; each ratio is the median over
    the repeats of (chunk time / Sum's chunk time in the same repeat).

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
            keras.utils.set_random_seed(seed)
            options = BENCH_OPTIONS.get(name, lambda k: None)(k)
            model = PINNModel(problem, build_pinn(problem, seed=seed), balancer=_make_balancer(name, seed, options))
            model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), jit_compile=jit_compile,
                          jacobian_mode=mode)
            model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # trace + build
            iterator = iter(dataset)
            _train_chunk(model, iterator, steps)  # warm up
            models[(name, kind, mode)] = (model, iterator)
        samples = {key: [] for key in models}
        base_key = ("sum", balancers_lib.LOSS_LEVEL, None)
        ratios = {key: [] for key in models}
        order = np.random.default_rng(seed)
        keys = list(models)
        for _ in range(repeats):
            # A fresh order each repeat, so no model always runs first or
            # right after a slow one; each ratio pairs a chunk with Sum's
            # chunk of the same repeat.
            for index in order.permutation(len(keys)):
                model, iterator = models[keys[index]]
                samples[keys[index]].append(1000.0 * _train_chunk(model, iterator, steps) / steps)
            for key in keys:
                ratios[key].append(samples[key][-1] / samples[base_key][-1])
        for (name, kind, mode), values in samples.items():
            rows.append({"K": k, "balancer": name, "kind": kind, "jacobian_mode": mode,
                         "ms_per_step": float(np.median(values)),
                         "ratio": float(np.median(ratios[(name, kind, mode)]))})
        del models
    return rows


def overhead_table(rows):
    """A Markdown table of `overhead` rows: one line per balancer, one column per K."""
    ks = sorted({r["K"] for r in rows})
    keys = list(dict.fromkeys((r["balancer"], r["kind"], r["jacobian_mode"]) for r in rows))
    cells = {(r["balancer"], r["kind"], r["jacobian_mode"], r["K"]): r for r in rows}
    head = "| balancer | kind | per-term gradients | " + " | ".join(f"K={k}: ratio (ms)" for k in ks) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(ks)]
    for name, kind, mode in keys:
        parts = []
        for k in ks:
            row = cells.get((name, kind, mode, k))
            parts.append("" if row is None else f"{row['ratio']:.2f} ({row['ms_per_step']:.2f})")
        lines.append(f"| {name} | {kind} | {mode or '-'} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def compare(pde="helmholtz", balancers=("sum", "relobralo"), seeds=(0,), verbose=0, **kwargs):
    """Train every balancer with every seed on the same budget; return the results."""
    results = []
    for seed in seeds:
        for balancer in balancers:
            result = train(pde, balancer, seed=seed, verbose=verbose, **kwargs)
            result.model = None  # keep memory flat over many runs
            results.append(result)
    return results


def results_table(results):
    """A Markdown table: per balancer, the median and per-seed rel. L2 error, MSE and time."""
    lines = [
        "| PDE | balancer | steps | seeds | rel. L2 error (median) | rel. L2 per seed | MSE (median) | seconds (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = {}
    for r in results:
        groups.setdefault((r.pde, r.balancer, r.steps), []).append(r)
    for (pde, balancer, steps), runs in groups.items():
        rel = [r.rel_l2 for r in runs]
        lines.append(
            f"| {pde} | {balancer} | {steps} | {len(runs)} | {np.median(rel):.4f} | "
            f"{', '.join(f'{v:.4f}' for v in rel)} | {np.median([r.mse for r in runs]):.3e} | "
            f"{np.median([r.seconds for r in runs]):.1f} |"
        )
    return "\n".join(lines)


__all__ = ["DEFAULTS", "RunResult", "train", "compare", "results_table", "save_figures", "step_times",
           "overhead", "overhead_table"]
