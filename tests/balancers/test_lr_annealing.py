"""Tests of `LRAnnealing` against values computed by hand from the formula.

    lambda_hat_i = max|g_r| / mean|g_i|            (mode "max")
    lambda_hat_i = mean|g_r| / mean|g_i|           (mode "mean")
    lambda_i <- s * lambda_i + (1 - s) * lambda_hat_i,   lambda_r = 1
"""

import numpy as np
import pytest

from keras_balance.balancers import LRAnnealing

J = np.array([[4.0, -2.0, 0.0, 2.0], [0.5, -0.5, 1.0, 0.0], [0.0, 0.0, 0.0, -8.0]])
# |g_0|: max 4, mean 2;  mean|g_1| = 0.5;  mean|g_2| = 2.


@pytest.mark.parametrize("mode, expected", [("max", [1.0, 8.0, 2.0]), ("mean", [1.0, 4.0, 1.0])])
def test_hand_values_without_smoothing(mode, expected):
    balancer = LRAnnealing(smoothing=0.0, mode=mode)
    np.testing.assert_allclose(balancer.weigh(J).numpy(), expected, rtol=1e-6)
    # The direction is J^T lambda.
    balancer = LRAnnealing(smoothing=0.0, mode=mode)
    np.testing.assert_allclose(balancer.aggregate(J).numpy(), J.T @ np.array(expected), rtol=1e-6)


def test_moving_average_over_updates():
    balancer = LRAnnealing(smoothing=0.9, update_every=1)
    first = balancer.weigh(J).numpy()
    np.testing.assert_allclose(first, [1.0, 0.9 + 0.1 * 8.0, 0.9 + 0.1 * 2.0], rtol=1e-6)
    second = balancer.weigh(J).numpy()
    np.testing.assert_allclose(second, [1.0, 0.9 * 1.7 + 0.8, 0.9 * 1.1 + 0.2], rtol=1e-6)


def test_reference_term_and_zero_gradient():
    balancer = LRAnnealing(smoothing=0.0, reference=2)
    jacobian = np.array([[1.0, 1.0], [0.0, 0.0], [3.0, -1.0]])
    # Term 1 has a zero gradient: no information, its weight stays 1.
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [3.0, 1.0, 1.0], rtol=1e-6)


def test_update_schedule():
    balancer = LRAnnealing(update_every=3)
    balancer.build_for(2)
    needs = []
    for _ in range(7):
        needs.append(bool(balancer.needs_jacobian().numpy()))
        if needs[-1]:
            balancer.weigh(J[:2])
        else:
            balancer.hold()
    assert needs == [True, False, False, True, False, False, True]
    assert int(balancer.step.numpy()) == 7


def test_scale_equivariance_and_range():
    for scale in (1e-10, 1.0, 1e10):
        weights = LRAnnealing(smoothing=0.0).weigh(J * scale).numpy()
        np.testing.assert_allclose(weights, [1.0, 8.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"smoothing": 1.5}, "smoothing"), ({"mode": "median"}, "mode"), ({"update_every": 0}, "update_every"),
     ({"reference": -1}, "reference"), ({"update_every": 2.5}, "update_every")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LRAnnealing(**kwargs)


def test_reference_out_of_range():
    with pytest.raises(ValueError, match="reference"):
        LRAnnealing(reference=3).build_for(2)
