"""Hand-computed values and closed forms of `keras_balance.balancers.NashMTL`.

Nash-MTL's weights solve `alpha_i (G alpha)_i = 1`. Closed forms used here:
orthogonal gradients give `alpha_i = 1 / ||g_i||`; K identical rows g give
`alpha_i = 1 / (sqrt(K) ||g||)`; two unit rows with cosine c give
`alpha_1 = alpha_2 = 1 / sqrt(1 + c)`.
"""

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import NashMTL


def weights(jacobian, **options):
    return NashMTL(**options).weigh(np.asarray(jacobian, "float64")).numpy().astype("float64")


def test_orthogonal_gradients_get_the_inverse_of_their_norms():
    jacobian = np.diag([3.0, 0.25, 8.0])
    np.testing.assert_allclose(weights(jacobian), [1 / 3.0, 4.0, 1 / 8.0], rtol=1e-8)
    direction = NashMTL().aggregate(jacobian).numpy()
    np.testing.assert_allclose(direction, [1.0, 1.0, 1.0], rtol=1e-8)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_identical_rows(k):
    row = np.array([1.0, -2.0, 2.0])  # norm 3
    np.testing.assert_allclose(weights(np.tile(row, (k, 1))), np.full(k, 1 / (3.0 * np.sqrt(k))), rtol=1e-8)


@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.6])
def test_two_unit_rows_with_cosine_c(c):
    jacobian = np.array([[1.0, 0.0], [c, np.sqrt(1 - c * c)]])
    np.testing.assert_allclose(weights(jacobian), np.full(2, 1 / np.sqrt(1 + c)), rtol=1e-7)


def test_solves_the_bargaining_system_and_every_term_improves():
    for seed in range(4):
        jacobian = full_rank(4, 9, seed=seed, spread=1.0)
        alpha = weights(jacobian)
        gramian = jacobian @ jacobian.T
        np.testing.assert_allclose(alpha * (gramian @ alpha), 1.0, atol=1e-8)
        assert np.all(alpha > 0) and np.all(jacobian @ (jacobian.T @ alpha) > 0)


def test_direction_does_not_depend_on_the_scale_of_the_gradients():
    jacobian = full_rank(3, 6, seed=1)
    reference = NashMTL().aggregate(jacobian).numpy()
    for scale in (1e-6, 1e4):
        np.testing.assert_allclose(NashMTL().aggregate(scale * jacobian).numpy(), reference, rtol=1e-7)


def test_max_norm_clips_the_direction():
    jacobian = np.diag([3.0, 0.25, 8.0])  # unclipped: d = (1, 1, 1), norm sqrt(3)
    clipped = NashMTL(max_norm=1.0).aggregate(jacobian).numpy()
    np.testing.assert_allclose(clipped, np.ones(3) / np.sqrt(3.0), rtol=1e-8)
    np.testing.assert_allclose(NashMTL(max_norm=2.0).aggregate(jacobian).numpy(), np.ones(3), rtol=1e-8)


def test_a_zero_gradient_gets_weight_zero_and_the_others_bargain_alone():
    jacobian = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    np.testing.assert_allclose(weights(jacobian), [0.5, 0.0, 2.0], rtol=1e-8)


def test_opposite_gradients_give_a_vanishing_direction_and_finite_weights():
    balancer = NashMTL()
    direction = balancer.aggregate(np.array([[1.0, 2.0], [-1.0, -2.0]])).numpy()
    assert np.all(np.isfinite(balancer.term_weights.numpy()))
    np.testing.assert_allclose(direction, 0.0, atol=1e-6)


def test_the_warm_start_is_kept_and_restored():
    first, second = full_rank(3, 5, seed=2), full_rank(3, 5, seed=3)
    balancer = NashMTL()
    balancer.aggregate(first)
    solution = balancer.previous_solution.numpy()
    assert not np.allclose(solution, 1.0)
    copy = NashMTL.from_config(balancer.get_config())
    copy.build_for(3)
    copy.set_weights(balancer.get_weights())
    np.testing.assert_array_equal(copy.previous_solution.numpy(), solution)
    np.testing.assert_array_equal(copy.aggregate(second).numpy(), balancer.aggregate(second).numpy())
    # Cold and warm starts reach the same solution.
    np.testing.assert_allclose(NashMTL().aggregate(second).numpy(), copy.aggregate(second).numpy(), rtol=1e-8)


def test_config_round_trip():
    balancer = NashMTL(max_norm=0.5, update_every=3, name="bargain")
    config = balancer.get_config()
    assert config["max_norm"] == 0.5 and config["update_every"] == 3
    assert NashMTL.from_config(config).get_config() == config


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_max_norm_is_checked(value):
    assert_refused(NashMTL, {"max_norm": value}, "max_norm")
