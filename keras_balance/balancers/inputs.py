"""What a balancer is called with (the K losses, the K x P Jacobian) and the range of what it returns.

`as_loss_vector` and `as_jacobian` turn a tensor, an array or (nested)
Python sequences into the tensor a balancer computes with, and refuse
anything else with an error that names the argument, what was expected and
what was received: a `TypeError` for values that are not real numbers
(None, strings, booleans, complex numbers), a `ValueError` for a shape
other than the contract's.

`valid_entries` applies the NaN policy's test to the values of a step: which
entries the method can use (finite, and non-negative for losses of a method
that needs them so). `bounded_weights` keeps a gradient-level method's
weights within the finite range of float32.
"""

import reprlib

import numpy as np
import tensorflow as tf

_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxtuple = 6
_REPR.maxother = _REPR.maxstring = 60

LOSSES = "a 1-D sequence of the K scalar loss terms (a list, or an array or tensor of shape (K,))"
JACOBIAN = "a (K, P) matrix of real numbers, row i the gradient of loss i (a nested list, an array or a tensor)"


def describe(value):
    """A short description of `value` for an error message."""
    if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray, np.generic)):
        if not tuple(value.shape):
            try:
                return repr(np.asarray(value).item())
            except (TypeError, ValueError, NotImplementedError):  # a symbolic tensor
                pass
        return f"a {type(value).__name__} of dtype {value.dtype.name} and shape {tuple(value.shape)}"
    return _REPR.repr(value)


def _holds_non_numbers(value):
    """Does a (nested) sequence hold None, a string or bytes?"""
    if value is None or isinstance(value, (str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_non_numbers(item) for item in value)
    return False


def _real_tensor(name, value, expected, shown=None):
    """`value` as a tensor of real numbers (integer or floating dtype)."""
    shown = f"{name}={describe(value)}" if shown is None else shown
    if _holds_non_numbers(value):
        raise TypeError(
            f"Argument `{name}` must be {expected}; received {shown}, which holds a value that is not a "
            "number (None or a string)."
        )
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        # Rows of different lengths, or objects TensorFlow cannot convert.
        raise ValueError(
            f"Argument `{name}` must be {expected}; received {shown}, which is not a rectangular array of numbers."
        ) from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
        raise TypeError(
            f"Argument `{name}` must be {expected}; received {shown}, of dtype {tensor.dtype.name} "
            "(expected real numbers: a floating or integer dtype)."
        )
    return tensor


def _scalar_term(losses, index):
    value = losses[index]
    shown = f"term {index} = {describe(value)} in losses={describe(losses)}"
    if value is None:
        raise TypeError(f"Argument `losses` must be {LOSSES}; received {shown}: a loss term is None.")
    term = _real_tensor("losses", value, LOSSES, shown)
    size = term.shape.num_elements()
    if size is not None and size != 1:
        raise ValueError(
            f"Argument `losses` must be {LOSSES}; received {shown}, of shape {tuple(term.shape)}: "
            "each term must be one scalar."
        )
    return tf.reshape(tf.cast(term, "float32"), ())


def as_loss_vector(losses):
    """A float32 (K,) tensor from a tensor, an array or a sequence of scalars."""
    if isinstance(losses, (list, tuple)):
        if not losses:
            raise ValueError(f"Argument `losses` must be {LOSSES} with K >= 1; received losses={losses!r}.")
        return tf.stack([_scalar_term(losses, index) for index in range(len(losses))])
    if losses is None:
        raise TypeError(f"Argument `losses` must be {LOSSES}; received losses=None.")
    tensor = _real_tensor("losses", losses, LOSSES)
    if tensor.shape.rank is not None and tensor.shape.rank != 1:
        hint = f" A single loss is written [{describe(losses)}]." if tensor.shape.rank == 0 else ""
        raise ValueError(
            f"Argument `losses` must be {LOSSES}; received losses={describe(losses)}, of rank "
            f"{tensor.shape.rank} (shape {tuple(tensor.shape)}).{hint}"
        )
    return tf.cast(tensor, "float32")


def as_jacobian(jacobian):
    """A float32 or float64 (K, P) tensor; other real dtypes are cast to float32."""
    if jacobian is None:
        raise TypeError(f"Argument `jacobian` must be {JACOBIAN}; received jacobian=None.")
    tensor = _real_tensor("jacobian", jacobian, JACOBIAN)
    if tensor.shape.rank is not None and tensor.shape.rank != 2:
        raise ValueError(
            f"Argument `jacobian` must be {JACOBIAN}; received jacobian={describe(jacobian)}, of rank "
            f"{tensor.shape.rank} (shape {tuple(tensor.shape)})."
        )
    if tensor.dtype not in (tf.float32, tf.float64):
        tensor = tf.cast(tensor, tf.float32)
    return tensor


def bounded_weights(weights, dtype):
    """`weights` in `dtype`, clipped to the finite range of float32 (infinities included; NaN stays NaN)."""
    top = float(np.finfo(np.float32).max)
    weights = tf.convert_to_tensor(weights)
    return tf.cast(tf.clip_by_value(weights, tf.cast(-top, weights.dtype), tf.cast(top, weights.dtype)), dtype)


def valid_entries(balancer, values, losses=False):
    """Elementwise: can the method use these values? Raises under `nan_policy="raise"`.

    An entry is valid when it is finite; with `losses=True` and a balancer whose
    `needs_non_negative_losses` is True, also when it is >= 0. Under "raise" an
    invalid entry fails the step with an `InvalidArgumentError` naming the
    balancer (eager and graph mode; XLA drops assertions).
    """
    valid = tf.math.is_finite(values)
    non_negative = losses and balancer.needs_non_negative_losses
    if balancer.nan_policy == "raise":
        tf.debugging.Assert(tf.reduce_all(valid), [f"Balancer '{balancer.name}' received a non-finite value:", values])
    if non_negative:
        valid = tf.logical_and(valid, values >= 0.0)
        if balancer.nan_policy == "raise":
            message = f"Balancer '{balancer.name}' needs non-negative losses; received:"
            tf.debugging.Assert(tf.reduce_all(valid), [message, values])
    return valid




def check_segments(segments, columns):
    """Validate `segments`: positive integers (the columns of each layer's block) summing to `columns`."""
    try:
        sizes = tuple(int(size) for size in segments)
        valid = all(size > 0 and size == s for size, s in zip(sizes, segments)) and sum(sizes) == columns
    except (TypeError, ValueError):
        valid = False
    if not valid or not sizes:
        raise ValueError(
            f"Argument `segments` must be positive integers (the columns of each layer's block) that sum to "
            f"the Jacobian's {columns} columns; received segments={segments!r}."
        )
    return sizes


__all__ = ["as_jacobian", "as_loss_vector", "bounded_weights", "check_segments", "describe", "valid_entries"]
