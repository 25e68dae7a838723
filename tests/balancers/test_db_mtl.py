"""Tests of `keras_balance.balancers.db_mtl.DBMTL`: hand values of both balancings and the moving average."""

import numpy as np
import pytest
from helpers import assert_refused

from keras_balance.balancers import DBMTL


def test_log_gradients_scaled_to_the_largest_norm():
    # Log-gradients g_i / L_i: [4, 0] and [0, 1]; the second is scaled up to norm 4.
    jacobian = np.array([[2.0, 0.0], [0.0, 3.0]])
    balancer = DBMTL(beta=0.0, epsilon=1e-12)
    np.testing.assert_allclose(balancer.aggregate(jacobian, [0.5, 3.0]).numpy(), [4.0, 4.0], rtol=1e-9)
    # Logged: alpha_i (1 - beta) / L_i = [1 / 0.5, 4 / 3].
    np.testing.assert_allclose(balancer.term_weights.numpy(), [2.0, 4.0 / 3.0], rtol=1e-6)


def test_loss_scale_does_not_matter():
    rng = np.random.default_rng(0)
    jacobian, losses = rng.normal(size=(3, 5)), rng.uniform(0.5, 2.0, 3)
    scaled = np.array([1e3, 1.0, 1e-2])
    d = DBMTL(epsilon=1e-12).aggregate(jacobian, losses).numpy()
    # Multiplying a term by c multiplies its gradient and its loss by c: log-gradients are unchanged.
    d_scaled = DBMTL(epsilon=1e-12).aggregate(jacobian * scaled[:, None], losses * scaled).numpy()
    np.testing.assert_allclose(d_scaled, d, rtol=1e-5)


def test_moving_average_by_hand():
    beta, sigma = 0.5, 1.0
    balancer = DBMTL(beta=beta, beta_sigma=sigma, epsilon=1e-12)
    steps = [np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 1.0], [0.0, -2.0]])]
    average = np.zeros((2, 2))
    for t, jacobian in enumerate(steps, start=1):
        b = beta / t**sigma
        average = b * average + (1 - b) * jacobian  # losses 1: log-gradients = gradients
        norms = np.linalg.norm(average, axis=1)
        expected = (norms.max() / norms) @ average
        np.testing.assert_allclose(balancer.aggregate(jacobian, [1.0, 1.0]).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(balancer.gradient_average.numpy(), average, rtol=1e-6)
    assert balancer.gradient_average.shape == (2, 2) and balancer.num_columns == 2


def test_state_is_created_for_the_first_jacobian_and_kept_in_the_config():
    balancer = DBMTL()
    balancer.aggregate(np.ones((2, 3)), [1.0, 1.0])
    clone = DBMTL.from_config(balancer.get_config())
    assert clone.get_config()["num_columns"] == 3 and clone.gradient_average.shape == (2, 3)
    with pytest.raises(ValueError, match="3 columns"):
        balancer.aggregate(np.ones((2, 4)), [1.0, 1.0])


def test_needs_the_losses_and_skips_a_negative_one():
    with pytest.raises(ValueError, match="needs the losses"):
        DBMTL().aggregate(np.ones((2, 3)))
    balancer = DBMTL()
    np.testing.assert_array_equal(balancer.aggregate(np.ones((2, 3)), [1.0, -1.0]).numpy(), 0.0)
    assert int(balancer.step.numpy()) == 0 and not balancer.gradient_average.numpy().any()


@pytest.mark.parametrize("arguments, name", [
    (dict(beta=1.0), "beta"), (dict(beta=-0.1), "beta"), (dict(beta_sigma=-1.0), "beta_sigma"),
    (dict(epsilon=0.0), "epsilon"), (dict(update_every=3), "update_every"), (dict(num_columns=0), "num_columns"),
])
def test_bad_arguments_are_refused(arguments, name):
    assert_refused(DBMTL, arguments, name)
