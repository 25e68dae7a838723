"""Property-based fuzzing of every registered balancer (Hypothesis).

Every method in `keras_balance.balancers.available()`, built with
`balancers.example` for a random number of terms K (1 to 64), gets a few
steps of random input: loss terms from 1e-30 to 1e30 (zeros, negatives,
NaN and infinities at random positions) and, for gradient-level methods,
random K x P Jacobians of random rank with duplicate and zero rows and rows
of scales from 1e-30 to 1e30, each in float16, float32 or float64. Every step
must give finite weights (never a NaN) or a clear `ValueError`/`TypeError`;
a step the NaN policy skips must return the previous weights (and, for a
gradient-level method, a zero direction) and leave every variable as it was.

Two profiles: `QUICK`, a bounded, derandomized number of examples in the
default suite; `LONG`, many random examples, marked `slow`
(`pytest -m slow tests/balancers/test_fuzz.py`). Balancers are built once per
(method, K) and reset to their initial state for each example.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import GRADIENT_LEVEL, LOSS_LEVEL, assert_same_state, make, state_of
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

SLOW_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
QUICK = settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_HEALTH)
LONG = settings(max_examples=150, deadline=None, database=None, suppress_health_check=SLOW_HEALTH)

DTYPES = ("float16", "float32", "float64")
MAX_TERMS = 64

# -- inputs ------------------------------------------------------------------------------------

#: How a loss term is drawn: mostly a positive value 10^e with e in [-30, 30].
KINDS = ("value",) * 8 + ("zero", "negative", "nan", "inf", "-inf")


def term_value(kind, exponent):
    return {
        "value": 10.0**exponent,
        "zero": 0.0,
        "negative": -(10.0**exponent),
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
    }[kind]


def loss_vectors(k):
    term = st.builds(term_value, st.sampled_from(KINDS), st.floats(-30.0, 30.0))
    return st.lists(term, min_size=k, max_size=k)


@st.composite
def jacobians(draw, k):
    """A (K, P) float64 matrix of random rank, with duplicate and zero rows, row scales 1e-30..1e30,
    and sometimes NaN or infinite entries."""
    columns = draw(st.integers(1, 12))
    rank = draw(st.integers(0, min(k, columns)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    matrix = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, columns)) if rank else np.zeros((k, columns))
    for _ in range(draw(st.integers(0, k // 2))):  # duplicate rows
        matrix[rng.integers(k)] = matrix[rng.integers(k)]
    if draw(st.booleans()):
        matrix[rng.integers(k)] = 0.0
    matrix *= 10.0 ** draw(st.lists(st.floats(-30.0, 30.0), min_size=k, max_size=k).map(np.array))[:, None]
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 4)) == 0 else 0):
        matrix[rng.integers(k), rng.integers(columns)] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return matrix


def in_dtype(values, dtype):
    """The values as the balancer receives them (float16 overflows to inf, underflows to 0)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return np.asarray(values, "float64").astype(dtype)


# -- balancers ---------------------------------------------------------------------------------

_BUILT = {}


def balancer_for(name, k):
    """A balancer of the method for K terms in its initial state.

    Built once per (method, K) and shared by the examples; each example starts
    from the initial values of its variables, so an example replays the same
    way (Hypothesis replays the failing ones to shrink them).
    """
    if (name, k) not in _BUILT or _BUILT[name, k][0].column_state:
        # A method with per-column state is new for each example: its P is the example's.
        balancer = make(name, k, num_terms=k)
        _BUILT[name, k] = balancer, [np.array(v.numpy(), copy=True) for v in balancer.variables]
    balancer, initial = _BUILT[name, k]
    for variable, value in zip(balancer.variables, initial):
        variable.assign(value)
    return balancer


def refused_clearly(error):
    """A refusal is fine when it is a ValueError or TypeError with a message."""
    assert isinstance(error, (ValueError, TypeError)) and str(error).strip(), repr(error)


def skips(balancer, losses):
    """Does the NaN policy skip a step with these losses (as float32)?"""
    seen = losses.astype("float32")
    return not np.all(np.isfinite(seen)) or (balancer.needs_non_negative_losses and bool(np.any(seen < 0)))


# -- properties --------------------------------------------------------------------------------


def check_loss_level(name, data):
    k = data.draw(st.integers(1, MAX_TERMS), label="K")
    event("K " + ("1" if k == 1 else "2-8" if k <= 8 else "9-32" if k <= 32 else "33-64"))
    balancer = balancer_for(name, k)
    for _ in range(data.draw(st.integers(1, 3), label="steps")):
        dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
        losses = in_dtype(data.draw(loss_vectors(k), label="losses"), dtype)
        skipped = skips(balancer, losses)
        before, previous = state_of(balancer), balancer.term_weights.numpy()
        try:
            _, weights = balancer.combine(tf.constant(losses))
        except (ValueError, TypeError) as error:
            refused_clearly(error)
            continue
        weights = weights.numpy()
        assert weights.shape == (k,)
        assert np.all(np.isfinite(weights)), (name, k, losses, weights)
        if skipped:
            np.testing.assert_array_equal(weights, previous)
            assert_same_state(state_of(balancer), before)
        if balancer.needs_epoch_end and data.draw(st.booleans(), label="end of epoch"):
            balancer.end_epoch()
            assert np.all(np.isfinite(balancer.term_weights.numpy())), (name, k)


def check_gradient_level(name, data):
    k = data.draw(st.integers(1, MAX_TERMS), label="K")
    event("K " + ("1" if k == 1 else "2-8" if k <= 8 else "9-32" if k <= 32 else "33-64"))
    balancer = balancer_for(name, k)
    for _ in range(data.draw(st.integers(1, 2), label="steps")):
        dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
        jacobian = in_dtype(data.draw(jacobians(k), label="jacobian"), dtype)
        kinds = st.sampled_from(("value",) * 20 + ("zero", "negative", "nan", "inf"))
        raw = data.draw(st.lists(st.builds(term_value, kinds, st.floats(-30.0, 30.0)), min_size=k, max_size=k))
        losses = in_dtype(raw, dtype)
        # The balancer computes in float32 or float64 (float16 is cast to float32).
        seen = jacobian.astype("float64" if dtype == "float64" else "float32")
        skipped = not np.all(np.isfinite(seen)) or skips(balancer, losses)
        if balancer.column_state:
            # Per-column state (DB-MTL, ExcessMTL) follows one P: made before the step, so that a skipped
            # step can be compared with the state before it; another P is refused.
            try:
                balancer.build_columns(jacobian.shape[1])
            except ValueError as error:
                refused_clearly(error)
                continue
        before, previous = state_of(balancer), balancer.term_weights.numpy()
        try:
            direction = balancer.aggregate(tf.constant(jacobian), tf.constant(losses)).numpy()
        except (ValueError, TypeError) as error:
            refused_clearly(error)
            continue
        weights = balancer.term_weights.numpy()
        assert direction.shape == (jacobian.shape[1],)
        assert np.all(np.isfinite(weights)), (name, k, weights)
        assert not np.any(np.isnan(direction)), (name, k, direction)
        if skipped:
            np.testing.assert_array_equal(direction, np.zeros_like(direction))
            np.testing.assert_array_equal(weights, previous)
            assert_same_state(state_of(balancer), before)


@pytest.mark.parametrize("name", LOSS_LEVEL)
@QUICK
@given(data=st.data())
def test_loss_level_fuzz(name, data):
    check_loss_level(name, data)


@pytest.mark.parametrize("name", GRADIENT_LEVEL)
@QUICK
@given(data=st.data())
def test_gradient_level_fuzz(name, data):
    check_gradient_level(name, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_LEVEL)
@LONG
@given(data=st.data())
def test_loss_level_fuzz_long(name, data):
    check_loss_level(name, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", GRADIENT_LEVEL)
@LONG
@given(data=st.data())
def test_gradient_level_fuzz_long(name, data):
    check_gradient_level(name, data)
