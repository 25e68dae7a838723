"""Hand-computed values and closed forms of `keras_balance.balancers.FairGrad`.

FairGrad's weights solve `(G w)_i = w_i^(-1/alpha)`. Closed forms used here:
orthogonal gradients give `w_i = ||g_i||^(-2 alpha / (1 + alpha))`; K identical
rows g give `w_i = (K ||g||^2)^(-alpha / (1 + alpha))`; alpha = 0 gives 1/K.
"""

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import FairGrad


def weights(jacobian, alpha):
    return FairGrad(alpha=alpha).weigh(np.asarray(jacobian, "float64")).numpy().astype("float64")


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_orthogonal_gradients(alpha):
    norms = np.array([4.0, 1.0, 0.1])
    np.testing.assert_allclose(weights(np.diag(norms), alpha), norms ** (-2 * alpha / (1 + alpha)), rtol=1e-7)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_identical_rows(alpha):
    row = np.array([2.0, 0.0, 1.0])  # squared norm 5
    expected = (3 * 5.0) ** (-alpha / (1 + alpha))
    np.testing.assert_allclose(weights(np.tile(row, (3, 1)), alpha), np.full(3, expected), rtol=1e-7)


def test_alpha_zero_is_the_mean():
    jacobian = full_rank(4, 6, seed=0)
    np.testing.assert_allclose(weights(jacobian, 0.0), np.full(4, 0.25))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_solves_the_system_and_every_term_improves(alpha):
    for seed in range(3):
        jacobian = full_rank(4, 9, seed=seed, spread=1.0)
        w = weights(jacobian, alpha)
        improvement = (jacobian @ jacobian.T) @ w
        np.testing.assert_allclose(improvement, w ** (-1 / alpha), rtol=1e-7)
        assert np.all(w > 0) and np.all(improvement > 0)


def test_larger_alpha_favours_the_worst_term_more():
    jacobian = np.array([[3.0, 0.0], [-0.5, 0.4]])
    gains = {}
    for alpha in (0.5, 1.0, 4.0):
        d = jacobian.T @ weights(jacobian, alpha)
        gains[alpha] = jacobian @ d / np.linalg.norm(d)
    # The normalized improvement of the term with the small gradient grows with alpha.
    assert gains[0.5][1] < gains[1.0][1] < gains[4.0][1]


def test_scaling_the_gradients():
    jacobian = full_rank(3, 5, seed=1)
    alpha, scale = 2.0, 10.0
    d = FairGrad(alpha=alpha).aggregate(jacobian).numpy()
    scaled = FairGrad(alpha=alpha).aggregate(scale * jacobian).numpy()
    np.testing.assert_allclose(scaled, scale ** ((1 - alpha) / (1 + alpha)) * d, rtol=1e-7)


def test_a_zero_gradient_gets_weight_zero():
    np.testing.assert_allclose(weights(np.diag([2.0, 0.0]), 1.0), [0.5, 0.0], rtol=1e-8)


def test_config_round_trip():
    balancer = FairGrad(alpha=2.0, update_every=4)
    config = balancer.get_config()
    assert config["alpha"] == 2.0 and config["update_every"] == 4
    assert FairGrad.from_config(config).get_config() == config


@pytest.mark.parametrize("value", [-0.5, float("inf")])
def test_alpha_is_checked(value):
    assert_refused(FairGrad, {"alpha": value}, "alpha")
