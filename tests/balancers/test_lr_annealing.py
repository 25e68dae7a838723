"""Tests of `LRAnnealing` against values computed by hand from the formula.

The paper's formula (`convention="paper"`):

    lambda_hat_i = max|g_r| / mean|g_i|            (mode "max")
    lambda_hat_i = mean|g_r| / mean|g_i|           (mode "mean")
    lambda_i <- s * lambda_i + (1 - s) * lambda_hat_i,   lambda_r = 1

The authors' code (`convention="authors"`, the default): the statistics of
the weighted term's gradient, lambda_i g_i, taken per layer (max over layers
of each layer's max |g_r|, mean over layers of each layer's mean |g_i|).
"""

import numpy as np
import pytest

from keras_balance.balancers import LRAnnealing

J = np.array([[4.0, -2.0, 0.0, 2.0], [0.5, -0.5, 1.0, 0.0], [0.0, 0.0, 0.0, -8.0]])
# |g_0|: max 4, mean 2;  mean|g_1| = 0.5;  mean|g_2| = 2.


@pytest.mark.parametrize("mode, expected", [("max", [1.0, 8.0, 2.0]), ("mean", [1.0, 4.0, 1.0])])
def test_hand_values_without_smoothing(mode, expected):
    balancer = LRAnnealing(smoothing=0.0, mode=mode, convention="paper")
    np.testing.assert_allclose(balancer.weigh(J).numpy(), expected, rtol=1e-6)
    # The direction is J^T lambda.
    balancer = LRAnnealing(smoothing=0.0, mode=mode, convention="paper")
    np.testing.assert_allclose(balancer.aggregate(J).numpy(), J.T @ np.array(expected), rtol=1e-6)


def test_moving_average_over_updates():
    balancer = LRAnnealing(smoothing=0.9, mode="max", update_every=1, convention="paper")
    first = balancer.weigh(J).numpy()
    np.testing.assert_allclose(first, [1.0, 0.9 + 0.1 * 8.0, 0.9 + 0.1 * 2.0], rtol=1e-6)
    second = balancer.weigh(J).numpy()
    np.testing.assert_allclose(second, [1.0, 0.9 * 1.7 + 0.8, 0.9 * 1.1 + 0.2], rtol=1e-6)


def test_reference_term_and_zero_gradient():
    balancer = LRAnnealing(smoothing=0.0, mode="max", reference=2)
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
        weights = LRAnnealing(smoothing=0.0, mode="max", convention="paper").weigh(J * scale).numpy()
        np.testing.assert_allclose(weights, [1.0, 8.0, 2.0], rtol=1e-6)


def test_authors_convention_weighs_the_statistics_of_the_weighted_term():
    """lambda_hat_i = max|g_r| / (lambda_i mean|g_i|): the first update is the paper's, the next ones are not."""
    balancer = LRAnnealing(smoothing=0.9, mode="max", update_every=1)
    assert balancer.convention == "authors"
    first = balancer.weigh(J).numpy()
    np.testing.assert_allclose(first, [1.0, 0.9 + 0.1 * 8.0, 0.9 + 0.1 * 2.0], rtol=1e-6)
    second = balancer.weigh(J).numpy()
    # lambda_1 = 1.7: the weighted gradient's mean is 1.7 * 0.5; lambda_2 = 1.1: 1.1 * 2.
    np.testing.assert_allclose(second, [1.0, 0.9 * 1.7 + 0.1 * 4.0 / (1.7 * 0.5), 0.9 * 1.1 + 0.1 * 4.0 / (1.1 * 2.0)],
                               rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-10, 1.0, 1e10])
def test_authors_fixed_point_is_the_square_root_of_the_papers(scale):
    """At the fixed point lambda = max|g_r| / (lambda mean|g_i|), so lambda = sqrt(8) and sqrt(2) here.

    Scaling the whole Jacobian leaves the weights alone.
    """
    balancer = LRAnnealing(smoothing=0.9, mode="max", update_every=1)
    for _ in range(400):
        weights = balancer.weigh(J * scale).numpy()
    np.testing.assert_allclose(weights, [1.0, np.sqrt(8.0), np.sqrt(2.0)], rtol=1e-5)
    paper = LRAnnealing(smoothing=0.9, mode="max", update_every=1, convention="paper")
    for _ in range(400):
        weights = paper.weigh(J * scale).numpy()
    np.testing.assert_allclose(weights, [1.0, 8.0, 2.0], rtol=1e-5)


@pytest.mark.parametrize("mode, expected", [("max", [1.0, 12.0, 1.0]), ("mean", [1.0, 6.0, 0.5])])
def test_per_layer_statistics(mode, expected):
    """Layers of 3 and 1 columns: every layer counts alike in the means, whatever its size.

    |g_0|: layer A (4, 2, 0), layer B (2): max 4 (both modes' numerator: max 4, mean of means (2 + 2) / 2 = 2).
    |g_1|: A (0.5, 0.5, 1) mean 2/3, B (0) mean 0: mean over layers 1/3 (globally 0.5).
    |g_2|: A (0, 0, 0), B (8): mean over layers 4 (globally 2).
    """
    balancer = LRAnnealing(smoothing=0.0, mode=mode)
    np.testing.assert_allclose(balancer.weigh(J, segments=(3, 1)).numpy(), expected, rtol=1e-6)
    # One block: the global statistics.
    global_weights = LRAnnealing(smoothing=0.0, mode=mode).weigh(J).numpy()
    np.testing.assert_allclose(global_weights, [1.0, 8.0, 2.0] if mode == "max" else [1.0, 4.0, 1.0], rtol=1e-6)
    # The paper's convention has no layers.
    paper = LRAnnealing(smoothing=0.0, mode=mode, convention="paper")
    np.testing.assert_allclose(paper.weigh(J, segments=(3, 1)).numpy(), global_weights, rtol=1e-6)


@pytest.mark.parametrize("segments", [(3, 2), (4, 0), (2, 2.5), "ab", ()])
def test_bad_segments(segments):
    with pytest.raises(ValueError, match="`segments` must be positive integers.*4 columns"):
        LRAnnealing().weigh(J, segments=segments)


def test_scope_follows_the_convention():
    assert LRAnnealing().jacobian_scope == "kernels"
    assert LRAnnealing(convention="paper").jacobian_scope == "shared"
    restored = LRAnnealing.from_config(LRAnnealing(convention="paper").get_config())
    assert restored.convention == "paper" and restored.jacobian_scope == "shared"


@pytest.mark.parametrize(
    "kwargs, name",
    [({"smoothing": 1.5}, "smoothing"), ({"mode": "median"}, "mode"), ({"update_every": 0}, "update_every"),
     ({"reference": -1}, "reference"), ({"update_every": 2.5}, "update_every"),
     ({"convention": "wang"}, "convention")],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LRAnnealing(**kwargs)


def test_reference_out_of_range():
    with pytest.raises(ValueError, match="reference"):
        LRAnnealing(reference=3).build_for(2)


def test_defaults():
    """The authors' statistics with the mean numerator (see the class docstring for why)."""
    balancer = LRAnnealing()
    assert (balancer.convention, balancer.mode, balancer.smoothing, balancer.update_every) == ("authors", "mean", 0.9, 10)
    # mean|g_0| = 2 over mean|g_1| = 0.5 and mean|g_2| = 2.
    np.testing.assert_allclose(LRAnnealing(smoothing=0.0).weigh(J).numpy(), [1.0, 4.0, 1.0], rtol=1e-6)
