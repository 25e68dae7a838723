"""Tests of `keras_balance.balancers.Sum` (linear scalarization)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import LOSS_LEVEL, Sum


@pytest.mark.parametrize("num_terms", [1, 2, 5])
@pytest.mark.parametrize("given", [False, True], ids=["inferred", "num_terms"])
def test_default_weights_are_ones(num_terms, given):
    balancer = Sum(num_terms=num_terms) if given else Sum()
    assert balancer.kind == LOSS_LEVEL
    losses = np.linspace(0.1, 7.0, num_terms).astype(np.float32)
    for _ in range(3):
        weights = balancer(tf.constant(losses))
        assert weights.shape == (num_terms,)
        np.testing.assert_array_equal(weights.numpy(), np.ones(num_terms))
    assert balancer.num_terms == num_terms
    total, weights = balancer.combine(tf.constant(losses))
    np.testing.assert_allclose(total.numpy(), losses.sum(), rtol=1e-6)


@pytest.mark.parametrize("weights", [[1.0, 10.0], [0.0, 2.5, 0.25], (3,), np.array([0.5, 1.5])])
def test_fixed_weights_returned_as_given(weights):
    balancer = Sum(weights=weights)
    expected = np.asarray(weights, np.float32)
    assert balancer.num_terms == expected.size
    assert balancer.built
    for losses in ([1.0] * expected.size, [0.5 + i for i in range(expected.size)]):
        np.testing.assert_array_equal(balancer(losses).numpy(), expected)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), expected)
    assert Sum.from_config(balancer.get_config()).fixed_weights == balancer.fixed_weights


@pytest.mark.parametrize(
    "weights",
    [[-1.0, 1.0], [float("nan"), 1.0], [float("inf"), 1.0], [], [[1.0, 2.0], [3.0, 4.0]], 2.0],
    ids=["negative", "nan", "inf", "empty", "2-D", "scalar"],
)
def test_invalid_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        Sum(weights=weights)


def test_weights_disagree_with_num_terms():
    with pytest.raises(ValueError, match=r"num_terms.*\b3\b.*\b2\b.*weights"):
        Sum(weights=[1.0, 2.0], num_terms=3)
    assert Sum(weights=[1.0, 2.0], num_terms=2).num_terms == 2


def test_weights_disagree_with_number_of_losses():
    balancer = Sum(weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"built for 2 loss terms.*\b3\b"):
        balancer([1.0, 2.0, 3.0])


def test_combine_accepts_list_of_scalar_tensors():
    balancer = Sum(weights=[1.0, 3.0])
    x = tf.Variable(2.0)
    with tf.GradientTape() as tape:
        total, _ = balancer.combine([x * x, 5.0 * x])
    np.testing.assert_allclose(total.numpy(), 4.0 + 3.0 * 10.0, rtol=1e-6)
    # d/dx (x^2 + 3 * 5x) = 2x + 15
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), 2 * 2.0 + 15.0, rtol=1e-6)


def test_evaluate_before_first_call_uses_fixed_weights():
    balancer = Sum(weights=[1.0, 10.0])
    total, weights = balancer.evaluate([1.0, 1.0])
    np.testing.assert_array_equal(weights.numpy(), [1.0, 10.0])
    np.testing.assert_allclose(total.numpy(), 11.0, rtol=1e-6)
