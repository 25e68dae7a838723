"""L-BFGS fine-tuning of a balanced model after its first-order training.

PINNs are commonly trained with Adam first and then refined with a
quasi-Newton method, which reaches lower losses once the iterate is in the
basin of a minimum (M. Raissi, P. Perdikaris and G. E. Karniadakis,
"Physics-informed neural networks", J. Comput. Phys. 378, 2019; S. Markidis,
"The old and the new: can physics-informed deep-learning replace traditional
linear solvers?", Front. Big Data 4, 2021). L-BFGS itself is D. C. Liu and
J. Nocedal, "On the limited memory BFGS method for large scale optimization",
Math. Program. 45, 1989.

`finetune` minimizes the balanced objective `sum_i w_i L_i` with the
balancer's weights frozen at their last values (`model.balancer.term_weights`):
a balancer's update rule assumes small stochastic steps and would make the
objective change under the line search, which L-BFGS cannot handle.

The objective is evaluated in the model's own precision (float32 for the
default PINNs), and the L-BFGS state (positions, gradients, curvature pairs)
is kept in the same dtype. float64 would let L-BFGS go further before its
line search runs out of precision, but it would need a float64 copy of the
network; in float32 the run usually ends with `"no_progress"` once the loss is
flat to float32 precision, which is reported as such.
"""

import dataclasses
import math
import time

import keras
import numpy as np
import tensorflow as tf

#: Why `finetune` stopped.
STOP_REASONS = ("converged", "max_steps", "nan", "no_progress")


@dataclasses.dataclass
class LBFGSResult:
    """What an L-BFGS fine-tuning run did.

    Attributes:
        steps: L-BFGS iterations done (each runs a line search, so several
            evaluations of the objective).
        initial_loss: the frozen-weight objective before the first iteration.
        final_loss: the objective at the returned parameters.
        reason: why it stopped: `"converged"` (gradient or relative change
            below tolerance), `"max_steps"`, `"nan"` (a non-finite objective
            or parameter appeared: the last finite parameters are restored),
            `"no_progress"` (the line search found no lower point, e.g. at
            the limit of the float precision).
        weights: the frozen term weights used.
        evaluations: objective and gradient evaluations.
        seconds: wall time.
        history: `(steps, loss)` after each chunk of iterations.
    """

    steps: int
    initial_loss: float
    final_loss: float
    reason: str
    weights: tuple
    evaluations: int = 0
    seconds: float = 0.0
    history: list = dataclasses.field(default_factory=list)

    def summary(self):
        """A JSON-friendly dict of the result."""
        return {
            "steps": self.steps,
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "reason": self.reason,
            "weights": list(self.weights),
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
        }


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Argument `{name}` must be a positive integer; received {name}={value!r}.")
    return int(value)


def _check_tolerance(name, value):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"Argument `{name}` must be a finite number >= 0; received {name}={value!r}.")
    return float(value)


def trainable_parameters(model):
    """The model's trainable variables without those of its balancer.

    A learned balancer (uncertainty weighting) trains its own variables with
    the model's optimizer; with frozen weights they are not part of the
    fine-tuned parameters.
    """
    balancer = getattr(model, "balancer", None)
    excluded = {id(v) for v in balancer.variables} if balancer is not None else set()
    return [v for v in model.trainable_variables if id(v) not in excluded]


def frozen_weights(model, num_terms=None):
    """The balancer's last weights as a float32 NumPy vector (ones without a balancer)."""
    balancer = getattr(model, "balancer", None)
    weights = getattr(balancer, "term_weights", None)
    if weights is None:
        if num_terms is None:
            raise ValueError("The model has no built balancer; pass `weights` to `finetune`.")
        return np.ones(num_terms, "float32")
    return np.asarray(keras.ops.convert_to_numpy(weights), "float32")


class _Packing:
    """Map a list of variables to one flat vector and back."""

    def __init__(self, variables):
        self.variables = list(variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.dtype = self.variables[0].dtype

    def pack(self):
        return tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in self.variables], axis=0)

    def pack_values(self, values):
        return tf.concat([tf.reshape(tf.cast(g, self.dtype), [-1]) for g in values], axis=0)

    def assign(self, flat):
        for variable, part, shape in zip(self.variables, tf.split(flat, self.sizes), self.shapes):
            variable.assign(tf.reshape(part, shape))


def finetune(model, points, y=None, max_steps=500, tolerance=1e-9, f_relative_tolerance=0.0, chunk=50,
             num_correction_pairs=50, weights=None, jit_compile=False, verbose=1, callback=None):
    """Fine-tune a trained `BalancedModel` / `PINNModel` with L-BFGS on frozen weights.

    The objective is `sum_i w_i L_i(theta)` on the whole batch `points` (the
    terms from `model.forward_terms(points, y, None, training=False)`), with
    `w` the balancer's last weights. `tfp.optimizer.lbfgs_minimize` runs in
    chunks of `chunk` iterations, continuing from the previous chunk's state
    (its curvature pairs are kept), so that progress can be reported and a
    non-finite objective stops the run: the parameters of the last chunk
    whose objective and parameters were finite are then restored.

    Args:
        model: a built, trained `BalancedModel` (e.g. a `PINNModel`).
        points: the full batch of inputs (for a PINN, the (N, 2) collocation points).
        y: targets, for models whose terms need them.
        max_steps: the most L-BFGS iterations.
        tolerance: stop when the largest gradient entry is at most this.
        f_relative_tolerance: stop when the relative change of the objective
            in one iteration is at most this (0: off).
        chunk: iterations per call of `lbfgs_minimize` (reporting granularity).
        num_correction_pairs: L-BFGS memory.
        weights: override the frozen weights (a length-K sequence).
        jit_compile: compile the objective with XLA.
        verbose: 1 prints one line per chunk, 0 is silent.
        callback: optional `callback(steps, loss)` after each chunk.

    Returns:
        An `LBFGSResult`. The model's variables hold the returned parameters.
    """
    import tensorflow_probability as tfp

    max_steps = _check_positive_int("max_steps", max_steps)
    chunk = _check_positive_int("chunk", chunk)
    num_correction_pairs = _check_positive_int("num_correction_pairs", num_correction_pairs)
    tolerance = _check_tolerance("tolerance", tolerance)
    f_relative_tolerance = _check_tolerance("f_relative_tolerance", f_relative_tolerance)
    variables = trainable_parameters(model)
    if not variables:
        raise ValueError("The model has no trainable variables to fine-tune; build and train it first.")
    packing = _Packing(variables)
    points = tf.convert_to_tensor(points)
    y = None if y is None else tf.convert_to_tensor(y)
    num_terms = getattr(model, "num_terms", None)
    w = frozen_weights(model, num_terms) if weights is None else np.asarray(weights, "float32").reshape(-1)
    if num_terms is not None and w.shape[0] != num_terms:
        raise ValueError(f"Argument `weights` must have {num_terms} entries (one per term); received {w.shape[0]}.")
    w_tensor = tf.constant(w, packing.dtype)

    def objective():
        _, terms = model.forward_terms(points, y, None, training=False)
        terms = tf.stack([tf.reshape(tf.cast(t, packing.dtype), ()) for t in terms]) \
            if isinstance(terms, (list, tuple)) else tf.cast(terms, packing.dtype)
        total = tf.reduce_sum(w_tensor * terms)
        if model.losses:
            total = total + tf.add_n([tf.cast(v, packing.dtype) for v in model.losses])
        return total

    # Set when any evaluation (a line-search trial point too) was not finite.
    saw_nan = tf.Variable(False, trainable=False)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def value_and_gradients(flat):
        packing.assign(flat)
        with tf.GradientTape() as tape:
            value = objective()
        grads = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = packing.pack_values(grads)
        finite = tf.math.is_finite(value) & tf.reduce_all(tf.math.is_finite(grads))
        saw_nan.assign(tf.logical_or(saw_nan, tf.logical_not(finite)))
        return value, grads

    options = {"tolerance": tolerance, "f_relative_tolerance": f_relative_tolerance,
               "num_correction_pairs": num_correction_pairs}

    @tf.function
    def first(position, limit):
        return tfp.optimizer.lbfgs_minimize(value_and_gradients, initial_position=position,
                                            max_iterations=limit, **options)

    @tf.function
    def resume(state, limit):
        return tfp.optimizer.lbfgs_minimize(value_and_gradients, initial_position=None,
                                            previous_optimizer_results=state,
                                            max_iterations=limit, **options)

    start = time.perf_counter()
    good_position = packing.pack()
    initial_loss = float(value_and_gradients(good_position)[0])
    good_loss, good_steps = initial_loss, 0
    history = [(0, initial_loss)]
    if not math.isfinite(initial_loss):
        packing.assign(good_position)
        return LBFGSResult(0, initial_loss, initial_loss, "nan", tuple(float(v) for v in w),
                           1, time.perf_counter() - start, history)
    state, reason, evaluations = None, "max_steps", 1
    while good_steps < max_steps:
        limit = tf.constant(min(good_steps + chunk, max_steps), tf.int32)
        state = first(good_position, limit) if state is None else resume(state, limit)
        steps = int(state.num_iterations)
        evaluations = 1 + int(state.num_objective_evaluations)
        loss = float(state.objective_value)
        position_finite = bool(tf.reduce_all(tf.math.is_finite(state.position)))
        if not (math.isfinite(loss) and position_finite):
            reason = "nan"
            break
        good_position, good_loss, good_steps = state.position, loss, steps
        history.append((steps, loss))
        if verbose:
            print(f"L-BFGS {steps}/{max_steps}: loss {loss:.4e}", flush=True)
        if callback is not None:
            callback(steps, loss)
        if bool(state.converged):
            reason = "converged"
            break
        if bool(state.failed):
            # The line search gave up; if it met a non-finite value, say so.
            reason = "nan" if bool(saw_nan.numpy()) else "no_progress"
            break
        if steps < int(limit):  # stopped early without a flag: nothing more to do
            reason = "converged"
            break
    # The variables hold the last trial point of the line search; put back the result.
    packing.assign(good_position)
    if reason == "nan" and verbose:
        print(f"L-BFGS stopped at a non-finite objective; restored the parameters of step {good_steps}.",
              flush=True)
    return LBFGSResult(good_steps, initial_loss, good_loss, reason, tuple(float(v) for v in w),
                       evaluations, time.perf_counter() - start, history)


__all__ = ["LBFGSResult", "STOP_REASONS", "finetune", "frozen_weights", "trainable_parameters"]
