"""Tests of `keras_balance.balancers.SoftAdapt` against an independent reference.

The reference below is written from the formula (METHODS.md, section A), in
float64 with plain loops, and does not use the package:

    s_i(t) = (L_i(t) - L_i(t - c + 1)) / (c - 1),  c = min(t + 1, window)
    original:       a_i = exp(beta s_i) / sum_j exp(beta s_j)
    normalized:     s <- s / (sum_j |s_j| + eps), then as original
    loss_weighted:  a_i = L_i exp(beta s_i) / sum_j L_j exp(beta s_j)
    lambda(t) = K a (sum_to_k) or a;  lambda(0) = 1
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused, bad_arguments, random_sequence

from keras_balance.balancers import SoftAdapt

RTOL = 1e-5
ATOL = 1e-6
VARIANTS = ["original", "normalized", "loss_weighted"]

SEQ2 = [[2.0, 1.0], [1.0, 1.0], [0.5, 0.9], [0.0, 0.7]]


# -- independent reference ----------------------------------------------------


def ref_softadapt(sequence, beta, variant="original", window=2, sum_to_k=True, epsilon=1e-12):
    out = []
    seen = []
    for losses in sequence:
        losses = [float(v) for v in losses]
        k = len(losses)
        seen.append(losses)
        count = min(len(seen), window)
        if count < 2:
            out.append([1.0] * k)
            continue
        oldest = seen[-count]
        rates = [(losses[i] - oldest[i]) / (count - 1) for i in range(k)]
        if variant == "normalized":
            total = sum(abs(r) for r in rates) + epsilon
            rates = [r / total for r in rates]
        logits = [beta * r for r in rates]
        if variant == "loss_weighted" and any(v > 0 for v in losses):
            # Plain formula: L_i exp(beta s_i) / sum_j L_j exp(beta s_j).
            top = max(logits)
            terms = [losses[i] * math.exp(logits[i] - top) for i in range(k)]
        else:
            top = max(logits)
            terms = [math.exp(z - top) for z in logits]
        total = sum(terms)
        scale = k if sum_to_k else 1.0
        out.append([scale * v / total for v in terms])
    return np.array(out, dtype=np.float64)


def run(balancer, sequence, fn=None):
    fn = balancer if fn is None else fn
    return np.array([np.asarray(fn(tf.constant(np.asarray(v, np.float32)))) for v in sequence])


# -- hand-computed sequences ---------------------------------------------------------

# K = 2, beta = 1, losses [2, 1], [1, 1], [0.5, 0.9], [0, 0.7].
# 2 * softmax([a, b]) = [2 / (1 + e^(b - a)), 2 / (1 + e^(a - b))].
#   step 0: no rate yet -> [1, 1]
#   step 1: s = [1 - 2, 1 - 1] = [-1, 0]; e^1 = 2.7182818
#           -> [2 / 3.7182818, 2 / 1.3678794] = [0.53788284, 1.46211716]
# original:
#   step 2: s = [-0.5, -0.1], b - a = 0.4, e^0.4 = 1.4918247
#           -> [2 / 2.4918247, ...] = [0.80262468, 1.19737532]
#   step 3: s = [-0.5, -0.2], b - a = 0.3, e^0.3 = 1.3498588
#           -> [2 / 2.3498588, ...] = [0.85111497, 1.14888503]
# normalized (s / sum|s|):
#   step 1: sum|s| = 1, unchanged -> [0.53788284, 1.46211716]
#   step 2: s = [-0.5, -0.1] / 0.6 = [-0.8333333, -0.1666667], b - a = 2/3, e^(2/3) = 1.9477340
#           -> [2 / 2.9477340, ...] = [0.67848726, 1.32151274]
#   step 3: s = [-0.5, -0.2] / 0.7 = [-0.7142857, -0.2857143], b - a = 3/7, e^(3/7) = 1.5350630
#           -> [2 / 2.5350630, ...] = [0.78893503, 1.21106497]
# loss_weighted (L_i e^(s_i)):
#   step 1: L = [1, 1], as original -> [0.53788284, 1.46211716]
#   step 2: [0.5 e^-0.5, 0.9 e^-0.1] = [0.30326533, 0.81435368], sum 1.11761901
#           -> 2 * [0.30326533, 0.81435368] / 1.11761901 = [0.54269895, 1.45730105]
#   step 3: L_0 = 0 -> weight 0: [0, 2]
# window = 3 (original):
#   step 1: two values, s = (L(1) - L(0)) / 1 = [-1, 0] -> [0.53788284, 1.46211716]
#   step 2: s = (L(2) - L(0)) / 2 = [-1.5, -0.1] / 2 = [-0.75, -0.05], b - a = 0.7, e^0.7 = 2.0137527
#           -> [2 / 3.0137527, ...] = [0.66362446, 1.33637554]
#   step 3: s = (L(3) - L(1)) / 2 = [-1, -0.3] / 2 = [-0.5, -0.15], b - a = 0.35, e^0.35 = 1.4190675
#           -> [2 / 2.4190675, ...] = [0.82676484, 1.17323516]
STEP1 = [0.53788284, 1.46211716]
HAND = {
    ("original", 2): [[1.0, 1.0], STEP1, [0.80262468, 1.19737532], [0.85111497, 1.14888503]],
    ("normalized", 2): [[1.0, 1.0], STEP1, [0.67848726, 1.32151274], [0.78893503, 1.21106497]],
    ("loss_weighted", 2): [[1.0, 1.0], STEP1, [0.54269895, 1.45730105], [0.0, 2.0]],
    ("original", 3): [[1.0, 1.0], STEP1, [0.66362446, 1.33637554], [0.82676484, 1.17323516]],
}


@pytest.mark.parametrize("variant, window", sorted(HAND))
def test_hand_computed_values(variant, window):
    balancer = SoftAdapt(beta=1.0, variant=variant, window=window)
    weights = run(balancer, SEQ2)
    np.testing.assert_allclose(weights, HAND[variant, window], rtol=2e-6, atol=1e-7)
    # The reference agrees with the hand computation.
    np.testing.assert_allclose(
        ref_softadapt(SEQ2, 1.0, variant, window), HAND[variant, window], rtol=1e-7, atol=1e-8
    )


def test_sum_to_one_halves_the_hand_values():
    # K = 2: the paper's convention is the default weights divided by K = 2,
    # except at step 0 where the weights are 1 in both conventions.
    weights = run(SoftAdapt(beta=1.0, sum_to_k=False), SEQ2)
    expected = np.array(HAND["original", 2])
    expected[1:] /= 2.0
    np.testing.assert_allclose(weights, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(weights[1:].sum(axis=1), 1.0, rtol=1e-6)


def test_all_zero_losses_fall_back_to_original_in_loss_weighted():
    # Step 4: L = [0, 0], s = [0 - 0, 0 - 0.7] = [0, -0.7]; every loss is 0, so
    # the loss factors drop out: 2 softmax([0, -0.7]) = [2 / (1 + e^-0.7), ...]
    #   = [2 / 1.4965853, 2 / 3.0137527] = [1.33637554, 0.66362446].
    balancer = SoftAdapt(beta=1.0, variant="loss_weighted")
    weights = run(balancer, SEQ2 + [[0.0, 0.0]])
    np.testing.assert_allclose(weights[-1], [1.33637554, 0.66362446], rtol=2e-6)


def test_slow_term_gets_more_weight():
    balancer = SoftAdapt(beta=1.0)
    balancer([2.0, 1.0])
    weights = balancer([1.0, 1.0]).numpy()  # term 0 fell, term 1 did not
    assert weights[1] > weights[0]


# -- reference over longer random sequences -------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("beta, sum_to_k", [(0.1, True), (5.0, False), (-2.0, True)])
def test_matches_reference(variant, window, beta, sum_to_k):
    sequence = random_sequence(25, 3, seed=window)
    balancer = SoftAdapt(beta=beta, variant=variant, window=window, sum_to_k=sum_to_k)
    weights = run(balancer, sequence)
    expected = ref_softadapt(sequence, beta, variant, window, sum_to_k)
    np.testing.assert_allclose(weights, expected, rtol=RTOL, atol=ATOL)
    total = 3.0 if sum_to_k else 1.0
    np.testing.assert_allclose(weights[1:].sum(axis=1), total, rtol=1e-5)
    assert np.all(weights > 0)


def test_defaults():
    balancer = SoftAdapt()
    assert (balancer.beta, balancer.variant, balancer.window, balancer.sum_to_k) == (0.1, "original", 2, True)
    assert balancer.epsilon == 1e-12 and balancer.name == "softadapt"
    sequence = random_sequence(10, 4, seed=1) * 10.0
    np.testing.assert_allclose(run(balancer, sequence), ref_softadapt(sequence, 0.1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("window", [3, 5])
def test_window_state_and_partial_slope(window):
    # While fewer than `window` values exist, the slope spans what is there.
    sequence = random_sequence(8, 2, seed=3)
    balancer = SoftAdapt(beta=1.0, window=window)
    for t, losses in enumerate(sequence):
        balancer(losses)
        count = min(t + 1, window)
        assert int(balancer.history_count.numpy()) == count
        np.testing.assert_allclose(
            balancer.loss_history.numpy()[window - count :], sequence[t + 1 - count : t + 1], rtol=1e-6
        )
        if count >= 2:
            slope = (sequence[t] - sequence[t + 1 - count]) / (count - 1)
            np.testing.assert_allclose(balancer.last_rates.numpy(), slope, rtol=1e-5, atol=1e-6)


def test_beta_zero_gives_equal_weights():
    weights = run(SoftAdapt(beta=0.0), random_sequence(6, 3))
    np.testing.assert_allclose(weights, np.ones((6, 3)), rtol=1e-6)


# -- scale ------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1e6, 1e-3])
def test_normalized_invariant_to_a_common_scale(factor):
    sequence = random_sequence(12, 3, seed=4)
    base = run(SoftAdapt(beta=2.0, variant="normalized"), sequence)
    other = run(SoftAdapt(beta=2.0, variant="normalized"), sequence * factor)
    np.testing.assert_allclose(other, base, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_variant_invariant_to_one_term_scale(variant):
    # Rescaling one term changes its slope relative to the others: the weights
    # move, for every variant (the normalized one only removes a common scale).
    sequence = random_sequence(12, 3, seed=4)
    scaled = sequence.copy()
    scaled[:, 1] *= 1e6
    base = run(SoftAdapt(beta=2.0, variant=variant), sequence)
    other = run(SoftAdapt(beta=2.0, variant=variant), scaled)
    assert not np.allclose(other[1:], base[1:], rtol=1e-3)


# -- finiteness ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sum_to_k", [True, False])
def test_finite_for_extreme_losses(variant, sum_to_k):
    sequence = [
        [0.0, 1.0, 2.0],
        [0.0, 1.0, 2.0],  # all rates 0
        [1e-12, 1e12, 0.0],
        [1e12, 1e-12, 0.0],
        [0.0, 1e12, 1e-12],
        [3e38, 0.0, 1e-12],  # slopes near the float32 limit
        [0.0, 3e38, 3e38],
        [0.0, 0.0, 0.0],
    ]
    for beta in (0.1, 100.0):
        balancer = SoftAdapt(beta=beta, variant=variant, sum_to_k=sum_to_k, window=3)
        weights = run(balancer, sequence)
        assert np.all(np.isfinite(weights)), weights
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights[1:].sum(axis=1), 3.0 if sum_to_k else 1.0, rtol=1e-5)


def test_loss_weighted_zero_loss_gets_zero_weight():
    balancer = SoftAdapt(beta=1.0, variant="loss_weighted")
    balancer([1.0, 1.0, 1.0])
    weights = balancer([0.0, 1e-12, 1e12]).numpy()
    assert weights[0] == 0.0
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights.sum(), 3.0, rtol=1e-6)


def test_normalized_with_constant_losses_is_uniform():
    weights = run(SoftAdapt(beta=10.0, variant="normalized"), [[1.0, 2.0]] * 3)
    np.testing.assert_array_equal(weights, np.ones((3, 2), np.float32))


# -- arguments -----------------------------------------------------------------------


BAD_ARGUMENTS = {
    "beta": [float("nan"), float("inf"), -float("inf")],
    "epsilon": [-1e-3],
    "variant": ["fancy"],
    "window": [1, 0],
}


@pytest.mark.parametrize("name, value", bad_arguments(BAD_ARGUMENTS))
def test_bad_arguments(name, value):
    assert_refused(SoftAdapt, {name: value}, name)


@pytest.mark.parametrize(
    "name, value", [("beta", "big"), ("window", 2.5), ("window", True), ("sum_to_k", "yes"), ("sum_to_k", 1)]
)
def test_wrong_types(name, value):
    with pytest.raises(TypeError, match=name):
        SoftAdapt(**{name: value})
