"""Argument checks shared by the balancers.

Each raises an error that names the argument, what was expected and the value
received, and returns the value in the form the balancer stores.
"""

import math
import numbers

import numpy as np


def check_range(name, value, low, high, *, low_open=False, high_open=False):
    """Validate that a float hyper-parameter lies in an interval.

    Accepts real numbers: Python ints and floats and NumPy numbers. Anything
    else (a string such as "0.9", a bool, None) raises a `TypeError`, and a
    number outside the interval a `ValueError`; both name the argument, what
    was expected and the value received.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a number (an int or a float); received {name}={value!r} "
            f"(of type {type(value).__name__})."
        )
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if math.isnan(number) or too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(
            f"Argument `{name}` must be in {left}{low}, {high}{right}; "
            f"received {name}={value!r}."
        )
    return number


def check_positive(name, value):
    """Validate that a float hyper-parameter is strictly positive and finite."""
    return check_range(name, value, 0.0, math.inf, low_open=True, high_open=True)


def check_seed(seed):
    """Validate an optional seed: None, or an int that fits in a signed 64-bit integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"Argument `seed` must be an int or None; received seed={seed!r}.")
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(
            f"Argument `seed` must fit in a signed 64-bit integer; received seed={seed!r}."
        )
    return int(seed)


def check_weight_vector(name, values, num_terms, allow_all_zero=True):
    """Validate a 1-D sequence of K finite, non-negative numbers (fixed weights, preferences).

    Args:
        name: the argument's name, for the errors.
        values: the sequence received.
        num_terms: the balancer's `num_terms` argument (None, or it must equal K).
        allow_all_zero: whether every entry may be zero.

    Returns:
        `(floats, K)`: the values as a list of Python floats, and their count.
    """
    try:
        array = np.asarray(values, dtype="float64")
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"Argument `{name}` must be a non-empty 1-D sequence of numbers; received {name}={values!r}."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0) or not (allow_all_zero or np.any(array > 0)):
        rule = "finite, non-negative numbers" + ("" if allow_all_zero else ", not all zero")
        raise ValueError(f"Argument `{name}` must contain {rule}; received {name}={values!r}.")
    if num_terms is not None and num_terms != array.size:
        raise ValueError(f"Argument `num_terms`={num_terms!r} disagrees with the {array.size} entries of `{name}`.")
    return [float(v) for v in array], int(array.size)


__all__ = ["check_positive", "check_range", "check_seed", "check_weight_vector"]
