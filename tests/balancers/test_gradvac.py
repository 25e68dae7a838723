"""Hand-computed values and properties of `keras_balance.balancers.GradVac`.

With targets phi_hat, GradVac adds `w g_j` to `g_i'` so that its cosine with
`g_j` becomes phi_hat, `w = ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 -
phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2))`, and moves the target towards
the measured cosine. With zero targets the correction is PCGrad's projection.
"""

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import GradVac, PCGrad


def test_first_step_is_pcgrad_with_the_same_seed():
    jacobian = np.array([[1.0, 0.3, -0.2], [-0.9, 1.0, 0.1], [0.2, -1.0, 0.8]])
    for seed in (0, 1, 2):
        np.testing.assert_allclose(
            GradVac(seed=seed).aggregate(jacobian).numpy(), PCGrad(seed=seed).aggregate(jacobian).numpy(),
            rtol=1e-12,
        )


def test_the_correction_reaches_the_target_cosine():
    balancer = GradVac(beta=0.5, num_terms=2)
    balancer.targets.assign([[0.0, 0.5], [0.5, 0.0]])
    jacobian = np.array([[1.0, 0.0], [0.0, 2.0]])  # cosine 0 < 0.5
    weights = balancer.weigh(jacobian).numpy().astype("float64")
    w12 = 1.0 * 0.5 / (2.0 * np.sqrt(0.75))  # g1' = g1 + w12 g2
    w21 = 2.0 * 0.5 / (1.0 * np.sqrt(0.75))  # g2' = g2 + w21 g1
    np.testing.assert_allclose(weights, [1 + w21, 1 + w12], rtol=1e-6)
    adjusted = jacobian[0] + w12 * jacobian[1]
    np.testing.assert_allclose(adjusted @ jacobian[1] / (np.linalg.norm(adjusted) * 2.0), 0.5, rtol=1e-12)
    # The targets move towards the cosine measured before the correction (0).
    np.testing.assert_allclose(balancer.targets.numpy(), [[0.0, 0.25], [0.25, 0.0]])


def test_targets_follow_the_moving_average():
    jacobian = np.array([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt(2) > 0: no correction
    balancer = GradVac(beta=0.1)
    for step in range(1, 4):
        np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), jacobian.sum(axis=0), rtol=1e-12)
        expected = (1 - 0.9**step) / np.sqrt(2.0)
        np.testing.assert_allclose(balancer.targets.numpy()[0, 1], expected, rtol=1e-6)


def test_seeded_orders_repeat_and_differ_between_seeds():
    jacobians = [full_rank(4, 6, seed=s) for s in range(3)]

    def run(seed):
        balancer = GradVac(seed=seed)
        return np.array([balancer.aggregate(j).numpy() for j in jacobians])

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.allclose(run(5), run(6))


def test_default_is_scale_free_and_epsilon_is_not():
    jacobian = np.array([[1.0, 0.2], [-0.7, 1.0]])
    d = GradVac().aggregate(jacobian).numpy()
    np.testing.assert_allclose(GradVac().aggregate(1e-6 * jacobian).numpy(), 1e-6 * d, rtol=1e-9)
    shrunk = GradVac(epsilon=1e-8).aggregate(1e-6 * jacobian).numpy()
    assert not np.allclose(shrunk, 1e-6 * d, rtol=1e-3)


def test_a_target_of_one_adds_nothing():
    balancer = GradVac(num_terms=2)
    balancer.targets.assign([[0.0, 1.0], [1.0, 0.0]])
    jacobian = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(balancer.aggregate(jacobian).numpy(), [1.0, 1.0])


def test_config_round_trip():
    balancer = GradVac(beta=0.01, epsilon=1e-8, seed=3)
    config = balancer.get_config()
    assert (config["beta"], config["epsilon"], config["seed"]) == (0.01, 1e-8, 3)
    assert GradVac.from_config(config).get_config() == config


@pytest.mark.parametrize("name, value", [("beta", 1.5), ("beta", -0.1), ("epsilon", -1.0)])
def test_arguments_are_checked(name, value):
    assert_refused(GradVac, {name: value}, name)
