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

By default the objective is evaluated in the model's own precision (float32
for the default PINNs), and the L-BFGS state (positions, gradients, curvature
pairs) is kept in the same dtype. In float32 the run usually ends with
`"no_progress"` once the loss is flat to float32 precision, long before the
network's error stops improving. `dtype="float64"` runs L-BFGS on a float64
copy of the model (same architecture and parameters, rebuilt from its
configuration) and writes the result back, so that the first-order phase
keeps its float32 speed and the quasi-Newton phase its precision.
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
    #: The model that was fine-tuned: the model itself, or its copy in the requested `dtype`.
    model: object = dataclasses.field(default=None, repr=False, compare=False)
    #: The precision L-BFGS ran in.
    dtype: str = None

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
            "dtype": self.dtype,
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


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16")


def _with_dtype(config, dtype):
    """A copy of a serialized Keras object with every float dtype (policy) set to `dtype`."""
    if isinstance(config, list):
        return [_with_dtype(item, dtype) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(config.get("config"), dict):
        if config["config"].get("name") in _FLOAT_NAMES:
            return {**config, "config": {**config["config"], "name": dtype}}
        return config
    return {key: (dtype if key == "dtype" and value in _FLOAT_NAMES else _with_dtype(value, dtype))
            for key, value in config.items()}


def precision_copy(model, dtype="float64"):
    """The same model with its variables and computations in `dtype`.

    The copy is rebuilt from the model's configuration with every float dtype
    policy set to `dtype` (a `PINNModel`, or any model whose `get_config` /
    `from_config` round trip works), and its trainable parameters (those of
    `trainable_parameters`) are set to the model's, cast. Its balancer is a
    new, unused one: pass the weights explicitly.

    Raises:
        ValueError: the model cannot be rebuilt from its configuration, or
            the copy's parameters do not match the model's.
    """
    try:
        config = _with_dtype(keras.saving.serialize_keras_object(model), str(dtype))
    except Exception as error:
        raise ValueError(
            f"`dtype={dtype!r}` needs a model that can be rebuilt from its configuration "
            f"(get_config); {type(model).__name__} could not be serialized: {error}"
        ) from None
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    try:
        keras.config.set_floatx(str(dtype))
        keras.config.set_dtype_policy(str(dtype))
        copy = keras.saving.deserialize_keras_object(config)
    except Exception as error:
        raise ValueError(
            f"`dtype={dtype!r}` needs a model that can be rebuilt from its configuration "
            f"(from_config); rebuilding {type(model).__name__} failed: {error}"
        ) from None
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    source, target = trainable_parameters(model), trainable_parameters(copy)
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise ValueError(
            f"The {dtype} copy of {type(model).__name__} has parameters of shapes "
            f"{[tuple(v.shape) for v in target]}, the model {[tuple(v.shape) for v in source]}; "
            "build the model before fine-tuning it."
        )
    for copy_variable, variable in zip(target, source):
        copy_variable.assign(tf.cast(tf.convert_to_tensor(variable), copy_variable.dtype))
    return copy


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
             num_correction_pairs=50, weights=None, jit_compile=False, verbose=1, callback=None, dtype=None):
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
        callback: optional `callback(steps, loss)` after each chunk; the
            model's variables then hold the chunk's parameters.
        dtype: the precision of the fine-tuning: None (the model's own), or
            a float dtype such as `"float64"`, for which a copy of the model
            in that precision is fine-tuned (see `precision_copy`) and its
            parameters are cast back into the model at the end.

    Returns:
        An `LBFGSResult`. The model's variables hold the returned parameters.
    """
    if dtype is not None:
        if dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"Argument `dtype` must be None or a float dtype such as 'float64'; received dtype={dtype!r}.")
        variables = trainable_parameters(model)
        if variables and any(v.dtype != dtype for v in variables):
            num_terms = getattr(model, "num_terms", None)
            w = frozen_weights(model, num_terms) if weights is None else weights
            copy = precision_copy(model, dtype)

            def write_back():
                for variable, value in zip(variables, trainable_parameters(copy)):
                    variable.assign(tf.cast(tf.convert_to_tensor(value), variable.dtype))

            def relay(steps, loss):  # the model holds the chunk's parameters when `callback` sees it
                write_back()
                callback(steps, loss)

            result = finetune(copy, points, y=y, max_steps=max_steps, tolerance=tolerance,
                              f_relative_tolerance=f_relative_tolerance, chunk=chunk,
                              num_correction_pairs=num_correction_pairs, weights=w, jit_compile=jit_compile,
                              verbose=verbose, callback=None if callback is None else relay)
            write_back()
            result.model = copy
            return result
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
                           1, time.perf_counter() - start, history, model, str(packing.dtype))
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
                       evaluations, time.perf_counter() - start, history, model, str(packing.dtype))


__all__ = ["LBFGSResult", "STOP_REASONS", "finetune", "frozen_weights", "precision_copy", "trainable_parameters"]
