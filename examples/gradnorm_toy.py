"""GradNorm's toy multi-task regression, trained with several balancers.

The problem is section 4 of Z. Chen, V. Badrinarayanan, C.-Y. Lee and
A. Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing
in Deep Multitask Networks", ICML 2018. T regression tasks share one network:

    x in R^250,    f_i(x) = sigma_i * tanh((B + eps_i) x) in R^100,

with B (shared by all tasks) and eps_i (one per task) constant random
matrices. The tasks are alike up to their scale sigma_i, but a task's mean
squared error, and its gradient, grow with sigma_i^2. Trained on the plain sum
of the task losses, the large-sigma tasks own the shared layers: their losses
fall while the small-sigma tasks lag behind, or even get worse as the shared
features grow to produce the large outputs. A balancer should make the tasks
train at similar *rates*, measured by the normalized losses L_i(t) / L_i(0).

Choices the paper leaves open, made here:

- N(0, 10) and N(0, 3.5) are read as N(mean, variance): the entries of B have
  standard deviation sqrt(10), those of eps_i sqrt(3.5).
- x ~ N(0, I), and the pre-activation is divided by its standard deviation,
  f_i(x) = sigma_i * tanh((B + eps_i) x / sqrt(250 * 13.5)), so each entry of
  it has unit variance and tanh works in its curved but unsaturated range.
  Without the scaling it would have a standard deviation near 58, and every
  target would be sigma_i * sign(...).
- Task scales: sigma = (1, 100) for T = 2, the paper's pair; for T = 10, ten
  values evenly spaced on a log scale from 1 to 100.
- Network (the paper's): 4 shared Dense(100, relu) layers, then one linear
  Dense(100) head per task; loss per task: mean squared error. 8192 training
  and 1024 test points. Adam, learning rate 1e-2, batches of 64, 1000 steps.
- GradNorm: alpha = 0.12, the paper's value for this problem. Its weights
  must span about four orders of magnitude (the gradients differ by
  sigma_1^2 / sigma_0^2 = 1e4), so they get a larger step (learning_rate=0.1
  instead of 0.025, to get there in tens of steps rather than a hundred,
  while the large task is wrecking the small one) and a lower floor
  (min_weight=1e-5 instead of 1e-3, which would cap the ratio of two weights
  summing to 2 at 2000).
- Every method sees the same data in the same order and starts from the same
  initial network (same seed). L_i is the mean squared error on the test set,
  measured before training and every 100 steps.

Run it:

    python examples/gradnorm_toy.py
    python examples/gradnorm_toy.py --tasks 10 --csv gradnorm_toy_10.csv

On two CPU cores the eight default methods take about 1.5 minutes for T = 2
and 3 minutes for T = 10 (the gradient-level methods take one backward pass
per task). Training runs under XLA (`jit_compile=True`). On a CPU XLA is
no faster here: its compilation costs a few seconds per method, and the
methods that solve a small problem on the Gramian (MGDA, UPGrad, IMTL-G) run
their steps slower than without it; `--no-jit` does T = 2 in under a minute,
with the same conclusions.

It prints a Markdown table: per method the final normalized losses (for
T = 10 their min / median / max over the tasks), their spread max / min (1
means that every task has trained at the same rate) and the final weights.
For a loss-level method (sum, uncertainty) these are the loss weights; for a
gradient-level one (gradnorm, pcgrad, mgda, ...) the coefficients of the
per-task gradients in the update of the shared layers.

What to expect (seed 0, T = 2): with Sum, the sigma = 100 task halves its loss
while the sigma = 1 task ends above where it started (1.5 times L_0(0);
twelve times at step 100): spread 3.0. GradNorm (1.4), IMTL-G and gradient
normalization (1.03) bring the two together, and both losses fall. MGDA's
spread is small (1.2) because it trains the sigma = 100 task hardly at all
(0.98). PCGrad and UPGrad remove conflicts but do not rescale the gradients,
so they end near Sum; uncertainty weighting needs more steps than this budget
to learn log-variances four orders of magnitude apart. T = 10 tells the same
story for GradNorm (spread 1.6) and gradient normalization (1.1) against Sum
(3.3); there, IMTL-G's and MGDA's small spreads again come from tasks that
barely train (median 0.99 and 0.93).
"""

import argparse
import csv
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_balance  # noqa: E402
from keras_balance import balancers  # noqa: E402

INPUT_DIM = 250
OUTPUT_DIM = 100
HIDDEN = 100
SHARED_LAYERS = 4
B_VARIANCE = 10.0
EPS_VARIANCE = 3.5

DEFAULT_METHODS = "sum,gradnorm,uncertainty,pcgrad,mgda,upgrad,imtl_g,gradient_normalization"

#: Balancer arguments that differ from the defaults (see the module docstring).
METHOD_OPTIONS = {
    "gradnorm": {"alpha": 0.12, "learning_rate": 0.1, "min_weight": 1e-5},
}

#: Methods trained without XLA (none at present).
NO_JIT = set()


def task_scales(num_tasks):
    """The task scales sigma_i: (1, 100) for two tasks, else log-spaced from 1 to 100."""
    if num_tasks == 2:
        return np.array([1.0, 100.0])
    return np.geomspace(1.0, 100.0, num_tasks)


def make_data(num_tasks=2, num_train=8192, num_test=1024, seed=0):
    """Draw B, the eps_i, and training and test points of the T tasks.

    Returns `(x_train, y_train, x_test, y_test, sigmas)`, where `y_train` and
    `y_test` are dicts `{"task_0": array (n, 100), ...}`, keyed like the
    model's outputs.
    """
    rng = np.random.default_rng(seed)
    sigmas = task_scales(num_tasks)
    shared = rng.normal(0.0, np.sqrt(B_VARIANCE), size=(INPUT_DIM, OUTPUT_DIM))
    per_task = rng.normal(0.0, np.sqrt(EPS_VARIANCE), size=(num_tasks, INPUT_DIM, OUTPUT_DIM))
    # Divides the pre-activation by its standard deviation, so tanh is not saturated.
    pre_scale = 1.0 / np.sqrt(INPUT_DIM * (B_VARIANCE + EPS_VARIANCE))

    def draw(n):
        x = rng.normal(0.0, 1.0, size=(n, INPUT_DIM))
        y = {f"task_{i}": sigmas[i] * np.tanh(pre_scale * x @ (shared + per_task[i]))
             for i in range(num_tasks)}
        return x.astype("float32"), {name: v.astype("float32") for name, v in y.items()}

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return x_train, y_train, x_test, y_test, sigmas


def build_model(num_tasks, balancer="sum", seed=0):
    """Four shared Dense(100, relu) layers, then one linear Dense(100) head per task.

    The outputs are named `task_0`, `task_1`, ...; the same seed gives the same
    initial network, whatever the balancer.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((INPUT_DIM,), name="x")
    features = inputs
    for k in range(SHARED_LAYERS):
        features = keras.layers.Dense(HIDDEN, activation="relu", name=f"shared_{k}")(features)
    outputs = {f"task_{i}": keras.layers.Dense(OUTPUT_DIM, name=f"task_{i}")(features)
               for i in range(num_tasks)}
    return keras_balance.BalancedModel(inputs, outputs, balancer=balancer)


def task_losses(model, x, y):
    """The mean squared error of every task on `(x, y)`, as a numpy array (task order)."""
    pred = model.predict(x, batch_size=len(x), verbose=0)
    return np.array([np.mean((pred[f"task_{i}"] - y[f"task_{i}"]) ** 2) for i in range(len(y))])


class NormalizedLosses(keras.callbacks.Callback):
    """At the end of every epoch: the test losses over their initial values, and the weights."""

    def __init__(self, x_test, y_test, steps_per_epoch):
        super().__init__()
        self.x_test, self.y_test, self.steps_per_epoch = x_test, y_test, steps_per_epoch
        self.history = []  # (step, normalized losses, weights)

    def on_train_begin(self, logs=None):
        self.initial = task_losses(self.model, self.x_test, self.y_test)
        self.history = [(0, np.ones(len(self.initial)), None)]

    def on_epoch_end(self, epoch, logs=None):
        ratios = task_losses(self.model, self.x_test, self.y_test) / self.initial
        weights = np.array([logs[f"w_task_{i}"] for i in range(len(ratios))])
        self.history.append(((epoch + 1) * self.steps_per_epoch, ratios, weights))


def run(method, data, steps=1000, batch_size=64, learning_rate=1e-2, seed=0, eval_every=100,
        jit_compile=None):
    """Train one method on `data` (from `make_data`) and measure its normalized losses.

    Args:
        method: a registered balancer name, e.g. "gradnorm"; `METHOD_OPTIONS`
            supplies its arguments.
        steps: training steps (a multiple of `eval_every`).
        jit_compile: None: XLA unless the method is in `NO_JIT`.

    Returns:
        A dict: `method`, `sigmas`, `ratios` (the final L_i / L_i(0) on the
        test set), `weights` (the final weights), `history` (a list of
        `(step, ratios, weights)`, every `eval_every` steps) and `seconds`
        (the training time, compilation included).
    """
    if steps % eval_every:
        raise ValueError(
            f"Argument `steps` must be a multiple of `eval_every` ({eval_every}); received steps={steps}."
        )
    x_train, y_train, x_test, y_test, sigmas = data
    balancer = balancers.get(method, **METHOD_OPTIONS.get(method, {}))
    model = build_model(len(sigmas), balancer, seed=seed)
    if jit_compile is None:
        jit_compile = method not in NO_JIT
    # loss="mse" on a dict of outputs: one loss term per task, named after its output.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=jit_compile)

    # The same shuffled batches for every method. One `fit`, whose "epochs" are
    # just the intervals between measurements, so the order of the batches does
    # not depend on how often we measure.
    dataset = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
               .shuffle(len(x_train), seed=seed).repeat().batch(batch_size, drop_remainder=True))
    recorder = NormalizedLosses(x_test, y_test, eval_every)
    start = time.perf_counter()
    model.fit(dataset, epochs=steps // eval_every, steps_per_epoch=eval_every, shuffle=False,
              callbacks=[recorder], verbose=0)
    seconds = time.perf_counter() - start
    _, ratios, weights = recorder.history[-1]
    return {"method": method, "sigmas": sigmas, "ratios": ratios, "weights": weights,
            "history": recorder.history, "seconds": seconds}


def spread(ratios):
    """How far apart the tasks' normalized losses are: max / min (1: all alike)."""
    return float(np.max(ratios) / np.min(ratios))


def table(results):
    """A Markdown table of the final normalized losses, their spread and the weights."""
    sigmas = results[0]["sigmas"]
    if len(sigmas) == 2:
        head = [f"L_{i}/L_{i}(0), sigma={s:g}" for i, s in enumerate(sigmas)]
    else:
        head = ["L_i/L_i(0): min", "median", "max"]
    head += ["spread (max/min)", f"weights, sigma = {sigmas[0]:g} ... {sigmas[-1]:g}", "seconds"]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for result in results:
        ratios = result["ratios"]
        if len(ratios) == 2:
            cells = [f"{r:.3f}" for r in ratios]
        else:
            cells = [f"{np.min(ratios):.3f}", f"{np.median(ratios):.3f}", f"{np.max(ratios):.3f}"]
        cells.append(f"{spread(ratios):.2f}")
        cells.append(", ".join(f"{w:.2g}" for w in result["weights"]))
        cells.append(f"{result['seconds']:.0f}")
        lines.append(f"| {result['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(results, path):
    """One row per method, measurement and task: step, sigma, L_i / L_i(0) and weight."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "step", "task", "sigma", "normalized_loss", "weight"])
        for result in results:
            for step, ratios, weights in result["history"]:
                for i, ratio in enumerate(ratios):
                    weight = "" if weights is None else f"{weights[i]:.6g}"
                    writer.writerow([result["method"], step, i, f"{result['sigmas'][i]:g}",
                                     f"{ratio:.6g}", weight])


def main(argv=None):
    parser = argparse.ArgumentParser(description="GradNorm's toy regression (Chen et al. 2018).")
    parser.add_argument("--tasks", type=int, default=2, choices=(2, 10), help="number of tasks T")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (a multiple of 100)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated balancer names")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, network and batches")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--csv", default=None, help="write the normalized losses every 100 steps here")
    parser.add_argument("--no-jit", action="store_true", help="train without XLA (jit_compile=False)")
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.steps % 100:
        parser.error(f"--steps must be a positive multiple of 100; received {args.steps}")

    data = make_data(args.tasks, seed=args.seed)
    registered = balancers.available()
    results = []
    for method in [name.strip().lower() for name in args.methods.split(",") if name.strip()]:
        if method not in registered:
            print(f"{method}: skipped, no balancer of that name is registered in this version of "
                  f"keras_balance (registered: {', '.join(registered)})")
            continue
        try:
            result = run(method, data, steps=args.steps, batch_size=args.batch, seed=args.seed,
                         jit_compile=False if args.no_jit else None)
        except Exception as error:  # one failing method should not cost the others their run
            print(f"{method}: failed, {type(error).__name__}: {error}")
            continue
        print(f"{method}: {result['seconds']:.0f} s")
        results.append(result)
    if not results:
        return
    print()
    print(f"T = {args.tasks} tasks, sigma = {', '.join(f'{s:.3g}' for s in data[4])}, "
          f"{args.steps} steps of batch {args.batch}, seed {args.seed}")
    print()
    print(table(results))
    if args.csv:
        write_csv(results, args.csv)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
