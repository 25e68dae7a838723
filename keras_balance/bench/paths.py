"""What each documented way of training costs, against a hand-written loop (`keras-balance bench paths`).

The same PINN (the problem's default 4 x 50 tanh network on its 1024 + 256
fixed points, Adam) is trained along every path the README, the guides and
the command line show, and along a hand-written `tf.function` step
(`HandWrittenStep`), all in one process: one timed chunk of `steps` steps per
path per round, in a fresh random order each round (`interleaved_step_times`).
A chunk of a `fit` path is one `fit` call, so its per-call set-up is part of
its cost.
"""

import functools
import time

import keras
import tensorflow as tf

from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import resolve
from keras_balance.bench.handwritten import HandWrittenStep
from keras_balance.bench.run import DEFAULTS, _check_positive_int, problem_name
from keras_balance.bench.timing import HAND_WRITTEN, interleaved_step_times
from keras_balance.data import full_batch, full_batch_element
from keras_balance.losses import BalancedLoss
from keras_balance.pinn import PINNModel, build_pinn

#: The paths, in the order of the report, with what each one runs.
PATHS = {
    HAND_WRITTEN: "a loop over a `tf.function(jit_compile=True)` step written without keras_balance",
    "compiled train step": "`BalancedModel.train_step` compiled with XLA, called on the batch in a loop "
                           "(what `fit` on `full_batch` runs each step)",
    "compiled train function on an iterator": "Keras' train function (iterator in, logs out), called in a loop "
                                              "(what `fit` on any other dataset runs each step)",
    "fit(full_batch(xy), steps_per_epoch=N)": "the documented form (README, guides, `keras-balance train`)",
    "fit(xy, batch_size=len(xy), epochs=N)": "one step per epoch on arrays, through `BalancedModel.fit`",
    "Keras model + loss: fit(full_batch(xy, xy), steps_per_epoch=N)":
        "a plain Keras model (a `PINN`) compiled with `BalancedLoss(pde, balancer)`, the documented form",
    "Keras model + plain loss: fit(full_batch(xy, xy), steps_per_epoch=N)":
        "the same plain Keras model compiled with a plain function summing the term means, no keras_balance "
        "loss: Keras' own cost",
    "Keras model + loss: fit(xy, xy, batch_size=len(xy), epochs=N)":
        "the same plain Keras model, one step per epoch: Keras' own per-epoch cost",
}


def _timed(function):
    @functools.wraps(function)
    def run(steps):
        start = time.perf_counter()
        function(steps)
        return time.perf_counter() - start
    return run


def training_paths(pde="helmholtz", balancer="sum", steps=200, repeats=7, seed=0, jit_compile=True):
    """Milliseconds per step along each path of `PATHS`, and the ratio to the hand-written step.

    Args:
        pde: the problem's name or a `PDE` with a hand-written step (Helmholtz, Kirchhoff).
        balancer: a loss-level balancer name, used on every path but the hand-written one.
        steps: steps per timed chunk.
        repeats: timed chunks per path.
        seed: seeds the networks, the points and the order of the rounds.
        jit_compile: compile every step with XLA.

    Returns:
        `[{"path", "what", "ms_per_step", "ratio"}]`, in the order of `PATHS`;
        `ratio` is the median over the rounds of (chunk time / the
        hand-written chunk of the same round).
    """
    steps = _check_positive_int("steps", steps)
    repeats = _check_positive_int("repeats", repeats)
    problem = pde_lib.get(pde)
    settings = DEFAULTS[problem_name(problem) or "helmholtz"]
    xy = problem.sample(settings["n_interior"], settings["n_boundary"], seed=seed)
    optimizer = functools.partial(keras.optimizers.Adam, settings["learning_rate"])

    def network():
        keras.utils.set_random_seed(seed)
        return build_pinn(problem, width=settings["width"], depth=settings["depth"], seed=seed)

    def balanced_model():
        model = PINNModel(problem, network(), balancer=resolve(balancer, problem.num_terms, seed=seed))
        model.compile(optimizer=optimizer(), jit_compile=jit_compile)
        return model

    def plain_model():
        model = network()
        model.compile(optimizer=optimizer(), loss=BalancedLoss(problem, resolve(balancer, problem.num_terms, seed=seed)),
                      jit_compile=jit_compile)
        return model

    def summed_terms(y_true, y_pred):
        terms = problem.compute_loss(y_true[:, :1], y_true[:, 1:2], y_pred)
        return tf.add_n([tf.reduce_mean(term) for term in terms])

    plain_loss_model = network()
    plain_loss_model.compile(optimizer=optimizer(), loss=summed_terms, jit_compile=jit_compile)
    hand = HandWrittenStep(problem, network().network, settings["learning_rate"], jit_compile=jit_compile)
    loop = balanced_model()
    dataset = full_batch(xy)
    loop.fit(dataset, steps_per_epoch=2, verbose=0)
    models = [balanced_model(), balanced_model(), plain_model(), plain_model()]
    runs = {
        HAND_WRITTEN: functools.partial(hand.run, xy),
        "compiled train step": (loop, iter(dataset), full_batch_element(dataset)),
        "compiled train function on an iterator": (loop, iter(dataset)),
        "fit(full_batch(xy), steps_per_epoch=N)":
            _timed(lambda n: models[0].fit(dataset, steps_per_epoch=n, verbose=0)),
        "fit(xy, batch_size=len(xy), epochs=N)":
            _timed(lambda n: models[1].fit(xy, batch_size=len(xy), epochs=n, verbose=0)),
        "Keras model + loss: fit(full_batch(xy, xy), steps_per_epoch=N)":
            _timed(lambda n: models[2].fit(full_batch(xy, xy), steps_per_epoch=n, shuffle=False, verbose=0)),
        "Keras model + plain loss: fit(full_batch(xy, xy), steps_per_epoch=N)":
            _timed(lambda n: plain_loss_model.fit(full_batch(xy, xy), steps_per_epoch=n, shuffle=False, verbose=0)),
        "Keras model + loss: fit(xy, xy, batch_size=len(xy), epochs=N)":
            _timed(lambda n: models[3].fit(xy, xy, batch_size=len(xy), epochs=n, verbose=0)),
    }
    times = interleaved_step_times(runs, steps, repeats, baseline=HAND_WRITTEN, seed=seed)
    return [{"path": path, "what": PATHS[path], **times[path]} for path in PATHS]


def paths_table(rows):
    """A Markdown table of `training_paths` rows."""
    lines = ["| path | what it runs | ms / step | ratio to hand-written |", "|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['what']} | {r['ms_per_step']:.2f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


__all__ = ["PATHS", "paths_table", "training_paths"]
