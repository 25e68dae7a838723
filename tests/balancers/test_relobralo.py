"""Tests of `keras_balance.balancers.ReLoBRaLo` against an independent reference.

The reference below is written from the formula (METHODS.md, section A), in
float64 with plain loops, and does not use the package:

    bal_i(t, t') = K * softmax_i(L_i(t) / (T * L_i(t') + eps))
    w(0) = 1;  w(1) = bal(1, 0)
    w(t) = alpha * [rho_t * w(t-1) + (1 - rho_t) * bal(t, 0)]
           + (1 - alpha) * bal(t, t-1)                       (t >= 2)
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused, bad_arguments, random_sequence

from keras_balance.balancers import ReLoBRaLo

# float32 package versus float64 reference.
RTOL = 1e-5
ATOL = 1e-6

# Fixed 5-step sequences with K = 2 and K = 3 (every term positive).
SEQ2 = [[2.0, 1.0], [1.0, 1.0], [0.5, 0.9], [0.4, 0.7], [0.1, 0.65]]
SEQ3 = [
    [3.0, 1.0, 0.5],
    [2.0, 0.9, 0.45],
    [1.5, 0.5, 0.5],
    [0.7, 0.45, 0.4],
    [0.6, 0.2, 0.35],
]


# -- independent reference ----------------------------------------------------


def ref_balance(losses, reference, temperature, epsilon):
    """K * softmax_i(L_i / (T * ref_i + eps)) in float64 with plain loops."""
    k = len(losses)
    ratios = [float(losses[i]) / (temperature * float(reference[i]) + epsilon) for i in range(k)]
    top = max(ratios)
    exps = [math.exp(r - top) for r in ratios]
    total = sum(exps)
    return [k * e / total for e in exps]


def ref_relobralo(sequence, alpha, temperature, draws, epsilon=1e-12):
    """Weights for every step; `draws[t]` is rho(t), used only from t = 2."""
    out = []
    weights = initial = previous = None
    for t, losses in enumerate(sequence):
        losses = [float(v) for v in losses]
        k = len(losses)
        if t == 0:
            weights = [1.0] * k
            initial = losses
        elif t == 1:
            weights = ref_balance(losses, initial, temperature, epsilon)
        else:
            from_initial = ref_balance(losses, initial, temperature, epsilon)
            from_previous = ref_balance(losses, previous, temperature, epsilon)
            r = float(draws[t])
            weights = [
                alpha * (r * weights[i] + (1.0 - r) * from_initial[i])
                + (1.0 - alpha) * from_previous[i]
                for i in range(k)
            ]
        previous = losses
        out.append(weights)
    return np.array(out, dtype=np.float64)


def run(balancer, sequence, fn=None):
    """Feed `sequence`; return (weights per step, rho(t) draw per step)."""
    fn = balancer if fn is None else fn
    weights, draws = [], []
    for losses in sequence:
        weights.append(np.asarray(fn(tf.constant(np.asarray(losses, np.float32)))))
        draws.append(float(balancer.last_lookback.numpy()))
    return np.array(weights), np.array(draws)


# -- formula --------------------------------------------------------------------


@pytest.mark.parametrize("sequence", [SEQ2, SEQ3], ids=["K2", "K3"])
@pytest.mark.parametrize(
    "alpha, temperature", [(0.5, 1.0), (0.999, 0.1), (0.9, 0.5)], ids=["a.5-T1", "default", "a.9-T.5"]
)
@pytest.mark.parametrize("rho", [1.0, 0.0])
def test_matches_reference(sequence, alpha, temperature, rho):
    balancer = ReLoBRaLo(alpha=alpha, temperature=temperature, rho=rho, seed=0)
    weights, draws = run(balancer, sequence)
    # rho = 1 never looks back, rho = 0 always does (from step 2 on).
    expected_draws = [1.0, 1.0] + [rho] * (len(sequence) - 2)
    np.testing.assert_array_equal(draws, expected_draws)
    expected = ref_relobralo(sequence, alpha, temperature, expected_draws)
    np.testing.assert_allclose(weights, expected, rtol=RTOL, atol=ATOL)


def test_defaults_match_reference():
    # The defaults (alpha 0.999, T 0.1) with rho = 1 give the reference values.
    balancer = ReLoBRaLo(rho=1.0)
    assert (balancer.alpha, balancer.temperature, balancer.rho) == (0.999, 0.1, 1.0)
    weights, _ = run(balancer, SEQ3)
    np.testing.assert_allclose(weights, ref_relobralo(SEQ3, 0.999, 0.1, [1.0] * 5), rtol=RTOL, atol=ATOL)


# Hand computation, K = 2, losses [2, 1], [1, 1], [0.5, 0.9], alpha = 0.5, rho = 1,
# 2 * softmax([a, b]) = [2 / (1 + e^(b - a)), 2 / (1 + e^(a - b))]; eps is negligible.
#   T = 1:
#     step 0: [1, 1]
#     step 1: bal(1, 0), ratios [1/2, 1/1] = [0.5, 1.0]
#             -> [2 / (1 + e^0.5), 2 / (1 + e^-0.5)] = [2 / 2.6487213, ...]
#             = [0.75508134, 1.24491866]
#     step 2: bal(2, 1), ratios [0.5/1, 0.9/1] = [0.5, 0.9]
#             -> [2 / (1 + e^0.4), ...] = [2 / 2.4918247, ...] = [0.80262468, 1.19737532]
#             w = 0.5 * w(1) + 0.5 * bal(2, 1)
#               = [0.5 * (0.75508134 + 0.80262468), 0.5 * (1.24491866 + 1.19737532)]
#               = [0.77885301, 1.22114699]
#   T = 0.1:
#     step 1: ratios [1 / 0.2, 1 / 0.1] = [5, 10]
#             -> [2 / (1 + e^5), ...] = [2 / 149.4131591, ...] = [0.01338570, 1.98661430]
#     step 2: ratios [0.5 / 0.1, 0.9 / 0.1] = [5, 9]
#             -> [2 / (1 + e^4), ...] = [2 / 55.5981500, ...] = [0.03597242, 1.96402758]
#             w = [0.5 * (0.01338570 + 0.03597242), 0.5 * (1.98661430 + 1.96402758)]
#               = [0.02467906, 1.97532094]
HAND = {
    1.0: [[1.0, 1.0], [0.75508134, 1.24491866], [0.77885301, 1.22114699]],
    0.1: [[1.0, 1.0], [0.01338570, 1.98661430], [0.02467906, 1.97532094]],
}


@pytest.mark.parametrize("temperature", sorted(HAND))
def test_hand_computed_values(temperature):
    balancer = ReLoBRaLo(alpha=0.5, temperature=temperature, rho=1.0)
    weights, _ = run(balancer, [[2.0, 1.0], [1.0, 1.0], [0.5, 0.9]])
    np.testing.assert_allclose(weights, HAND[temperature], rtol=2e-6, atol=1e-7)
    # The reference implementation agrees with the hand computation.
    np.testing.assert_allclose(
        ref_relobralo([[2.0, 1.0], [1.0, 1.0], [0.5, 0.9]], 0.5, temperature, [1.0] * 3),
        HAND[temperature],
        rtol=1e-7,
        atol=1e-8,
    )


def test_progress_raises_weight_of_slow_term():
    balancer = ReLoBRaLo(rho=1.0)
    balancer([2.0, 1.0])
    weights = balancer([1.0, 1.0]).numpy()  # term 0 halved, term 1 did not move
    assert weights[1] > weights[0]


# -- step 0 / step 1 / invariants -------------------------------------------------


@pytest.mark.parametrize("num_terms", [None, 3])
def test_step0_ones_and_step1_balance(num_terms):
    balancer = ReLoBRaLo(rho=0.5, seed=1, temperature=0.5, num_terms=num_terms)
    first = balancer(tf.constant(SEQ3[0]))
    np.testing.assert_array_equal(first.numpy(), np.ones(3, np.float32))
    assert int(balancer.step.numpy()) == 1
    np.testing.assert_array_equal(balancer.initial_losses.numpy(), np.float32(SEQ3[0]))
    np.testing.assert_array_equal(balancer.previous_losses.numpy(), np.float32(SEQ3[0]))

    second = balancer(tf.constant(SEQ3[1])).numpy()
    expected = ref_balance(SEQ3[1], SEQ3[0], 0.5, 1e-12)
    np.testing.assert_allclose(second, expected, rtol=RTOL, atol=ATOL)
    assert float(balancer.last_lookback.numpy()) == 1.0
    assert int(balancer.step.numpy()) == 2
    # Initial losses stay at L(0); previous losses follow.
    np.testing.assert_array_equal(balancer.initial_losses.numpy(), np.float32(SEQ3[0]))
    np.testing.assert_array_equal(balancer.previous_losses.numpy(), np.float32(SEQ3[1]))
    np.testing.assert_array_equal(balancer.term_weights.numpy(), second)


@pytest.mark.parametrize("alpha, temperature, rho", [(0.999, 0.1, 0.99), (0.5, 1.0, 0.5), (0.0, 0.3, 0.0)])
def test_weights_positive_and_sum_to_k(alpha, temperature, rho):
    sequence = random_sequence(20, 4, seed=2)
    weights, _ = run(ReLoBRaLo(alpha=alpha, temperature=temperature, rho=rho, seed=5), sequence)
    assert weights.shape == (20, 4)
    np.testing.assert_array_equal(weights[0], np.ones(4))
    assert np.all(weights[1:] > 0)
    np.testing.assert_allclose(weights[1:].sum(axis=1), 4.0, rtol=1e-5)


@pytest.mark.parametrize("factor", [1e6, 1e-6])
@pytest.mark.parametrize("term", [0, 2])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_scale_invariance(factor, term, temperature):
    # epsilon = 0 makes the formula exactly scale invariant. (The default
    # absolute eps = 1e-12 is not negligible next to T * L = 1e-7, which shifts
    # the weights by ~2e-4 relative; see test_scale_invariance_default_epsilon.)
    sequence = random_sequence(12, 3, seed=3)
    scaled = sequence.copy()
    scaled[:, term] *= factor
    kwargs = dict(temperature=temperature, rho=0.5, seed=11, epsilon=0.0)
    base, base_draws = run(ReLoBRaLo(**kwargs), sequence)
    other, other_draws = run(ReLoBRaLo(**kwargs), scaled)
    np.testing.assert_array_equal(base_draws, other_draws)
    np.testing.assert_allclose(other, base, rtol=1e-5)


@pytest.mark.parametrize(
    "factor, temperature, rtol", [(1e6, 0.1, 1e-5), (1e6, 1.0, 1e-5), (1e-6, 1.0, 1e-5), (1e-6, 0.1, 1e-3)]
)
def test_scale_invariance_default_epsilon(factor, temperature, rtol):
    sequence = random_sequence(12, 3, seed=3)
    scaled = sequence.copy()
    scaled[:, 1] *= factor
    base, _ = run(ReLoBRaLo(temperature=temperature, rho=0.5, seed=11), sequence)
    other, _ = run(ReLoBRaLo(temperature=temperature, rho=0.5, seed=11), scaled)
    np.testing.assert_allclose(other, base, rtol=rtol)


# -- seeded random lookback ----------------------------------------------------------


@pytest.mark.parametrize("alpha, temperature", [(0.9, 1.0), (0.999, 0.1)])
def test_seeded_lookback_matches_reference(alpha, temperature):
    sequence = random_sequence(20, 3, seed=4)
    balancer = ReLoBRaLo(alpha=alpha, temperature=temperature, rho=0.5, seed=7)
    weights, draws = run(balancer, sequence)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_array_equal(draws[:2], [1.0, 1.0])  # no draw before step 2
    assert len(set(draws[2:])) == 2, f"all draws equal: {draws}"
    expected = ref_relobralo(sequence, alpha, temperature, draws)
    np.testing.assert_allclose(weights, expected, rtol=RTOL, atol=ATOL)
    # The draws matter: the deterministic rho = 1 sequence differs.
    assert not np.allclose(weights, ref_relobralo(sequence, alpha, temperature, [1.0] * 20), rtol=1e-3)


def test_same_seed_same_sequence_different_seed_different_draws():
    sequence = random_sequence(20, 2, seed=5)
    w1, d1 = run(ReLoBRaLo(rho=0.5, seed=3), sequence)
    w2, d2 = run(ReLoBRaLo(rho=0.5, seed=3), sequence)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(d1, d2)
    w3, d3 = run(ReLoBRaLo(rho=0.5, seed=4), sequence)
    assert not np.array_equal(d1, d3)
    assert not np.array_equal(w1, w3)


def test_numpy_integer_seed_accepted():
    sequence = random_sequence(10, 2, seed=5)
    w1, _ = run(ReLoBRaLo(rho=0.5, seed=np.int64(3)), sequence)
    w2, _ = run(ReLoBRaLo(rho=0.5, seed=3), sequence)
    np.testing.assert_array_equal(w1, w2)


def test_lookback_frequency():
    steps, rho = 2000, 0.9
    balancer = ReLoBRaLo(rho=rho, seed=0, num_terms=2)
    losses = tf.constant([1.0, 2.0])

    @tf.function
    def many(n):
        draws = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            balancer(losses)
            draws = draws.write(i, balancer.last_lookback.value)
        return draws.stack()

    draws = many(tf.constant(steps)).numpy()
    assert int(balancer.step.numpy()) == steps
    np.testing.assert_array_equal(draws[:2], [1.0, 1.0])
    assert set(np.unique(draws)) == {0.0, 1.0}
    fraction = draws[2:].mean()
    standard_error = math.sqrt(rho * (1 - rho) / (steps - 2))
    assert abs(fraction - rho) < 4 * standard_error, fraction


# -- tf.function / XLA ---------------------------------------------------------------


def test_xla_random_lookback_follows_rule():
    # Under XLA the stateless RNG produces other numbers than the TF kernels
    # (a TensorFlow property), so compare with the reference using the draws
    # actually made, and check seeding is reproducible under XLA.
    sequence = random_sequence(15, 3, seed=6)
    results = []
    for _ in range(2):
        balancer = ReLoBRaLo(rho=0.5, alpha=0.9, temperature=1.0, seed=2, num_terms=3)
        fn = tf.function(lambda losses, b=balancer: b(losses), jit_compile=True)
        results.append(run(balancer, sequence, fn=fn))
    (weights, draws), (weights2, draws2) = results
    assert len(set(draws[2:])) == 2
    np.testing.assert_allclose(weights, ref_relobralo(sequence, 0.9, 1.0, draws), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(draws, draws2)
    np.testing.assert_array_equal(weights, weights2)


# -- NaN policy ------------------------------------------------------------------


def test_skip_policy_at_step0_keeps_initial_losses_from_first_finite_step():
    balancer = ReLoBRaLo(rho=1.0, num_terms=2)
    balancer([float("nan"), 1.0])
    balancer([2.0, 1.0])
    np.testing.assert_array_equal(balancer.initial_losses.numpy(), [2.0, 1.0])
    weights = balancer([1.0, 1.0]).numpy()
    np.testing.assert_allclose(weights, ref_balance([1.0, 1.0], [2.0, 1.0], 0.1, 1e-12), rtol=RTOL, atol=ATOL)


# -- arguments -----------------------------------------------------------------------


BAD_ARGUMENTS = {
    "temperature": [0.0, -1.0, float("nan"), float("inf")],
    "alpha": [-0.1, 1.5, float("nan")],
    "rho": [-0.1, 1.5, float("nan")],
    "epsilon": [-1e-3],
}


@pytest.mark.parametrize("name, value", bad_arguments(BAD_ARGUMENTS))
def test_out_of_range_arguments(name, value):
    assert_refused(ReLoBRaLo, {name: value}, name)


@pytest.mark.parametrize("name", ["alpha", "temperature", "rho"])
def test_non_numeric_arguments(name):
    with pytest.raises(TypeError, match=name):
        ReLoBRaLo(**{name: "high"})


@pytest.mark.parametrize("seed", [1.5, "3", True, [1]])
def test_bad_seed(seed):
    with pytest.raises(TypeError, match="seed"):
        ReLoBRaLo(seed=seed)
