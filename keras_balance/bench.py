"""The harness behind `keras-balance train` and `keras-balance compare`.

`train(...)` trains a PINN on one PDE with one balancer and returns a
`RunResult` (per-term losses and weights over steps, the error against the
exact solution, wall time). `compare(...)` runs several balancers and seeds
on the same budget, and `results_table` formats them.
"""

import dataclasses
import inspect
import itertools
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
    status: str = "ok"
    sampling: str = "uniform"
    resample: bool = False
    rel_l2_adam: float = None
    mse_adam: float = None
    lbfgs: dict = None
    points: object = dataclasses.field(default=None, repr=False)
    #: The network, points and Adam settings of the run (learning rate and its schedule).
    settings: dict = None

    def summary(self):
        """The one-object JSON summary written by `--json`.

        `rel_l2` and `mse` are the final errors (after L-BFGS when it ran);
        `rel_l2_adam` and `mse_adam` those after the first-order phase.
        """
        summary = {
            "pde": self.pde,
            "balancer": self.balancer,
            "seed": self.seed,
            "steps": self.steps,
            "rel_l2": self.rel_l2,
            "mse": self.mse,
            "seconds": round(self.seconds, 3),
            "final_losses": self.final_losses,
            "final_weights": self.final_weights,
            "status": self.status,
            "sampling": self.sampling,
            "resample": self.resample,
            "settings": self.settings,
        }
        if self.lbfgs is not None:
            summary.update(rel_l2_adam=self.rel_l2_adam, mse_adam=self.mse_adam, lbfgs=self.lbfgs)
        return summary


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


class _StopOnNonFinite(keras.callbacks.Callback):
    """Stop training at the end of an epoch whose loss or error is not finite; note the step."""

    def __init__(self):
        super().__init__()
        self.step = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = [logs[k] for k in ("loss", "rel_l2") if k in logs]
        if any(not np.isfinite(float(np.asarray(v))) for v in values):
            self.step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


def point_dataset(problem, n_interior, n_boundary, seed=0, sampling="uniform", resample=False):
    """The training data of a run: `(dataset, points)`.

    Fixed points (`resample=False`): `points = problem.sample(..., seed, method=sampling)`,
    repeated every step. Resampled: a `tf.data` pipeline that yields a fresh
    set each step, `problem.sample(..., step=k)` for k = 0, 1, 2, ... (see
    `PDE.sample`: new uniform draws, or the next points of the Sobol / Halton
    sequence); the counter is shared by every iterator of the dataset, so a
    new `fit` call continues the sequence. `points` is then the set of step 0.
    """
    points = problem.sample(n_interior, n_boundary, seed=seed, method=sampling)
    if not resample:
        return tf.data.Dataset.from_tensors(points).repeat(), points
    counter = itertools.count()

    def generate():
        while True:
            yield problem.sample(n_interior, n_boundary, seed=seed, method=sampling, step=next(counter))

    spec = tf.TensorSpec(points.shape, tf.float32)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(2)
    return dataset, points


def train(
    pde="helmholtz",
    balancer="relobralo",
    steps=None,
    seed=0,
    learning_rate=None,
    lr_schedule="constant",
    final_learning_rate=None,
    log_every=None,
    jit_compile=True,
    verbose=1,
    balancer_options=None,
    pde_options=None,
    sampling="uniform",
    resample=False,
    lbfgs_steps=0,
    lbfgs_options=None,
    callbacks=None,
    **overrides,
):
    """Train a PINN on `pde` with `balancer` and return a `RunResult`.

    Args:
        pde: `"helmholtz"`, `"kirchhoff"`, or a `PDE` instance.
        balancer: a balancer name (seeded with `seed` if it is random) or instance.
        steps: optimizer steps (default: the PDE's embedded default).
        seed: seeds the collocation points, the network and the balancer.
        learning_rate: Adam's learning rate (default: the PDE's); the initial one
            of a decaying schedule.
        lr_schedule: `"constant"`, `"exponential"` or `"cosine"` decay from
            `learning_rate` to `final_learning_rate` over the Adam steps (see
            `learning_rate_schedule`).
        final_learning_rate: the learning rate at the last Adam step of a
            decaying schedule (default: `learning_rate / 100`).
        log_every: steps between two history records (default: steps / 100).
        jit_compile: compile the training step with XLA.
        verbose: 1 shows a progress bar, 0 is silent.
        balancer_options: constructor arguments for a balancer given by name.
        pde_options: constructor arguments for a PDE given by name.
        sampling: collocation points, `"uniform"`, `"sobol"` or `"halton"` (see `PDE.sample`).
        resample: a fresh set of points every step instead of one fixed set.
        lbfgs_steps: L-BFGS iterations after Adam (0: none), on the balanced
            loss with the balancer's last weights frozen, full batch on the
            points of step 0 (see `keras_balance.lbfgs.finetune`).
        lbfgs_options: more arguments of `finetune` (`tolerance`, `chunk`,
            `dtype`, ...). The summary's `lbfgs["history"]` holds
            `[step, loss, rel. L2, seconds]` after every chunk.
        callbacks: more Keras callbacks for the Adam phase.
        **overrides: `n_interior`, `n_boundary`, `width`, `depth`, `output_scale`.

    Returns:
        A `RunResult`. A run whose loss or error stops being finite ends
        early with `status="diverged at step ~k"` (k: the step of the log
        record that saw it) and NaN errors.
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

    if sampling not in pde_lib.SAMPLING_METHODS:
        raise ValueError(
            f"Argument `sampling` must be one of {pde_lib.SAMPLING_METHODS}; received sampling={sampling!r}."
        )
    if isinstance(lbfgs_steps, bool) or not isinstance(lbfgs_steps, (int, np.integer)) or lbfgs_steps < 0:
        raise ValueError(
            f"Argument `lbfgs_steps` must be a non-negative integer; received lbfgs_steps={lbfgs_steps!r}."
        )

    keras.utils.set_random_seed(seed)
    balancer_obj = _make_balancer(balancer, seed, balancer_options)
    dataset, points = point_dataset(problem, settings["n_interior"], settings["n_boundary"], seed=seed,
                                    sampling=sampling, resample=resample)
    solution = build_pinn(
        problem,
        width=settings["width"],
        depth=settings["depth"],
        seed=seed,
        output_scale=settings["output_scale"],
    )
    model = PINNModel(problem, solution, balancer=balancer_obj)
    rate = learning_rate_schedule(lr_schedule, settings["learning_rate"], steps, final_learning_rate)
    model.compile(optimizer=keras.optimizers.Adam(rate), jit_compile=jit_compile)
    stopper = _StopOnNonFinite()
    callbacks = [ExactErrorHistory(problem, solution.predict_field), stopper, *(callbacks or [])]
    progress = None
    if verbose:
        keys = list(problem.term_names) + [f"w_{n}" for n in problem.term_names] + ["rel_l2"]
        progress = TrainingProgress(steps, log_every, keys=keys)
        callbacks.append(progress)

    history = {}
    log_steps = []
    start = time.perf_counter()
    done = 0
    for chunk, epochs in ((log_every, steps // log_every), (steps % log_every, 1)):
        if chunk == 0 or epochs == 0 or stopper.step is not None:
            continue
        if progress is not None:
            progress.steps_per_epoch = chunk
        fit = model.fit(
            dataset, steps_per_epoch=chunk, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks
        )
        for name, values in fit.history.items():
            history.setdefault(name, []).extend(float(v) for v in values)
        recorded = len(fit.history.get("loss", ()))
        log_steps.extend(done + chunk * (i + 1) for i in range(recorded))
        done += chunk * recorded
    seconds = time.perf_counter() - start

    status = "ok" if stopper.step is None else f"diverged at step ~{stopper.step}"
    errors = problem.error(solution.predict_field, n=101)
    errors_adam, lbfgs_summary = dict(errors), None
    if lbfgs_steps and stopper.step is None:
        from keras_balance import lbfgs

        options = dict(lbfgs_options or {})
        options.setdefault("jit_compile", jit_compile)
        show = options.pop("verbose", verbose)
        user_callback = options.pop("callback", None)
        trace, lbfgs_start = [], time.perf_counter()

        def follow(step, loss):  # the error along the way (51 x 51 grid), as for Adam
            error = problem.error(solution.predict_field, n=51)["rel_l2"]
            trace.append([int(step), float(loss), float(error), round(time.perf_counter() - lbfgs_start, 3)])
            if show:
                print(f"L-BFGS {step}/{lbfgs_steps}: loss {loss:.4e}, rel. L2 {error:.3e}, "
                      f"{time.perf_counter() - lbfgs_start:.0f} s", flush=True)
            if user_callback is not None:
                user_callback(step, loss)

        outcome = lbfgs.finetune(model, points, max_steps=int(lbfgs_steps), verbose=0, callback=follow, **options)
        lbfgs_summary = outcome.summary()
        lbfgs_summary["history"] = trace  # [step, loss, rel. L2 (51 x 51 grid), seconds]
        errors = problem.error(solution.predict_field, n=101)
    if not (np.isfinite(errors["rel_l2"]) and np.isfinite(errors["mse"])) and status == "ok":
        status = f"diverged at step ~{done}"
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
        final_losses={n: history[n][-1] if n in history else float("nan") for n in names},
        final_weights={n: history[f"w_{n}"][-1] if f"w_{n}" in history else float("nan") for n in names},
        log_steps=log_steps,
        history=history,
        model=model,
        problem=problem,
        status=status,
        sampling=sampling,
        resample=bool(resample),
        rel_l2_adam=errors_adam["rel_l2"],
        mse_adam=errors_adam["mse"],
        lbfgs=lbfgs_summary,
        points=points,
        settings={**settings, "lr_schedule": lr_schedule,
                  "final_learning_rate": None if lr_schedule == "constant"
                  else final_learning_rate or settings["learning_rate"] / 100.0},
    )


LR_SCHEDULES = ("constant", "exponential", "cosine")


@keras.saving.register_keras_serializable(package="keras_balance")
class ExponentialToFinal(keras.optimizers.schedules.LearningRateSchedule):
    """`initial * (final / initial) ** (step / steps)`, then `final` after `steps`."""

    def __init__(self, initial, final, steps):
        self.initial, self.final, self.steps = float(initial), float(final), int(steps)

    def __call__(self, step):
        progress = keras.ops.minimum(keras.ops.cast(step, "float32") / float(self.steps), 1.0)
        return self.initial * keras.ops.power(self.final / self.initial, progress)

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "steps": self.steps}


def learning_rate_schedule(name, learning_rate, steps, final_learning_rate=None):
    """Adam's learning rate: a constant, or a decay over `steps` to `final_learning_rate`.

    `"exponential"` multiplies the rate by the same factor every step
    (`ExponentialToFinal`), `"cosine"` follows half
    a cosine (`CosineDecay`, I. Loshchilov and F. Hutter, "SGDR: stochastic
    gradient descent with warm restarts", ICLR 2017); both start at
    `learning_rate` and reach `final_learning_rate` (default
    `learning_rate / 100`) at step `steps`, and stay there after it.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"Argument `lr_schedule` must be one of {LR_SCHEDULES}; received lr_schedule={name!r}.")
    learning_rate = float(learning_rate)
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"Argument `learning_rate` must be a positive number; received {learning_rate!r}.")
    if name == "constant":
        if final_learning_rate is not None:
            raise ValueError("Argument `final_learning_rate` needs a decaying `lr_schedule` "
                             f"('exponential' or 'cosine'); received lr_schedule='constant' and "
                             f"final_learning_rate={final_learning_rate!r}.")
        return learning_rate
    final = learning_rate / 100.0 if final_learning_rate is None else float(final_learning_rate)
    if not (np.isfinite(final) and 0 < final <= learning_rate):
        raise ValueError(f"Argument `final_learning_rate` must be a positive number at most the learning rate "
                         f"({learning_rate:g}); received final_learning_rate={final_learning_rate!r}.")
    steps = _check_positive_int("steps", steps)
    if name == "exponential":
        return ExponentialToFinal(learning_rate, final, steps)
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=final / learning_rate)


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


# -- the comparison behind `keras-balance compare` ------------------------------


class RunProgress(keras.callbacks.Callback):
    """A one-line progress display for one run of a comparison.

    Shows `[i/N] balancer seed s: step k/total (p%), elapsed, rel. L2`,
    updated at each log record: in place on a terminal, every 10 % of the
    run otherwise (log files). Reads the steps done from the optimizer.

    Args:
        label: the run's name, e.g. `"[3/12] relobralo seed 1"`.
        total_steps: the run's budget.
        stream: where to write (default `sys.stderr`).
    """

    def __init__(self, label, total_steps, stream=None):
        super().__init__()
        self.label = label
        self.total_steps = int(total_steps)
        self.stream = stream
        self.start = None
        self.last_decile = -1
        self.last_lbfgs_decile = -1

    def _stream(self):
        import sys

        return self.stream or sys.stderr

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def lbfgs_step(self, step, total, loss):
        """Show the L-BFGS phase after Adam: `L-BFGS k/total (p%), elapsed, loss`."""
        text = (f"{self.label}: L-BFGS {step}/{total} ({100.0 * step / total:3.0f}%), "
                f"{time.perf_counter() - (self.start or time.perf_counter()):6.1f} s, loss {loss:.3e}")
        stream = self._stream()
        if getattr(stream, "isatty", lambda: False)():
            stream.write("\r" + text.ljust(100))
            stream.flush()
        else:
            decile = (10 * step) // total
            if decile > self.last_lbfgs_decile:
                self.last_lbfgs_decile = decile
                stream.write(text + "\n")
                stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = int(self.model.optimizer.iterations.numpy())
        error = logs.get("rel_l2")
        text = (f"{self.label}: step {done}/{self.total_steps} ({100.0 * done / self.total_steps:3.0f}%), "
                f"{time.perf_counter() - self.start:6.1f} s"
                + ("" if error is None else f", rel. L2 {float(error):.3e}"))
        stream = self._stream()
        if getattr(stream, "isatty", lambda: False)():
            stream.write("\r" + text.ljust(100))
            stream.flush()
        else:
            decile = (10 * done) // self.total_steps
            if decile > self.last_decile:
                self.last_decile = decile
                stream.write(text + "\n")
                stream.flush()

    def finish(self, text):
        """End the run's line with a closing message."""
        stream = self._stream()
        if getattr(stream, "isatty", lambda: False)():
            stream.write("\r" + " " * 100 + "\r")
        stream.write(f"{self.label}: {text}\n")
        stream.flush()


def balancer_names(spec):
    """Balancer names from a comma-separated string or a list; `"all"` is every registered one.

    Raises `ValueError` for an unknown name or an empty list.
    """
    if isinstance(spec, str):
        spec = [n.strip() for n in spec.split(",") if n.strip()]
    names = [str(n).lower() for n in spec]
    known = balancers_lib.available()
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown balancer(s) {unknown}; known balancers: {', '.join(known)} (or 'all').")
    if not names:
        raise ValueError(f"Argument `balancers` must name at least one balancer; received {spec!r}.")
    return list(dict.fromkeys(names))


def options_for(name, num_terms, balancer_options=None):
    """Constructor arguments of balancer `name` in a comparison with `num_terms` terms.

    `balancer_options` is either one dict for every balancer but Sum (which
    has no hyper-parameters), or a dict keyed by balancer names
    (`{"relobralo": {"temperature": 1.0}}`). Balancers that
    need arguments (`BENCH_OPTIONS`: `prior_loss` gets equal priors, so that
    it can run at all; on a PDE there is no label distribution) get them when
    not given.
    """
    options = dict(BENCH_OPTIONS[name](num_terms)) if name in BENCH_OPTIONS else {}
    given = balancer_options or {}
    if given and all(key in balancers_lib.available() for key in given):
        given = given.get(name) or {}
    elif name == "sum":
        # Sum has no hyper-parameters: the baseline every comparison adds
        # runs as it is when one dict of options is meant for the others.
        given = {}
    options.update(given)
    return options or None


def _finite_stats(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype="float64")
    if values.size == 0:
        return None
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def _paired_step_times(models, baseline, steps, repeats, seed):
    """Interleaved timing of already-trained models (see `overhead`): ms/step and ratio to `baseline`."""
    order = np.random.default_rng(seed)
    keys = list(models)
    for key in keys:
        model, iterator = models[key]
        _train_chunk(model, iterator, steps)  # warm up (a new iterator may retrace)
    samples = {key: [] for key in keys}
    ratios = {key: [] for key in keys}
    for _ in range(repeats):
        for index in order.permutation(len(keys)):
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


def run_comparison(pde="helmholtz", balancers=("sum", "relobralo"), seeds=(0, 1, 2), steps=None, out=None,
                   sampling="uniform", resample=False, lbfgs_steps=0, lbfgs_options=None, balancer_options=None,
                   timing_steps=50, timing_repeats=5, jit_compile=True, verbose=1, stream=None,
                   command=None, resume=False, **overrides):
    """Train every balancer on every seed with the same data and budget; report and draw.

    Sum is always included (first) as the baseline. Runs go seed by seed,
    every balancer within a seed. A run that raises is recorded as
    `"failed: <error>"`, one whose loss or error stops being finite as
    `"diverged at step ~k"`; the comparison goes on either way.

    With `out`, every finished run is appended to `out/runs.jsonl` at once,
    with the settings that produced it, and the error map of each
    balancer's first seed is kept in `out/error_maps.npz` (keyed by those
    settings). `resume=True`
    reuses the recorded runs whose settings (problem, balancer, seed,
    budget, options, sampling, L-BFGS steps, XLA, overrides) match, so an
    interrupted comparison continues where it stopped; without it the
    journal is started afresh.

    Step time: after all runs, the trained model of the first seed of each
    balancer runs `timing_repeats` chunks of `timing_steps` compiled steps on
    its fixed point set (no input pipeline), interleaved in a fresh random
    order each repeat; `ms_per_step` is the median, `ratio` the median of the
    per-repeat ratios to Sum's chunk. `timing_repeats=0` skips it and the
    ratio is then taken from the runs' own wall times.

    Args:
        pde: `"helmholtz"` or `"kirchhoff"`.
        balancers: names, a comma-separated string, or `"all"`.
        seeds: the seeds.
        steps: Adam steps per run (default: the PDE's).
        out: a directory for `results.md`, `results.json` and the figures (None: nothing written).
        sampling, resample, lbfgs_steps: see `train`.
        lbfgs_options: more arguments of `keras_balance.lbfgs.finetune` (`dtype`, `tolerance`, ...).
        balancer_options: see `options_for`.
        timing_steps, timing_repeats: the step-time measurement.
        jit_compile: compile the training step with XLA.
        verbose: 1 shows the progress of every run on `stream` (default stderr).
        command: the command line to state in `results.md`.
        resume: reuse the matching runs recorded in `out/runs.jsonl` (needs `out`).
        **overrides: `learning_rate`, `n_interior`, `n_boundary`, `width`, `depth`, ...

    Returns:
        A dict: `runs` (one record per run), `aggregates` (one per balancer),
        `meta`, and `files` (paths written).
    """
    import datetime
    import os
    import platform
    import traceback

    names = balancer_names(balancers)
    names = ["sum"] + [n for n in names if n != "sum"]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"Argument `seeds` must hold at least one seed; received seeds={seeds!r}.")
    if steps is not None:
        steps = _check_positive_int("steps", steps)
    timing_steps = _check_positive_int("timing_steps", timing_steps)
    if isinstance(timing_repeats, bool) or not isinstance(timing_repeats, (int, np.integer)) or timing_repeats < 0:
        raise ValueError(f"Argument `timing_repeats` must be a non-negative integer; received {timing_repeats!r}.")
    problem = pde_lib.get(pde)
    key = next((k for k, cls in pde_lib.PROBLEMS.items() if isinstance(problem, cls)), str(pde))
    budget = steps or DEFAULTS.get(key, DEFAULTS["helmholtz"])["steps"]
    total = len(names) * len(seeds)
    import sys

    stream = stream or sys.stderr
    if resume and not out:
        raise ValueError("Argument `resume` needs `out`, the folder of the comparison to continue; received out=None.")
    journal = _Journal(out, resume) if out else None
    shared = {"pde": key, "steps": budget, "sampling": sampling, "resample": bool(resample),
              "lbfgs_steps": int(lbfgs_steps), "xla": bool(jit_compile),
              "lbfgs_options": dict(lbfgs_options or {}) if lbfgs_steps else {},
              "overrides": {k: v for k, v in sorted(overrides.items()) if v is not None}}
    runs, kept, maps = [], {}, {}
    started = time.perf_counter()
    index = reused = 0
    for seed in seeds:
        for name in names:
            index += 1
            label = f"[{index}/{total}] {name} seed {seed}"
            options = options_for(name, problem.num_terms, balancer_options)
            settings = {**shared, "balancer": name, "seed": seed, "options": options}
            earlier = journal.find(settings) if journal else None
            if earlier is not None:
                reused += 1
                runs.append(earlier)
                if seed == seeds[0] and journal.map_for(settings) is not None:
                    maps[name] = journal.map_for(settings)
                if verbose:
                    stream.write(f"{label}: reused from {journal.path} ({earlier['status']})\n")
                    stream.flush()
                continue
            progress = RunProgress(label, budget, stream=stream) if verbose else None
            kind = balancers_lib.available()[name].kind
            record = {"pde": key, "balancer": name, "kind": kind, "seed": seed, "steps": budget,
                      "sampling": sampling, "resample": bool(resample), "lbfgs_steps": int(lbfgs_steps),
                      "settings": settings}
            try:
                result = train(key, name, steps=budget, seed=seed, verbose=0, jit_compile=jit_compile,
                               balancer_options=options,
                               sampling=sampling, resample=resample, lbfgs_steps=lbfgs_steps,
                               lbfgs_options={**(lbfgs_options or {}), "verbose": 0, **(
                                   {"callback": lambda k, loss, p=progress: p.lbfgs_step(k, int(lbfgs_steps), loss)}
                                   if progress and lbfgs_steps else {})},
                               callbacks=[progress] if progress else None,
                               **overrides)
            except Exception as error:  # a failing balancer must not stop the comparison
                message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                record.update(status=f"failed: {message}", rel_l2=None, mse=None, seconds=None,
                              seconds_per_1000_steps=None, traceback=traceback.format_exc(limit=3))
                if progress:
                    progress.finish(record["status"])
                runs.append(record)
                if journal:
                    journal.add(record)
                continue
            record.update(
                status=result.status,
                rel_l2=result.rel_l2,
                mse=result.mse,
                seconds=round(result.seconds, 3),
                seconds_per_1000_steps=round(1000.0 * result.seconds / budget, 3),
                final_losses=result.final_losses,
                final_weights=result.final_weights,
                log_steps=result.log_steps,
                rel_l2_history=result.history.get("rel_l2", []),
            )
            if result.lbfgs is not None:
                record.update(rel_l2_adam=result.rel_l2_adam, mse_adam=result.mse_adam, lbfgs=result.lbfgs)
            if progress:
                extra = "" if result.lbfgs is None else (
                    f" (after Adam {result.rel_l2_adam:.3e}; L-BFGS {result.lbfgs['steps']} steps, "
                    f"{result.lbfgs['reason']})")
                progress.finish(f"{result.status}, rel. L2 {result.rel_l2:.3e}{extra}, {result.seconds:.1f} s")
            if seed == seeds[0]:
                kept[name] = (result.model, result.points)
                grid = problem.grid(101)
                predicted = np.asarray(result.model.solution.predict_field(grid), "float64").reshape(101, 101)
                exact = np.asarray(problem.exact(grid[:, :1].astype("float64"), grid[:, 1:].astype("float64")))
                maps[name] = {"seed": seed, "error": np.abs(predicted - exact.reshape(101, 101)),
                              "rel_l2": result.rel_l2}
                if journal:
                    journal.add_map(settings, maps[name])
            result.model = None
            runs.append(record)
            if journal:
                journal.add(record)

    timing = {}
    if timing_repeats and runs:
        if verbose:
            stream.write(f"timing: {timing_repeats} interleaved chunks of {timing_steps} steps per balancer\n")
            stream.flush()
        models = {}
        for name in names:
            if name not in kept:  # its runs were reused: a model of the same setup, trained one step
                try:
                    fresh = train(key, name, steps=1, seed=seeds[0], verbose=0, jit_compile=jit_compile,
                                  balancer_options=options_for(name, problem.num_terms, balancer_options),
                                  sampling=sampling, resample=resample, **overrides)
                except Exception:  # it failed in its runs too; it has no step time
                    continue
                kept[name] = (fresh.model, fresh.points)
            model, points = kept[name]
            models[name] = (model, iter(tf.data.Dataset.from_tensors(points).repeat()))
        try:
            timing = _paired_step_times(models, "sum", timing_steps, timing_repeats, seeds[0])
        except Exception as error:  # timing is a bonus; never lose the results for it
            if verbose:
                stream.write(f"timing failed: {type(error).__name__}: {error}\n")
            timing = {}
        del models
    kept.clear()

    aggregates = _aggregate(names, runs, timing)
    meta = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores visible, "
                   f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}",
        "cpu_count": os.cpu_count(),
        "pde": key,
        "balancers": names,
        "seeds": seeds,
        "steps": budget,
        "settings": {k: v for k, v in sorted(overrides.items()) if v is not None},
        "sampling": sampling,
        "resample": bool(resample),
        "lbfgs_steps": int(lbfgs_steps),
        "lbfgs_options": dict(lbfgs_options or {}) if lbfgs_steps else {},
        "xla": bool(jit_compile),
        "timing": ({"method": "interleaved", "steps": timing_steps, "repeats": timing_repeats, "seed": seeds[0]}
                   if timing else {"method": "run wall time"}),
        "error_map_seed": seeds[0],
        "total_seconds": round(time.perf_counter() - started, 1),
        "reused_runs": reused,
    }
    comparison = {"meta": meta, "runs": runs, "aggregates": aggregates, "files": []}
    if out:
        comparison["files"] = write_comparison(comparison, out, problem=problem, maps=maps)
    return comparison


class _Journal:
    """The runs of a comparison as they finish (`runs.jsonl`) and its error maps (`error_maps.npz`)."""

    def __init__(self, out, resume):
        import json
        import os

        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "runs.jsonl")
        self.maps_path = os.path.join(out, "error_maps.npz")
        self.records, self.maps = {}, {}
        if not resume:
            for path in (self.path, self.maps_path):
                if os.path.exists(path):
                    os.remove(path)
            return
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the interruption
                        continue
                    if isinstance(record, dict) and "settings" in record:
                        self.records[self._key(record["settings"])] = record
            # Rewrite it without the unreadable lines, so that the next run starts a line of its own.
            with open(self.path, "w", encoding="utf-8") as handle:
                for record in self.records.values():
                    handle.write(json.dumps(_json_safe(record)) + "\n")
        if os.path.exists(self.maps_path):
            with np.load(self.maps_path) as data:
                for key in {k.split("/")[0] for k in data.files}:
                    self.maps[key] = {"seed": int(data[f"{key}/seed"]), "error": data[f"{key}/error"],
                                      "rel_l2": float(data[f"{key}/rel_l2"])}

    @staticmethod
    def _key(settings):
        import json

        return json.dumps(_json_safe(settings), sort_keys=True)

    def _map_key(self, settings):
        import hashlib

        return f"{settings['balancer']}-{hashlib.sha1(self._key(settings).encode()).hexdigest()[:12]}"

    def find(self, settings):
        return self.records.get(self._key(settings))

    def map_for(self, settings):
        """The error map recorded for the run of these settings, or None."""
        return self.maps.get(self._map_key(settings))

    def add(self, record):
        import json

        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        self.records[self._key(record["settings"])] = record

    def add_map(self, settings, value):
        self.maps[self._map_key(settings)] = value
        arrays = {}
        for key, item in self.maps.items():
            arrays[f"{key}/seed"] = np.asarray(item["seed"])
            arrays[f"{key}/error"] = np.asarray(item["error"], "float32")
            arrays[f"{key}/rel_l2"] = np.asarray(np.nan if item["rel_l2"] is None else item["rel_l2"], "float64")
        with open(self.maps_path, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def _aggregate(names, runs, timing):
    """One row per balancer: error and MSE statistics over its finite runs, times, statuses."""
    rows = []
    base_wall = _finite_stats([r.get("seconds_per_1000_steps") for r in runs if r["balancer"] == "sum"])
    for name in names:
        mine = [r for r in runs if r["balancer"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        wall = _finite_stats([r.get("seconds_per_1000_steps") for r in mine])
        row = {
            "balancer": name,
            "kind": mine[0]["kind"] if mine else None,
            "runs": len(mine),
            "ok": len(ok),
            "rel_l2": _finite_stats([r["rel_l2"] for r in ok]),
            "mse": _finite_stats([r["mse"] for r in ok]),
            "seconds_per_1000_steps": None if wall is None else wall["median"],
            "statuses": [r["status"] for r in mine],
        }
        if any("rel_l2_adam" in r for r in mine):
            row["rel_l2_adam"] = _finite_stats([r.get("rel_l2_adam") for r in ok])
            row["mse_adam"] = _finite_stats([r.get("mse_adam") for r in ok])
        if name in timing:
            row["ms_per_step"] = timing[name]["ms_per_step"]
            row["step_time_ratio"] = timing[name]["ratio"]
        elif not timing and wall is not None and base_wall is not None:
            row["ms_per_step"] = wall["median"]
            row["step_time_ratio"] = wall["median"] / base_wall["median"]
        else:
            row["ms_per_step"] = row["step_time_ratio"] = None
        rows.append(row)
    return rows


def _status_text(statuses):
    """`ok`, or the failures with the seeds' count, e.g. `2 ok; diverged at step ~300`."""
    bad = [s for s in statuses if s != "ok"]
    if not bad:
        return "ok"
    ok = len(statuses) - len(bad)
    return "; ".join(([f"{ok} ok"] if ok else []) + list(dict.fromkeys(bad))).replace("|", "/")


def comparison_table(comparison):
    """The Markdown report of `run_comparison`: a header (command, date, machine) and the table."""
    meta, rows = comparison["meta"], comparison["aggregates"]
    lbfgs = meta.get("lbfgs_steps", 0) > 0
    timing = meta["timing"]
    if timing["method"] == "interleaved":
        how = (f"step time: the trained seed-{timing['seed']} model of each balancer, {timing['repeats']} "
               f"chunks of {timing['steps']} compiled steps on its fixed points, interleaved in random order "
               "in this process; ms / step is the median, the ratio the median of the per-chunk ratios "
               "to Sum's chunk of the same repeat")
    else:
        how = "step time: from the runs' own wall time (median over seeds), ratio to Sum's"
    lines = [
        f"# {meta['pde']}: {len(meta['balancers'])} balancers x {len(meta['seeds'])} seeds",
        "",
        f"- command: `{meta['command'] or 'run_comparison(...)'}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- budget: {meta['steps']} Adam steps" + (f", then up to {meta['lbfgs_steps']} L-BFGS steps "
                                                   "(frozen weights" + "".join(
                                                       f", {k} {v}" for k, v in meta.get("lbfgs_options", {}).items())
                                                   + ")" if lbfgs else "")
        + f"; seeds {', '.join(str(s) for s in meta['seeds'])}; sampling {meta['sampling']}"
        + (" (resampled every step)" if meta["resample"] else " (fixed)") + f"; XLA {'on' if meta['xla'] else 'off'}"
        + "".join(f"; {k} {v}" for k, v in meta.get("settings", {}).items()),
        "- errors against the exact solution on a 101 x 101 grid; median [min - max] over the seeds "
        "whose run finished (status ok)" + ("; final errors are after L-BFGS" if lbfgs else ""),
        "- s / 1000 steps: the run's Adam wall time (XLA compilation and the error logging included), "
        "median over seeds",
        f"- {how}",
        f"- total time: {meta['total_seconds']} s",
    ]
    if meta.get("reused_runs"):
        lines.append(f"- {meta['reused_runs']} of {len(comparison['runs'])} runs were reused from an earlier, "
                     "interrupted invocation (`--resume`): their wall times come from that invocation, and the "
                     "total time counts only this one")
    lines += [
        "",
    ]
    head = ["balancer", "kind", "ok / runs", "rel. L2 median [min - max]", "MSE median [min - max]"]
    if lbfgs:
        head.append("rel. L2 after Adam (median)")
    head += ["s / 1000 steps", "ms / step", "step-time ratio to sum", "status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def stats(value, fmt):
        return "-" if value is None else f"{value['median']:{fmt}} [{value['min']:{fmt}} - {value['max']:{fmt}}]"

    for row in rows:
        cells = [row["balancer"], row["kind"] or "-", f"{row['ok']} / {row['runs']}",
                 stats(row["rel_l2"], ".4f"), stats(row["mse"], ".3e")]
        if lbfgs:
            adam = row.get("rel_l2_adam")
            cells.append("-" if adam is None else f"{adam['median']:.4f}")
        cells += ["-" if row["seconds_per_1000_steps"] is None else f"{row['seconds_per_1000_steps']:.1f}",
                  "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.2f}",
                  "-" if row["step_time_ratio"] is None else f"{row['step_time_ratio']:.2f}",
                  _status_text(row["statuses"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(comparison, out, problem=None, maps=None):
    """Write `results.md`, `results.json`, `error_curves.png` and `error_maps.png` to `out`."""
    import json
    import os

    from keras_balance import plotting

    os.makedirs(out, exist_ok=True)
    meta = comparison["meta"]
    paths = []
    path = os.path.join(out, "results.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(comparison_table(comparison) + "\n")
    paths.append(path)
    curves = {}
    for name in meta["balancers"]:
        mine = [r for r in comparison["runs"] if r["balancer"] == name and r.get("log_steps")]
        if mine:
            curves[name] = [(r["log_steps"], r["rel_l2_history"]) for r in mine]
    if curves:
        paths.append(plotting.plot_error_curves(
            curves, os.path.join(out, "error_curves.png"),
            title=f"{meta['pde']}: rel. L2 error during Adam (median over seeds, band min - max)"))
    if maps:
        paths.append(plotting.plot_error_maps(
            problem, maps, os.path.join(out, "error_maps.png"),
            title=f"{meta['pde']}: |u - u_exact| at the end, seed {meta['error_map_seed']}",
            order=[n for n in meta["balancers"] if n in maps]))
    path = os.path.join(out, "results.json")
    payload = {"meta": meta, "runs": comparison["runs"], "aggregates": comparison["aggregates"]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_json_safe(payload), handle, indent=1)
        handle.write("\n")
    paths.append(path)
    return paths


def _json_safe(value):
    """NaN and infinities as null (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


__all__ = ["DEFAULTS", "LR_SCHEDULES", "ExponentialToFinal", "RunResult", "train", "learning_rate_schedule", "compare", "results_table", "save_figures", "step_times",
           "overhead", "overhead_table", "point_dataset", "run_comparison", "comparison_table",
           "write_comparison", "balancer_names", "options_for", "RunProgress"]
