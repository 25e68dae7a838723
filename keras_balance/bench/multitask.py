"""A multi-task benchmark on real data that ships with scikit-learn: pairs of handwritten digits.

MultiDigits is a small MultiMNIST (Sabour, Frosst & Hinton, "Dynamic routing
between capsules", NeurIPS 2017; as a multi-task benchmark: Sener & Koltun,
"Multi-task learning as multi-objective optimization", NeurIPS 2018) built
from the 1797 8 x 8 digits that `sklearn.datasets.load_digits` reads from the
package itself, so nothing is downloaded. Each input is two digits side by
side, an 8 x 16 image, and a shared network solves three tasks:

- `left`: the class of the left digit (10 classes, cross-entropy, test
  metric: accuracy, higher is better);
- `right`: the class of the right digit (the same, for the right one);
- `number`: the two-digit number the image shows, `10 * left + right`
  (0 to 99), a regression in its own units (squared error, test metric:
  mean absolute error, lower is better).

Why the number: it is what a reader of the image sees, it needs the same
features as the two classification tasks (so the tasks share their trunk for
a reason, as in MultiMNIST or NYUv2), and its squared error is about a
thousand times the cross-entropies at the start (a target variance of about
825 against log 10 = 2.3). The plain sum of the three losses is therefore
steered by the regression task, the imbalance the balancers exist for.

Train and test pairs are drawn from disjoint source images: a seeded
permutation holds out `test_fraction` of the 1797 images, and the test pairs
use only those, so no test digit image is seen in training.

`multitask_comparison` trains every balancer on every seed with the same data,
network and budget, and scores each run with the multi-task metric of the
literature, Delta_m% (see `delta_m`), against single-task networks trained
the same way on the same seeds.
"""

import dataclasses
import datetime
import os
import platform
import sys
import time
import traceback

import numpy as np

#: The tasks: the output name, its Keras loss, its test metric and whether higher is better.
TASKS = {
    "left": {"loss": "sparse_categorical_crossentropy", "metric": "accuracy", "higher_is_better": True},
    "right": {"loss": "sparse_categorical_crossentropy", "metric": "accuracy", "higher_is_better": True},
    "number": {"loss": "mse", "metric": "mae", "higher_is_better": False},
}

#: The benchmark's settings: a 2 x 128 ReLU trunk, Adam 2e-3, 20 epochs of 6000 pairs in batches of 200.
MULTITASK_DEFAULTS = {
    "epochs": 20,
    "batch_size": 200,
    "learning_rate": 2e-3,
    "width": 128,
    "depth": 2,
    "n_train": 6000,
    "n_test": 2000,
    "test_fraction": 0.3,
    "data_seed": 0,
}

#: The name of the single-task baselines' rows (one network per task) in a comparison.
SINGLE_TASK = "single_task"


@dataclasses.dataclass(frozen=True)
class MultiDigits:
    """The pairs of a MultiDigits split (see `multi_digits`).

    Attributes:
        x_train, x_test: the images, (N, 8, 16) float32 in [0, 1] (raw intensity / 16).
        y_train, y_test: dicts of targets, `left` and `right` (int32 classes)
            and `number` (float32, `10 * left + right`).
        train_sources, test_sources: (N, 2) indices into `load_digits()` of
            the left and right digit of each pair.
        train_images, test_images: the source images each split may use (disjoint).
        test_fraction, seed: the arguments of `multi_digits` that made the split.
    """

    x_train: np.ndarray
    y_train: dict
    x_test: np.ndarray
    y_test: dict
    train_sources: np.ndarray
    test_sources: np.ndarray
    train_images: np.ndarray
    test_images: np.ndarray
    test_fraction: float = 0.3
    seed: int = 0


def _pairs(images, labels, pool, n, rng):
    sources = rng.choice(pool, size=(n, 2), replace=True)
    x = np.concatenate([images[sources[:, 0]], images[sources[:, 1]]], axis=2) / 16.0
    left, right = labels[sources[:, 0]], labels[sources[:, 1]]
    y = {"left": left.astype("int32"), "right": right.astype("int32"),
         "number": (10 * left + right).astype("float32")[:, None]}
    return x.astype("float32"), y, sources


def multi_digits(n_train=None, n_test=None, test_fraction=None, seed=None):
    """Pairs of scikit-learn's 8 x 8 digits side by side, with disjoint train and test sources.

    A permutation of the 1797 images drawn with `seed` puts
    `round(test_fraction * 1797)` of them aside for the test pairs; the
    training pairs use only the others. Each pair draws its left and right
    digit independently and uniformly from its split's images (with
    replacement), so the same `seed` gives the same arrays.

    Args:
        n_train: training pairs (default `MULTITASK_DEFAULTS["n_train"]`, 6000).
        n_test: test pairs (default 2000).
        test_fraction: the share of source images held out for the test pairs, in (0, 1) (default 0.3).
        seed: the seed of the split and of the pairs (default 0).

    Returns:
        A `MultiDigits`.

    Example:

    >>> data = multi_digits(n_train=10, n_test=4)
    >>> data.x_train.shape, data.y_train["number"].shape
    ((10, 8, 16), (10, 1))
    >>> bool(np.all(data.y_test["number"][:, 0] == 10 * data.y_test["left"] + data.y_test["right"]))
    True
    """
    from sklearn.datasets import load_digits

    n_train = MULTITASK_DEFAULTS["n_train"] if n_train is None else n_train
    n_test = MULTITASK_DEFAULTS["n_test"] if n_test is None else n_test
    test_fraction = MULTITASK_DEFAULTS["test_fraction"] if test_fraction is None else test_fraction
    seed = MULTITASK_DEFAULTS["data_seed"] if seed is None else seed
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"Argument `{name}` must be a positive integer; received {name}={value!r}.")
    if not (isinstance(test_fraction, (int, float, np.floating)) and 0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"Argument `test_fraction` must be a number in (0, 1); received test_fraction={test_fraction!r}.")
    digits = load_digits()
    images = np.asarray(digits.images, dtype="float64")  # (1797, 8, 8), 0 to 16
    labels = np.asarray(digits.target, dtype="int64")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(images))
    held_out = int(round(float(test_fraction) * len(images)))
    test_images, train_images = np.sort(order[:held_out]), np.sort(order[held_out:])
    x_train, y_train, train_sources = _pairs(images, labels, train_images, int(n_train), rng)
    x_test, y_test, test_sources = _pairs(images, labels, test_images, int(n_test), rng)
    return MultiDigits(x_train, y_train, x_test, y_test, train_sources, test_sources, train_images, test_images,
                       float(test_fraction), int(seed))


def delta_m(metrics, baseline, higher_is_better):
    """Delta_m%, the multi-task metric: the mean relative change of each task's metric, in percent.

    $$\\Delta_m\\% = \\frac{100}{T}\\sum_{t=1}^{T} (-1)^{l_t}\\,\\frac{M_t - M_t^b}{M_t^b},$$

    with $l_t = 1$ when a higher $M_t$ is better (accuracy) and 0 when a lower
    one is (an error): lower is better, and a negative value means better
    than the baseline on average. This is the convention of Navon et al.,
    "Multi-task learning as a bargaining game" (ICML 2022, section 6) and
    Liu et al., "Conflict-averse gradient descent for multi-task learning"
    (NeurIPS 2021), after Maninis, Radosavovic & Kokkinos, "Attentive
    single-tasking of multiple tasks" (CVPR 2019, eq. 4), whose sign is the
    opposite (there, and in LibMTL's `count_improvement`, higher is better).

    Args:
        metrics: `{task: M_t}` of the model scored.
        baseline: `{task: M_t^b}`, the same tasks (none zero).
        higher_is_better: `{task: bool}`.

    Returns:
        Delta_m% as a float (NaN when a metric is not finite).

    Example:

    >>> delta_m({"a": 0.9, "b": 2.0}, {"a": 0.8, "b": 1.0}, {"a": True, "b": False})
    43.75
    """
    tasks = list(baseline)
    if sorted(metrics) != sorted(tasks) or sorted(higher_is_better) != sorted(tasks):
        raise ValueError(f"Arguments `metrics`, `baseline` and `higher_is_better` must name the same tasks; "
                         f"received {sorted(metrics)}, {sorted(tasks)} and {sorted(higher_is_better)}.")
    total = 0.0
    for task in tasks:
        base = float(baseline[task])
        if base == 0.0:
            raise ValueError(f"Argument `baseline`: the metric of task {task!r} is 0, which Delta_m% divides by.")
        sign = -1.0 if higher_is_better[task] else 1.0
        total += sign * (float(metrics[task]) - base) / base
    return 100.0 * total / len(tasks)


def build_multitask_model(tasks=tuple(TASKS), width=128, depth=2, seed=0, balancer="sum"):
    """A `BalancedModel` with a shared ReLU trunk and one head per task.

    The input (8 x 16) is flattened, then `depth` Dense(`width`, relu) layers
    (the last is named `trunk`) feed a softmax Dense(10) head per
    classification task and a linear Dense(1) head for `number`. The kernels
    are seeded, so models with the same seed start alike.
    """
    import keras

    from keras_balance.models import BalancedModel

    def init(index):
        return keras.initializers.GlorotUniform(seed=int(seed) * 1000 + index)

    inputs = keras.Input((8, 16), name="image")
    features = keras.layers.Flatten()(inputs)
    for k in range(int(depth)):
        features = keras.layers.Dense(int(width), activation="relu", kernel_initializer=init(k),
                                      name="trunk" if k == int(depth) - 1 else f"shared_{k}")(features)
    outputs = {}
    for index, task in enumerate(tasks):
        if TASKS[task]["metric"] == "accuracy":
            outputs[task] = keras.layers.Dense(10, activation="softmax", kernel_initializer=init(100 + index),
                                               name=task)(features)
        else:
            outputs[task] = keras.layers.Dense(1, kernel_initializer=init(100 + index), name=task)(features)
    return BalancedModel(inputs, outputs, balancer=balancer)


def evaluate_tasks(model, data, tasks=tuple(TASKS)):
    """The test metric of each task: accuracy of the digits, mean absolute error of the number."""
    predicted = model.predict(data.x_test, batch_size=1000, verbose=0)
    if not isinstance(predicted, dict):
        predicted = dict(zip(tasks, predicted if isinstance(predicted, (list, tuple)) else [predicted]))
    metrics = {}
    for task in tasks:
        out = np.asarray(predicted[task], "float64")
        target = data.y_test[task]
        if TASKS[task]["metric"] == "accuracy":
            metrics[task] = float(np.mean(np.argmax(out, axis=-1) == target))
        else:
            metrics[task] = float(np.mean(np.abs(out - target)))
    return metrics


@dataclasses.dataclass
class MultitaskResult:
    """What one run on MultiDigits produced."""

    balancer: str
    seed: int
    tasks: tuple
    epochs: int
    steps: int
    metrics: dict
    final_losses: dict
    final_weights: dict
    seconds: float
    status: str = "ok"
    history: dict = None
    model: object = dataclasses.field(default=None, repr=False)

    def summary(self):
        return {"balancer": self.balancer, "seed": self.seed, "tasks": list(self.tasks), "epochs": self.epochs,
                "steps": self.steps, "metrics": self.metrics, "final_losses": self.final_losses,
                "final_weights": self.final_weights, "seconds": round(self.seconds, 3), "status": self.status}


def train_multitask(balancer="sum", seed=0, tasks=tuple(TASKS), data=None, epochs=None, batch_size=None,
                    learning_rate=None, width=None, depth=None, jit_compile=False, balancer_options=None,
                    callbacks=None, verbose=0):
    """Train the MultiDigits network with one balancer and score it on the test pairs.

    `keras.utils.set_random_seed(seed)` seeds the initial network, the order
    of the batches and a random balancer, so two balancers with the same seed
    start from the same network and see the same batches. With one task in
    `tasks` this is a single-task network (the baseline of `delta_m`).

    Args:
        balancer: a balancer name (its required arguments filled in for the
            number of tasks) or instance.
        seed: the run's seed.
        tasks: the tasks to train (names of `TASKS`).
        data: a `MultiDigits` (default: `multi_digits()` with the benchmark's split).
        epochs, batch_size, learning_rate, width, depth: default `MULTITASK_DEFAULTS`.
        jit_compile: compile the training step with XLA (default off: on this
            small network XLA's compilation costs more than it saves in 600 steps).
        balancer_options: constructor arguments of a balancer given by name.
        callbacks: more Keras callbacks.
        verbose: Keras' `fit` verbosity.

    Returns:
        A `MultitaskResult`. A run whose loss stops being finite ends early
        with `status="diverged at step ~k"` and NaN metrics.
    """
    import keras
    import tensorflow as tf

    from keras_balance.balancers.registry import resolve
    from keras_balance.bench.run import _check_positive_int, _StopOnNonFinite

    settings = dict(MULTITASK_DEFAULTS)
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate),
                       ("width", width), ("depth", depth)):
        if value is not None:
            settings[key] = value
    for key in ("epochs", "batch_size", "width", "depth"):
        settings[key] = _check_positive_int(key, settings[key])
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"Argument `tasks` must name tasks of {list(TASKS)}; received tasks={tasks!r}.")
    if data is None:
        data = multi_digits(settings["n_train"], settings["n_test"], settings["test_fraction"], settings["data_seed"])
    seed = int(seed)
    keras.utils.set_random_seed(seed)
    balancer_obj = resolve(balancer, num_terms=len(tasks), options=balancer_options, seed=seed)
    model = build_multitask_model(tasks, settings["width"], settings["depth"], seed, balancer_obj)
    model.compile(optimizer=keras.optimizers.Adam(float(settings["learning_rate"])),
                  loss={t: TASKS[t]["loss"] for t in tasks}, jit_compile=jit_compile)
    n = len(data.x_train)
    targets = {t: data.y_train[t] for t in tasks}
    batches = (tf.data.Dataset.from_tensor_slices((data.x_train, targets))
               .shuffle(n, seed=seed, reshuffle_each_iteration=True)
               .batch(settings["batch_size"], drop_remainder=n >= settings["batch_size"]))
    stopper = _StopOnNonFinite()
    start = time.perf_counter()
    fit = model.fit(batches, epochs=settings["epochs"], verbose=verbose, shuffle=False,
                    callbacks=[stopper, *(callbacks or [])])
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    status = "ok" if stopper.step is None else f"diverged at step ~{stopper.step}"
    if status == "ok":
        metrics = evaluate_tasks(model, data, tasks)
        if not all(np.isfinite(v) for v in metrics.values()):
            status = f"diverged at step ~{int(model.optimizer.iterations.numpy())}"
    else:
        metrics = {t: float("nan") for t in tasks}
    names = tuple(model.term_names)
    return MultitaskResult(
        balancer=balancer if isinstance(balancer, str) else balancer_obj.name,
        seed=seed,
        tasks=tasks,
        epochs=settings["epochs"],
        steps=int(model.optimizer.iterations.numpy()),
        metrics=metrics,
        final_losses={t: history[t][-1] if t in history else float("nan") for t in names},
        final_weights={t: history[f"w_{t}"][-1] if f"w_{t}" in history else float("nan") for t in names},
        seconds=seconds,
        status=status,
        history=history,
        model=model,
    )


def multitask_options(name, data, balancer_options=None):
    """Constructor arguments of balancer `name` in the MultiDigits comparison.

    As `keras_balance.bench.options_for` with three terms, except that
    `prior_loss` gets its real priors from the training labels when none are
    given (the entropy of the class frequencies for the two digits, the
    variance of the number), since here, unlike on a PDE, there is a label
    distribution to read them from.
    """
    from keras_balance import balancers as balancers_lib
    from keras_balance.bench.comparison import options_for

    options = options_for(name, len(TASKS), balancer_options)
    given = balancer_options or {}
    if given and all(key in balancers_lib.available() for key in given):
        given = given.get(name) or {}
    if name == "prior_loss" and "prior_losses" not in given:
        priors = [balancers_lib.prior_loss(data.y_train[t], "cross_entropy" if TASKS[t]["metric"] == "accuracy"
                                           else "squared_error") for t in TASKS]
        options = {**(options or {}), "prior_losses": [round(float(p), 6) for p in priors]}
    return options


def _mean_std(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype="float64")
    if values.size == 0:
        return None
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def multitask_comparison(balancers=("sum", "relobralo"), seeds=(0, 1, 2), epochs=None, baseline=SINGLE_TASK,
                         out=None, resume=False, balancer_options=None, jit_compile=False, verbose=1,
                         stream=None, command=None, data=None, **overrides):
    """Every balancer on every seed on MultiDigits, scored by each task's test metric and Delta_m%.

    Sum is always included (first). With `baseline="single_task"` (default)
    one network per task (the same trunk and head, trained alone with the
    same budget) runs on every seed too, and Delta_m% (`delta_m`) of each
    run is measured against the mean of the single-task metrics over the
    seeds, as the papers do; with `baseline="sum"` against Sum's mean. A run
    that raises is recorded as `"failed: <error>"`, one whose loss stops
    being finite as `"diverged at step ~k"`; the comparison goes on.

    With `out`, every finished run is appended to `out/runs.jsonl` at once
    with the settings that produced it (the journal of `run_comparison`), and
    `results.md` and `results.json` are written at the end; `resume=True`
    reuses the recorded runs whose settings match.

    Args:
        balancers: names, a comma-separated string, or `"all"`.
        seeds: the seeds (each seeds the network, the batches and a random balancer).
        epochs: passes over the training pairs (default `MULTITASK_DEFAULTS["epochs"]`).
        baseline: `"single_task"` or `"sum"`.
        out: a folder for the journal and the results (None: nothing written).
        resume: reuse the matching runs recorded in `out/runs.jsonl` (needs `out`).
        balancer_options: see `multitask_options`.
        jit_compile: compile the training steps with XLA.
        verbose: 1 writes a line per run to `stream` (default stderr).
        command: the command line to state in `results.md`.
        data: a `MultiDigits` (default: the benchmark's split, `multi_digits()`
            with `MULTITASK_DEFAULTS`).
        **overrides: `batch_size`, `learning_rate`, `width`, `depth`.

    Returns:
        A dict: `runs` (one record per run, with `delta_m`), `aggregates`
        (one per balancer, the baseline first), `meta` and `files`.
    """
    import tensorflow as tf

    from keras_balance import balancers as balancers_lib
    from keras_balance.bench.comparison import _Journal, balancer_names

    names = balancer_names(balancers)
    names = ["sum"] + [n for n in names if n != "sum"]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"Argument `seeds` must hold at least one seed; received seeds={seeds!r}.")
    if baseline not in (SINGLE_TASK, "sum"):
        raise ValueError(f"Argument `baseline` must be 'single_task' or 'sum'; received baseline={baseline!r}.")
    unknown = set(overrides) - {"batch_size", "learning_rate", "width", "depth"}
    if unknown:
        raise TypeError(f"Unknown arguments for multitask_comparison(): {sorted(unknown)}; "
                        "known: batch_size, learning_rate, width, depth.")
    if resume and not out:
        raise ValueError("Argument `resume` needs `out`, the folder of the comparison to continue; received out=None.")
    settings = dict(MULTITASK_DEFAULTS)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if epochs is not None:
        settings["epochs"] = epochs
    if data is None:
        data = multi_digits(settings["n_train"], settings["n_test"], settings["test_fraction"], settings["data_seed"])
    settings.update(n_train=len(data.x_train), n_test=len(data.x_test), test_fraction=data.test_fraction,
                    data_seed=data.seed)
    stream = stream or sys.stderr
    journal = _Journal(out, resume) if out else None
    shared = {"problem": "multitask", "xla": bool(jit_compile), **settings}
    jobs = [(seed, name, tuple(TASKS)) for seed in seeds for name in names]
    if baseline == SINGLE_TASK:
        jobs += [(seed, SINGLE_TASK, (task,)) for seed in seeds for task in TASKS]
    runs, reused = [], 0
    started = time.perf_counter()
    for index, (seed, name, tasks) in enumerate(jobs, start=1):
        single = name == SINGLE_TASK
        label = f"[{index}/{len(jobs)}] {name + ' ' + tasks[0] if single else name} seed {seed}"
        options = None if single else multitask_options(name, data, balancer_options)
        run_settings = {**shared, "balancer": name, "tasks": list(tasks), "seed": seed, "options": options}
        earlier = journal.find(run_settings) if journal else None
        if earlier is not None:
            reused += 1
            runs.append(earlier)
            if verbose:
                stream.write(f"{label}: reused from {journal.path} ({earlier['status']})\n")
                stream.flush()
            continue
        kind = "single-task" if single else balancers_lib.available()[name].kind
        record = {"problem": "multitask", "balancer": name, "kind": kind, "seed": seed, "tasks": list(tasks),
                  "epochs": settings["epochs"], "settings": run_settings}
        try:
            result = train_multitask("sum" if single else name, seed=seed, tasks=tasks, data=data,
                                     epochs=settings["epochs"], batch_size=settings["batch_size"],
                                     learning_rate=settings["learning_rate"], width=settings["width"],
                                     depth=settings["depth"], jit_compile=jit_compile, balancer_options=options)
        except Exception as error:  # a failing balancer must not stop the comparison
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            record.update(status=f"failed: {message}", metrics=None, steps=None, seconds=None,
                          traceback=traceback.format_exc(limit=3))
        else:
            record.update(status=result.status, metrics=result.metrics, steps=result.steps,
                          seconds=round(result.seconds, 3), final_losses=result.final_losses,
                          final_weights=result.final_weights)
        if verbose:
            text = record["status"]
            if record["status"] == "ok":
                text = ", ".join(f"{t} {v:.4g}" for t, v in record["metrics"].items()) + f", {record['seconds']:.1f} s"
            stream.write(f"{label}: {text}\n")
            stream.flush()
        runs.append(record)
        if journal:
            journal.add(record)

    reference = _baseline_metrics(runs, baseline)
    higher = {t: TASKS[t]["higher_is_better"] for t in TASKS}
    for record in runs:
        record["delta_m"] = None
        if reference is not None and record["balancer"] != SINGLE_TASK and record["status"] == "ok":
            record["delta_m"] = delta_m(record["metrics"], reference, higher)
    aggregates = _multitask_aggregate(names, runs, reference, baseline, seeds)
    meta = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores visible, "
                   f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}",
        "cpu_count": os.cpu_count(),
        "problem": "multitask",
        "balancers": names,
        "seeds": seeds,
        "baseline": baseline,
        "baseline_metrics": reference,
        "settings": settings,
        "xla": bool(jit_compile),
        "total_seconds": round(time.perf_counter() - started, 1),
        "reused_runs": reused,
    }
    comparison = {"meta": meta, "runs": runs, "aggregates": aggregates, "files": []}
    if out:
        comparison["files"] = write_multitask(comparison, out)
    return comparison


def _baseline_metrics(runs, baseline):
    """`{task: M_t^b}`: the mean over seeds of the single-task networks' (or Sum's) metrics; None if missing."""
    reference = {}
    for task in TASKS:
        if baseline == SINGLE_TASK:
            values = [r["metrics"][task] for r in runs
                      if r["balancer"] == SINGLE_TASK and r["tasks"] == [task] and r["status"] == "ok"]
        else:
            values = [r["metrics"][task] for r in runs if r["balancer"] == "sum" and r["status"] == "ok"]
        stats = _mean_std(values)
        if stats is None:
            return None
        reference[task] = stats["mean"]
    return reference


def _multitask_aggregate(names, runs, reference, baseline, seeds):
    """One row per balancer (the single-task networks first): task metrics and Delta_m% over seeds."""
    rows = []
    if baseline == SINGLE_TASK:
        mine = [r for r in runs if r["balancer"] == SINGLE_TASK]
        ok = [r for r in mine if r["status"] == "ok"]
        row = {"balancer": SINGLE_TASK, "kind": "single-task", "runs": len(mine), "ok": len(ok),
               "metrics": {t: _mean_std([r["metrics"][t] for r in ok if r["tasks"] == [t]]) for t in TASKS},
               "seconds": _mean_std([r["seconds"] for r in ok]), "statuses": [r["status"] for r in mine]}
        # The seed-to-seed noise of the baseline itself: Delta_m% of each seed's three networks.
        per_seed = []
        for seed in seeds:
            found = {r["tasks"][0]: r["metrics"][r["tasks"][0]] for r in ok if r["seed"] == seed}
            if reference is not None and len(found) == len(TASKS):
                per_seed.append(delta_m(found, reference, {t: TASKS[t]["higher_is_better"] for t in TASKS}))
        row["delta_m"] = _mean_std(per_seed)
        rows.append(row)
    for name in names:
        mine = [r for r in runs if r["balancer"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        rows.append({
            "balancer": name,
            "kind": mine[0]["kind"] if mine else None,
            "runs": len(mine),
            "ok": len(ok),
            "metrics": {t: _mean_std([r["metrics"][t] for r in ok]) for t in TASKS},
            "delta_m": _mean_std([r.get("delta_m") for r in ok]),
            "seconds": _mean_std([r["seconds"] for r in ok]),
            "statuses": [r["status"] for r in mine],
        })
    return rows


def multitask_table(comparison):
    """The Markdown report of `multitask_comparison`: a header (command, date, machine, settings) and the table.

    Rows: the baseline first, then the balancers by mean Delta_m% (best
    first), runs that failed or diverged last, with their status.
    """
    from keras_balance.bench.report import _status_text

    meta, rows = comparison["meta"], comparison["aggregates"]
    s = meta["settings"]
    base = ("single-task networks (one per task, the same trunk and budget, the same seeds), mean over seeds"
            if meta["baseline"] == SINGLE_TASK else "Sum (equal weights), mean over seeds")
    lines = [
        f"# MultiDigits: {len(meta['balancers'])} balancers x {len(meta['seeds'])} seeds",
        "",
        f"- command: `{meta['command'] or 'multitask_comparison(...)'}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- data: {s['n_train']} training and {s['n_test']} test pairs of scikit-learn's 8 x 8 digits "
        f"(test pairs from {s['test_fraction']:.0%} of the source images, held out)"
        + f", split seed {s['data_seed']}",
        f"- network: {s['depth']} x {s['width']} ReLU trunk, heads left (10), right (10), number (1); "
        f"Adam {s['learning_rate']:g}, batches of {s['batch_size']}, epochs: {s['epochs']}; "
        f"seeds {', '.join(str(v) for v in meta['seeds'])}; XLA {'on' if meta['xla'] else 'off'}",
        "- metrics on the test pairs: accuracy of the left and right digit (higher is better), mean absolute "
        "error of the number 10 * left + right (lower is better); mean ± standard deviation over the seeds "
        "whose run finished",
        f"- Δm% = (100 / T) Σ_t (-1)^l_t (M_t - M_t^b) / M_t^b, l_t = 1 when higher is better: the mean "
        f"relative loss against the baseline, lower is better, negative is better than the baseline. "
        f"Baseline M^b: {base}"
        + ("" if meta["baseline_metrics"] is None else " = " + ", ".join(
            f"{t} {v:.4g}" for t, v in meta["baseline_metrics"].items())),
        "- s / run: the wall time of a run's training (mean over seeds)",
        f"- total time: {meta['total_seconds']} s",
    ]
    if meta.get("reused_runs"):
        lines.append(f"- {meta['reused_runs']} of {len(comparison['runs'])} runs were reused from an earlier "
                     "invocation (`--resume`): their wall times come from that invocation")
    lines.append("")
    head = ["balancer", "kind", "ok / runs", "left acc.", "right acc.", "number MAE", "Δm% (mean ± std)",
            "Δm% [min, max]", "s / run", "status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def cell(stats, fmt, sign=""):
        if stats is None:
            return "-"
        mean = float(f"{stats['mean']:{fmt}}") + 0.0  # no "-0.00" for a mean that rounds to zero
        return f"{mean:{sign}{fmt}} ± {stats['std']:{fmt}}"

    def order(row):
        if row["balancer"] == SINGLE_TASK:
            return (0, 0.0)
        if row["delta_m"] is None:
            return (2, 0.0)
        return (1, row["delta_m"]["mean"])

    for row in sorted(rows, key=order):
        name = "single-task baseline" if row["balancer"] == SINGLE_TASK else row["balancer"]
        dm = row["delta_m"]
        seconds = row["seconds"]
        cells = [name, row["kind"] or "-", f"{row['ok']} / {row['runs']}",
                 cell(row["metrics"]["left"], ".4f"), cell(row["metrics"]["right"], ".4f"),
                 cell(row["metrics"]["number"], ".3f"), cell(dm, ".2f", "+"),
                 "-" if dm is None else f"[{dm['min']:+.2f}, {dm['max']:+.2f}]",
                 "-" if seconds is None else f"{seconds['mean']:.1f}",
                 _status_text(row["statuses"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_multitask(comparison, out):
    """Write `results.md` and `results.json` of a `multitask_comparison` to `out`; return their paths."""
    import json

    from keras_balance.bench.report import _json_safe

    os.makedirs(out, exist_ok=True)
    md = os.path.join(out, "results.md")
    with open(md, "w", encoding="utf-8") as handle:
        handle.write(multitask_table(comparison) + "\n")
    path = os.path.join(out, "results.json")
    payload = {"meta": comparison["meta"], "runs": comparison["runs"], "aggregates": comparison["aggregates"]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_json_safe(payload), handle, indent=1)
        handle.write("\n")
    return [md, path]
