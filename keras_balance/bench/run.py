"""One training run: a PINN on one PDE with one balancer (`keras-balance train`).

`train(...)` returns a `RunResult`: the per-term losses and weights over the
steps, the error against the exact solution and the wall time. The point set
(`point_dataset`) and Adam's learning rate (`learning_rate_schedule`) of a
run are built here too.
"""

import dataclasses
import itertools
import time

import keras
import numpy as np
import tensorflow as tf

from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import resolve
from keras_balance.callbacks import ExactErrorHistory, TrainingProgress
from keras_balance.data import full_batch
from keras_balance.pinn import PINNModel, build_pinn

# Embedded defaults of each problem: a 4 x 50 tanh MLP, Adam, full-batch
# training on a fixed set of collocation points, the network's output scaled
# by the PDE's `characteristic_scale` (1 for Helmholtz, the load-based
# deflection scale for Kirchhoff). The step budgets keep the default run of
# each PDE under 3 minutes on 2 CPU cores. `lbfgs_steps`, where present, is
# the problem's default L-BFGS phase after Adam (`train(lbfgs_steps=None)`).
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
    # Time-dependent problems: the boundary points go to t = 0 and the
    # spatial edges (`PDE.boundary_edges`). Adam alone does not bring
    # Burgers' shock below 10% error in minutes (it plateaus near 0.2-0.5
    # and jumps between shock positions); Adam then L-BFGS, as in Raissi et
    # al.'s own runs, reaches 7% in about 1500 iterations.
    "burgers": {
        "steps": 1000,
        "learning_rate": 1e-3,
        "n_interior": 2048,
        "n_boundary": 384,
        "width": 50,
        "depth": 4,
        "lbfgs_steps": 1500,
    },
    "allen_cahn": {
        "steps": 5000,
        "learning_rate": 1e-3,
        "n_interior": 2048,
        "n_boundary": 256,
        "width": 50,
        "depth": 4,
    },
    "poisson": {
        "steps": 5000,
        "learning_rate": 1e-3,
        "n_interior": 1024,
        "n_boundary": 256,
        "width": 50,
        "depth": 4,
    },
    "advection": {
        "steps": 5000,
        "learning_rate": 1e-3,
        "n_interior": 2048,
        "n_boundary": 256,
        "width": 50,
        "depth": 4,
    },
}


def problem_name(problem):
    """The name of a problem in `keras_balance.pde.PROBLEMS` (`"helmholtz"`, ...), or None.

    Args:
        problem: a `PDE` instance.

    Example:

    >>> problem_name(pde_lib.HelmholtzPDE())
    'helmholtz'
    """
    return next((name for name, cls in pde_lib.PROBLEMS.items() if isinstance(problem, cls)), None)


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
        return full_batch(points), points
    counter = itertools.count()

    def generate():
        while True:
            yield problem.sample(n_interior, n_boundary, seed=seed, method=sampling, step=next(counter))

    spec = tf.TensorSpec(points.shape, tf.float32)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec).prefetch(2)
    return dataset, points


def train(
    pde=None,
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
    lbfgs_steps=None,
    lbfgs_options=None,
    callbacks=None,
    protocol=None,
    plateau=None,
    pointwise=None,
    causal=None,
    adaptive=None,
    **overrides,
):
    """Train a PINN on `pde` with `balancer` and return a `RunResult`.

    Args:
        pde: `"helmholtz"` (default, or the protocol's problem), `"kirchhoff"`, or a `PDE` instance.
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
        lbfgs_steps: L-BFGS iterations after Adam (0: none; None: the
            problem's default, 0 except for Burgers), on the balanced
            loss with the balancer's last weights frozen, full batch on the
            points of step 0 (see `keras_balance.lbfgs.finetune`).
        lbfgs_options: more arguments of `finetune` (`tolerance`, `chunk`,
            `dtype`, ...). The summary's `lbfgs["history"]` holds
            `[step, loss, rel. L2, seconds]` after every chunk.
        callbacks: more Keras callbacks for the Adam phase.
        protocol: the name of a published set-up (`keras_balance.bench.protocols`,
            `"wang2021"` or `"bischof2021"`): it sets the problem's options, the
            network, the points, the schedule and the budget, and every
            argument given here overrides it (a flag such as `resample` can
            only be switched on, and `lr_schedule="constant"` is the
            protocol's schedule).
        plateau: `{"patience", "factor", "max_cuts", "warmup_fraction"}` of
            a `PlateauSchedule` evaluated every `log_every` steps (None: none;
            it needs a constant learning rate). The run reports the best
            network it saw.
        pointwise: pointwise weights inside the terms: None, `"rba"`
            (`RBA()`), `"sa"` (`SelfAdaptiveWeights()`), or a
            `PointwiseWeighting` (see `keras_balance.pinn.weighting`).
        causal: causal weights of a time-dependent problem's residual:
            None, the number of time chunks, `{"chunks": M, "epsilon": e}`
            (e a number or an increasing list, the schedule), or a
            `CausalWeighting`.
        adaptive: residual-based adaptive sampling of the interior points:
            None, `"rad"`, `"rar_d"`, or `{"method": "rad", "every": n,
            ...}` with the other arguments of `RAD` / `RARD` (see
            `keras_balance.pinn.sampling`; every 1000 steps by default).
            The L-BFGS phase trains on the last set.
        **overrides: `n_interior`, `n_boundary`, `width`, `depth`, `output_scale`.

    Returns:
        A `RunResult`. A run whose loss or error stops being finite ends
        early with `status="diverged at step ~k"` (k: the step of the log
        record that saw it) and NaN errors.
    """
    if protocol is not None:
        from keras_balance.bench import protocols

        spec = protocols.get(protocol)
        pde = spec.pde if pde is None else pde
        if isinstance(pde, str) and pde != spec.pde:
            raise ValueError(f"Argument `pde`: the protocol {protocol!r} trains {spec.pde!r}; received pde={pde!r}.")
        given = spec.train_arguments()
        pde_options = {**given.pop("pde_options"), **(pde_options or {})}
        steps = given.pop("steps") if steps is None else steps
        learning_rate = given.pop("learning_rate") if learning_rate is None else learning_rate
        if lr_schedule == "constant":
            lr_schedule = given.get("lr_schedule", "constant")
        if final_learning_rate is None and "decay_per_1000_steps" in given:
            # The same decay per step whatever the budget: the rate after `steps`.
            final_learning_rate = learning_rate * given["decay_per_1000_steps"] ** (steps / 1000.0)
        resample = bool(resample or given.get("resample", False))
        log_every = log_every or given.get("log_every")
        plateau = given.get("plateau") if plateau is None else plateau
        if isinstance(balancer, str) and balancer.lower() in spec.balancer_options:
            balancer_options = {**spec.balancer_options[balancer.lower()], **(balancer_options or {})}
        for name in ("n_interior", "n_boundary", "width", "depth"):
            if overrides.get(name) is None and name in given:
                overrides[name] = given[name]
    problem = pde_lib.get("helmholtz" if pde is None else pde, **(pde_options or {}))
    key = problem_name(problem)
    settings = dict(DEFAULTS.get(key, DEFAULTS["helmholtz"]))
    default_lbfgs = settings.pop("lbfgs_steps", 0)
    lbfgs_steps = default_lbfgs if lbfgs_steps is None else lbfgs_steps
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
    balancer_obj = resolve(balancer, options=balancer_options, seed=seed)
    dataset, points = point_dataset(problem, settings["n_interior"], settings["n_boundary"], seed=seed,
                                    sampling=sampling, resample=resample)
    solution = build_pinn(
        problem,
        width=settings["width"],
        depth=settings["depth"],
        seed=seed,
        output_scale=settings["output_scale"],
    )
    sampler = adaptive_sampler(adaptive, problem, settings["n_interior"], settings["n_boundary"], seed, sampling)
    if sampler is not None:
        if resample:
            raise ValueError("Arguments `adaptive` and `resample` both choose the points of every step; pass one.")
        dataset = sampler.dataset()
    model = PINNModel(problem, solution, balancer=balancer_obj, pointwise=pointwise_weighting(pointwise),
                      causal=causal_weighting(causal), sampler=sampler)
    rate = learning_rate_schedule(lr_schedule, settings["learning_rate"], steps, final_learning_rate)
    model.compile(optimizer=keras.optimizers.Adam(rate), jit_compile=jit_compile)
    stopper = _StopOnNonFinite()
    callbacks = [ExactErrorHistory(problem, solution.predict_field), stopper, *(callbacks or [])]
    if sampler is not None:
        callbacks.insert(0, sampler.callback())
    schedule = None
    if plateau is not None:
        from keras_balance.bench.protocols import PlateauSchedule

        if lr_schedule != "constant":
            raise ValueError(f"Argument `plateau` needs a constant learning rate; received lr_schedule={lr_schedule!r}.")
        options = dict(plateau)
        warmup = int(float(options.pop("warmup_fraction", 0.0)) * steps)
        schedule = PlateauSchedule(problem.term_names, solution.network, warmup_steps=warmup, **options)
        callbacks.append(schedule)
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
        if chunk == 0 or epochs == 0 or stopper.step is not None or (schedule is not None and schedule.stopped):
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
    if schedule is not None and stopper.step is None:
        schedule.restore_best()

    status = "ok" if stopper.step is None else f"diverged at step ~{stopper.step}"
    errors = problem.error(solution.predict_field, n=101)
    errors_adam, lbfgs_summary = dict(errors), None
    if sampler is not None:
        points = sampler.current_points().numpy()  # the last set: L-BFGS trains on it
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
                  else final_learning_rate or settings["learning_rate"] / 100.0,
                  **({"protocol": protocol} if protocol is not None else {}),
                  **({"pointwise": pointwise if isinstance(pointwise, str) else type(pointwise).__name__}
                     if pointwise not in (None, "none") else {}),
                  **({"causal": causal if isinstance(causal, (int, dict)) else type(causal).__name__}
                     if causal not in (None, 0) else {}),
                  **({"adaptive": adaptive if isinstance(adaptive, (str, dict)) else type(adaptive).__name__}
                     if adaptive is not None else {}),
                  **({"pde_options": problem.get_config()} if protocol is not None or pde_options else {}),
                  **({"plateau": dict(plateau), "plateau_cuts": schedule.events, "steps_run": done}
                     if schedule is not None else {})},
    )


#: The pointwise weightings `train` knows by name.
POINTWISE = ("none", "rba", "sa")


def pointwise_weighting(spec):
    """A `PointwiseWeighting` from `train`'s `pointwise` argument (None for none)."""
    from keras_balance.pinn import weighting

    if spec is None or spec == "none":
        return None
    if isinstance(spec, weighting.PointwiseWeighting):
        return spec
    if spec == "rba":
        return weighting.RBA()
    if spec == "sa":
        return weighting.SelfAdaptiveWeights()
    raise ValueError(f"Argument `pointwise` must be one of {POINTWISE} or a PointwiseWeighting; received {spec!r}.")


def causal_weighting(spec):
    """A `CausalWeighting` from `train`'s `causal` argument (None for none)."""
    from keras_balance.pinn import weighting

    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool) and spec == 0):
        return None
    if isinstance(spec, weighting.CausalWeighting):
        return spec
    if isinstance(spec, int) and not isinstance(spec, bool):
        return weighting.CausalWeighting(chunks=spec)
    if isinstance(spec, dict) and set(spec) <= {"chunks", "epsilon", "threshold"}:
        return weighting.CausalWeighting(**spec)
    raise ValueError(
        "Argument `causal` must be None, a number of time chunks, a dict with `chunks`, `epsilon` and "
        f"`threshold`, or a CausalWeighting; received causal={spec!r}."
    )


def adaptive_sampler(spec, problem, n_interior, n_boundary, seed, sampling="uniform"):
    """An adaptive sampler (`RAD`, `RARD`) from `train`'s `adaptive` argument (None for none)."""
    from keras_balance.pinn import sampling as sampling_lib

    if spec is None:
        return None
    if isinstance(spec, sampling_lib.AdaptiveSampler):
        return spec
    options = {"method": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
    classes = {"rad": sampling_lib.RAD, "rar_d": sampling_lib.RARD}
    if options is None or options.get("method") not in classes:
        raise ValueError(
            f"Argument `adaptive` must be None, one of {tuple(classes)}, a dict with `method` and the sampler's "
            f"arguments, or a sampler; received adaptive={spec!r}."
        )
    method = options.pop("method")
    options.setdefault("seed", seed)
    options.setdefault("sampling", sampling)
    return classes[method](problem, n_interior=n_interior, n_boundary=n_boundary, **options)


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
