"""Tests of `keras_balance.balancers.gradient_normalization.GradientNormalization`.

The reference below is written from the formula, in float64 with plain loops:

    d = sum_i s * r_i^alpha * g_i / (||g_i|| + eps * max_j ||g_j||)
    s = 1 ("none") or mean_j ||g_j|| ("mean_norm")
    L~_i = L_i / L_i(0) (L_i if L_i(0) = 0),  r_i = max(L~_i / mean_j L~_j, 0)
"""

import math

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import GradientNormalization

# -- independent reference ---------------------------------------------------------------


def ref_weights(jacobian, scale="none", alpha=None, losses=None, initial=None, epsilon=1e-12):
    norms = [math.sqrt(sum(float(x) ** 2 for x in row)) for row in jacobian]
    guard = epsilon * max(norms)
    weights = [1.0 / (n + guard) if n + guard > 0 else 0.0 for n in norms]
    if scale == "mean_norm":
        mean = sum(norms) / len(norms)
        weights = [w * mean for w in weights]
    if alpha is not None:
        ratios = [
            float(l) / float(l0) if float(l0) > 0 else float(l) for l, l0 in zip(losses, initial)
        ]
        mean = sum(ratios) / len(ratios)
        rates = [max(r / mean if mean > 0 else r, 0.0) for r in ratios]
        weights = [w * r**alpha for w, r in zip(weights, rates)]
    return np.array(weights)


# -- hand values and the reference -----------------------------------------------------------


def test_hand_example():
    # Norms 5 and 0.5: d = (3, 4) / 5 + (0, 0.5) / 0.5 = (0.6, 1.8).
    jacobian = np.array([[3.0, 4.0], [0.0, 0.5]])
    np.testing.assert_allclose(GradientNormalization().aggregate(jacobian).numpy(), [0.6, 1.8], rtol=1e-10)
    # Keeping the step size: times the mean norm 2.75.
    np.testing.assert_allclose(
        GradientNormalization(scale="mean_norm").aggregate(jacobian).numpy(), [1.65, 4.95], rtol=1e-10
    )


@pytest.mark.parametrize("scale", ["none", "mean_norm"])
def test_matches_reference(scale):
    for seed in range(4):
        jacobian = full_rank(4, 6, seed, spread=2.0)
        weights = GradientNormalization(scale=scale).weigh(jacobian).numpy()
        np.testing.assert_allclose(weights, ref_weights(jacobian, scale), rtol=1e-6)


@pytest.mark.parametrize("scale", ["none", "mean_norm"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.5])
def test_training_rates_match_reference(scale, alpha):
    rng = np.random.default_rng(1)
    balancer = GradientNormalization(scale=scale, alpha=alpha)
    sequence = rng.uniform(0.1, 3.0, size=(6, 3))
    sequence[:, 2] *= 1e4  # the rates do not depend on the scale of a term
    for t, losses in enumerate(sequence):
        jacobian = full_rank(3, 5, seed=t, spread=2.0)
        weights = balancer.weigh(jacobian, losses).numpy()
        expected = ref_weights(jacobian, scale, alpha, losses, sequence[0])
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
    np.testing.assert_allclose(balancer.initial_losses.numpy(), sequence[0], rtol=1e-6)


def test_rates_favour_the_lagging_term():
    # Term 0 went from 1 to 0.1, term 1 from 1 to 0.9: r = (0.2, 1.8).
    balancer = GradientNormalization(alpha=1.0)
    jacobian = np.eye(2)
    balancer.weigh(jacobian, [1.0, 1.0])
    np.testing.assert_allclose(balancer.weigh(jacobian, [0.1, 0.9]).numpy(), [0.2, 1.8], rtol=1e-6)


def test_zero_initial_and_negative_losses():
    balancer = GradientNormalization(alpha=1.0)
    jacobian = np.eye(3)
    balancer.weigh(jacobian, [0.0, 2.0, 1.0])  # L_0(0) = 0: L~_0 = L_0
    weights = balancer.weigh(jacobian, [0.5, 1.0, -1.0]).numpy()
    expected = ref_weights(jacobian, "none", 1.0, [0.5, 1.0, -1.0], [0.0, 2.0, 1.0])
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights[2] == 0.0  # a negative rate is floored at zero
    assert np.all(np.isfinite(balancer.weigh(jacobian, [0.0, 0.0, 0.0]).numpy()))


def test_alpha_needs_losses():
    balancer = GradientNormalization(alpha=0.5)
    with pytest.raises(ValueError, match="needs the loss values"):
        balancer.aggregate(np.eye(2))
    GradientNormalization().aggregate(np.eye(2))  # without alpha the losses are not needed
    assert GradientNormalization.from_config(GradientNormalization().get_config()).alpha is None


# -- special rows and invariances ------------------------------------------------------------


def test_identical_rows():
    g = np.array([3.0, 0.0, -4.0])
    for k in (2, 5):
        jacobian = np.tile(g, (k, 1))
        plain = GradientNormalization().aggregate(jacobian).numpy()
        np.testing.assert_allclose(plain, k * g / 5.0, rtol=1e-10)
        kept = GradientNormalization(scale="mean_norm").aggregate(jacobian).numpy()
        np.testing.assert_allclose(kept, k * g, rtol=1e-10)


def test_zero_row_contributes_nothing():
    jacobian = np.array([[0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(GradientNormalization().aggregate(jacobian).numpy(), [0.0, 1.0], rtol=1e-10)
    np.testing.assert_allclose(GradientNormalization(epsilon=0.0).aggregate(jacobian).numpy(), [0.0, 1.0])


def test_scale_invariance():
    # The guard is relative: a common scale of the gradients changes nothing.
    jacobian = full_rank(3, 4, seed=9, spread=2.0)
    direction = GradientNormalization().aggregate(jacobian).numpy()
    for scale in (1e-10, 1e10):
        scaled = GradientNormalization().aggregate(scale * jacobian).numpy()
        np.testing.assert_allclose(scaled, direction, rtol=1e-6)


def test_relative_guard_damps_negligible_rows():
    # A row 1e-14 times the largest is not blown up to unit length.
    jacobian = np.array([[1.0, 0.0], [0.0, 1e-14]])
    direction = GradientNormalization(epsilon=1e-12).aggregate(jacobian).numpy()
    np.testing.assert_allclose(direction, [1.0, 1e-14 / (1e-14 + 1e-12)], rtol=1e-9)


def test_invariant_to_rescaling_a_row():
    jacobian = full_rank(3, 4, seed=2, spread=2.0)
    direction = GradientNormalization(epsilon=0.0).aggregate(jacobian).numpy()
    scaled = jacobian * np.array([[1e-8], [1.0], [1e8]])
    other = GradientNormalization(epsilon=0.0).aggregate(scaled).numpy()
    np.testing.assert_allclose(other, direction, rtol=1e-6)


def test_permutation_invariance():
    jacobian = full_rank(5, 6, seed=3, spread=2.0)
    weights = GradientNormalization(scale="mean_norm").weigh(jacobian).numpy()
    order = np.random.default_rng(0).permutation(5)
    np.testing.assert_allclose(
        GradientNormalization(scale="mean_norm").weigh(jacobian[order]).numpy(), weights[order], rtol=1e-12
    )


def test_weights_multiply_every_gradient_of_their_term():
    assert GradientNormalization.weights_all_parameters is True


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"scale": "max_norm"}, "scale"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"epsilon": -1e-12}, "epsilon"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
    ],
)
def test_bad_arguments(kwargs, name):
    assert_refused(GradientNormalization, kwargs, name)


def test_non_numeric_alpha():
    with pytest.raises(TypeError, match="`alpha`"):
        GradientNormalization(alpha="fast")


# -- momentum: jaxpi's moving average -----------------------------------------------------------


def test_momentum_is_a_moving_average_from_one():
    # w <- 0.9 w + 0.1 w_hat from w = 1; norms 5 and 0.5: w_hat = (2.75/5, 2.75/0.5) = (0.55, 5.5).
    balancer = GradientNormalization(scale="mean_norm", momentum=0.9, epsilon=0.0)
    jacobian = np.array([[3.0, 4.0], [0.0, 0.5]])
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [0.955, 1.45], rtol=1e-6)
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [0.9145, 1.855], rtol=1e-6)
    # The direction is J^T w with the averaged weights.
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(),
                               jacobian.T @ [0.87805, 2.2195], rtol=1e-6)


def test_momentum_updates_on_update_steps_only():
    # Held between updates: the average moves once per `update_every` steps.
    balancer = GradientNormalization(scale="mean_norm", momentum=0.5, epsilon=0.0, update_every=2, num_terms=2)
    jacobian = np.array([[3.0, 4.0], [0.0, 0.5]])
    assert bool(balancer.needs_jacobian())
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [0.775, 3.25], rtol=1e-6)
    assert not bool(balancer.needs_jacobian())
    np.testing.assert_allclose(balancer.hold([1.0, 1.0]).numpy(), [0.775, 3.25], rtol=1e-6)
    assert bool(balancer.needs_jacobian())
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [0.6625, 4.375], rtol=1e-6)


def test_momentum_skips_a_non_finite_step():
    balancer = GradientNormalization(scale="mean_norm", momentum=0.9, epsilon=0.0)
    jacobian = np.array([[3.0, 4.0], [0.0, 0.5]])
    first = balancer.weigh(jacobian).numpy()
    np.testing.assert_allclose(balancer.weigh(np.array([[np.nan, 1.0], [0.0, 1.0]])).numpy(), first, rtol=1e-7)
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [0.9145, 1.855], rtol=1e-6)


def test_momentum_round_trips_through_the_config():
    balancer = GradientNormalization(scale="mean_norm", momentum=0.9, update_every=1000)
    copy = GradientNormalization.from_config(balancer.get_config())
    assert (copy.momentum, copy.update_every, copy.scale) == (0.9, 1000, "mean_norm")
    assert GradientNormalization().momentum == 0.0
