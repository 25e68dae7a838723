"""Tests of `keras_balance.balancers.means.GeneralizedMean` against an independent reference.

The reference below is written from the formula (METHODS.md, section A), in
float64 with plain loops, and does not use the package:

    M(gamma) = ((1/K) sum_i L_i^gamma)^(1/gamma)      gamma != 0, finite
    M(0)     = exp((1/K) sum_i log L_i)
    M(+inf)  = max_i L_i,  M(-inf) = min_i L_i
    w_i      = dM/dL_i = (1/K) (L_i / M)^(gamma - 1)   (one-hot for +/-inf)

and its weights are themselves checked against central finite differences
of M.
"""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused, random_sequence

from keras_balance.balancers import GeneralizedMean

INF = float("inf")
RTOL = 1e-5  # float32 package versus float64 reference
GAMMAS = [-INF, -5.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 7.0, INF]


# Losses spread over orders of magnitude: uniform in log space.
log_sequence = functools.partial(random_sequence, low=0.05, high=20.0, log_uniform=True)


# -- independent reference ----------------------------------------------------------


def ref_mean(losses, gamma):
    losses = [float(v) for v in losses]
    k = len(losses)
    if gamma == INF:
        return max(losses)
    if gamma == -INF:
        return min(losses)
    if gamma == 0:
        return math.exp(sum(math.log(v) for v in losses) / k)
    try:
        return (sum(v**gamma for v in losses) / k) ** (1.0 / gamma)
    except OverflowError:  # e.g. (1e6)^200: the same in log space, float64
        logs = [gamma * math.log(v) for v in losses]
        top = max(logs)
        return math.exp((top + math.log(sum(math.exp(a - top) for a in logs) / k)) / gamma)


def ref_weights(losses, gamma):
    losses = [float(v) for v in losses]
    k = len(losses)
    mean = ref_mean(losses, gamma)
    if math.isinf(gamma):
        hits = [1.0 if v == mean else 0.0 for v in losses]
        return [h / sum(hits) for h in hits]
    return [(v / mean) ** (gamma - 1.0) / k for v in losses]


def finite_difference_weights(losses, gamma, step=1e-6):
    out = []
    for i in range(len(losses)):
        up = [float(v) for v in losses]
        down = list(up)
        up[i] *= 1 + step
        down[i] *= 1 - step
        out.append((ref_mean(up, gamma) - ref_mean(down, gamma)) / (2 * step * losses[i]))
    return out


def run(balancer, sequence, fn=None):
    """Feed `sequence` through `combine`; return (totals, weights) per step."""
    fn = balancer.combine if fn is None else fn
    totals, weights = [], []
    for losses in sequence:
        total, w = fn(tf.constant(np.asarray(losses, np.float32)))
        totals.append(float(total))
        weights.append(np.asarray(w))
    return np.array(totals), np.array(weights)


@pytest.mark.parametrize("gamma", [g for g in GAMMAS if not math.isinf(g)])
def test_reference_weights_are_the_derivatives(gamma):
    for losses in log_sequence(5, 3, seed=1):
        np.testing.assert_allclose(
            ref_weights(losses, gamma), finite_difference_weights(losses, gamma), rtol=1e-6, atol=1e-9
        )


# -- formula ---------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("num_terms", [2, 4])
def test_matches_reference_on_a_random_sequence(gamma, num_terms):
    sequence = log_sequence(25, num_terms, seed=num_terms)
    sequence = sequence.astype(np.float32).astype(np.float64)  # what the balancer sees
    balancer = GeneralizedMean(gamma=gamma)
    totals, weights = run(balancer, sequence)
    np.testing.assert_allclose(totals, [ref_mean(l, gamma) for l in sequence], rtol=RTOL)
    np.testing.assert_allclose(weights, [ref_weights(l, gamma) for l in sequence], rtol=RTOL, atol=1e-7)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), weights[-1])


# Hand computation, K = 2, the losses [3, 4], [1, 4], [2, 2], then a NaN step.
#   gamma = 2:  M = sqrt((L_1^2 + L_2^2) / 2),  w_i = (1/2) L_i / M
#     [3, 4]: M = sqrt(25 / 2) = 3.53553391;  w = [1.5, 2] / 3.53553391 = [0.42426407, 0.56568542]
#     [1, 4]: M = sqrt(17 / 2) = 2.91547595;  w = [0.5, 2] / 2.91547595 = [0.17149859, 0.68599434]
#   gamma = 0:  M = sqrt(L_1 L_2),  w_i = M / (2 L_i)
#     [3, 4]: M = sqrt(12) = 3.46410162;  w = [3.46410162 / 6, 3.46410162 / 8] = [0.57735027, 0.43301270]
#     [1, 4]: M = 2;  w = [2 / 2, 2 / 8] = [1, 0.25]
#   gamma = -1: M = 2 / (1/L_1 + 1/L_2),  w_i = (1/2) (M / L_i)^2
#     [3, 4]: M = 2 / (7/12) = 24/7 = 3.42857143;  w = [(8/7)^2, (6/7)^2] / 2 = [0.65306122, 0.36734694]
#     [1, 4]: M = 2 / 1.25 = 1.6;  w = [1.6^2, 0.4^2] / 2 = [1.28, 0.08]
#   gamma = 1:  M = (L_1 + L_2) / 2 = 3.5, 2.5;  w = [0.5, 0.5]
#   gamma = +inf: M = max = 4, 4;  w = [0, 1].   gamma = -inf: M = min = 3, 1;  w = [1, 0]
#   every gamma at [2, 2]: M = 2, w = [0.5, 0.5] (ties split evenly for +/-inf).
#   [NaN, 1]: the weights of the previous step, [0.5, 0.5]; the total is the
#     mean of the finite terms alone, i.e. 1.
HAND = {
    2.0: ([3.53553391, 2.91547595], [[0.42426407, 0.56568542], [0.17149859, 0.68599434]]),
    0.0: ([3.46410162, 2.0], [[0.57735027, 0.43301270], [1.0, 0.25]]),
    -1.0: ([3.42857143, 1.6], [[0.65306122, 0.36734694], [1.28, 0.08]]),
    1.0: ([3.5, 2.5], [[0.5, 0.5], [0.5, 0.5]]),
    INF: ([4.0, 4.0], [[0.0, 1.0], [0.0, 1.0]]),
    -INF: ([3.0, 1.0], [[1.0, 0.0], [1.0, 0.0]]),
}


@pytest.mark.parametrize("gamma", sorted(HAND))
def test_hand_computed_values(gamma):
    sequence = [[3.0, 4.0], [1.0, 4.0], [2.0, 2.0], [float("nan"), 1.0]]
    totals, weights = run(GeneralizedMean(gamma=gamma), sequence)
    hand_totals, hand_weights = HAND[gamma]
    np.testing.assert_allclose(totals, hand_totals + [2.0, 1.0], rtol=2e-7)
    np.testing.assert_allclose(weights, hand_weights + [[0.5, 0.5], [0.5, 0.5]], rtol=2e-6, atol=1e-7)
    # The reference agrees with the hand computation.
    for losses, total, w in zip(sequence[:2], hand_totals, hand_weights):
        assert ref_mean(losses, gamma) == pytest.approx(total, rel=1e-8)
        np.testing.assert_allclose(ref_weights(losses, gamma), w, rtol=1e-7)


def test_gamma_one_is_the_arithmetic_mean():
    for losses in log_sequence(10, 5, seed=2, low=1e-3, high=1e3).astype(np.float32):
        total, weights = GeneralizedMean(gamma=1.0).combine(losses)
        np.testing.assert_allclose(float(total), np.mean(losses.astype(np.float64)), rtol=1e-6)
        np.testing.assert_array_equal(weights.numpy(), np.full(5, 0.2, np.float32))


@pytest.mark.parametrize(
    "losses",
    [[1.0, 4.0], [2.0, 8.0, 0.5], [1e-10, 1e10], [1e-11, 1e12, 3e30], [1e30, 1e35], [7.0, 7.0, 7.0]],
)
def test_gamma_zero_is_the_geometric_mean(losses):
    balancer = GeneralizedMean(gamma=0.0)
    total, weights = balancer.combine(losses)
    exact = np.asarray(losses, np.float32).astype(np.float64)
    geometric = math.exp(np.mean(np.log(exact)))
    np.testing.assert_allclose(float(total), geometric, rtol=1e-5)
    np.testing.assert_allclose(weights.numpy(), geometric / (len(losses) * exact), rtol=1e-5)


def test_gamma_zero_is_exact_not_a_limit():
    # A small gamma is close to, but measurably different from, gamma = 0.
    losses = [1.0, 100.0]
    geometric = float(GeneralizedMean(gamma=0.0).combine(losses)[0])
    assert geometric == pytest.approx(10.0, rel=1e-6)
    near = float(GeneralizedMean(gamma=1e-2).combine(losses)[0])
    assert near == pytest.approx(ref_mean(losses, 1e-2), rel=1e-5)
    assert near > geometric * (1 + 1e-3)


@pytest.mark.parametrize("losses", [[1.0, 2.0, 3.0], [0.5, 4.0, 4.0, 1.0], [1e-6, 1e6, 2.0]])
def test_large_gamma_approaches_max_and_min(losses):
    k = len(losses)
    top, bottom = max(losses), min(losses)
    for gamma in (50.0, 200.0):
        high = float(GeneralizedMean(gamma=gamma).combine(losses)[0])
        # max * K^(-1/gamma) <= M <= max
        assert top * k ** (-1.0 / gamma) * (1 - 1e-6) <= high <= top * (1 + 1e-6)
        np.testing.assert_allclose(high, ref_mean(losses, gamma), rtol=1e-5)
        low = float(GeneralizedMean(gamma=-gamma).combine(losses)[0])
        # min <= M <= min * K^(1/gamma)
        assert bottom * (1 - 1e-6) <= low <= bottom * k ** (1.0 / gamma) * (1 + 1e-6)
        np.testing.assert_allclose(low, ref_mean(losses, -gamma), rtol=1e-5)
    assert abs(float(GeneralizedMean(gamma=200.0).combine(losses)[0]) - top) < abs(
        float(GeneralizedMean(gamma=50.0).combine(losses)[0]) - top
    )
    # The weights approach one-hot: all but ~log(K)/gamma of the mass on the max.
    weights = GeneralizedMean(gamma=200.0)(losses).numpy()
    winners = np.asarray(losses) == top
    assert weights[winners].sum() == pytest.approx(1.0, abs=math.log(k) / 200 + 1e-6)


def test_infinite_gamma_is_exactly_max_and_min():
    losses = np.float32([0.3, 7.25, 1e-9, 7.0])
    total, weights = GeneralizedMean(gamma=INF).combine(losses)
    assert float(total) == np.float32(7.25)
    np.testing.assert_array_equal(weights.numpy(), [0.0, 1.0, 0.0, 0.0])
    total, weights = GeneralizedMean(gamma=-INF).combine(losses)
    assert float(total) == np.float32(1e-9)
    np.testing.assert_array_equal(weights.numpy(), [0.0, 0.0, 1.0, 0.0])
    # Ties share the weight evenly.
    _, weights = GeneralizedMean(gamma=INF).combine([2.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(weights.numpy(), [0.0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-7)


def test_mean_is_monotone_in_gamma():
    for losses in log_sequence(5, 4, seed=3):
        means = [float(GeneralizedMean(gamma=g).combine(losses)[0]) for g in GAMMAS]
        assert all(a <= b * (1 + 1e-6) for a, b in zip(means, means[1:])), means


@pytest.mark.parametrize("gamma", GAMMAS)
def test_weights_times_terms_sum_to_the_mean(gamma):
    # M is homogeneous of degree 1, so sum_i L_i dM/dL_i = M (Euler).
    for losses in log_sequence(5, 3, seed=4):
        total, weights = GeneralizedMean(gamma=gamma).combine(losses)
        np.testing.assert_allclose(np.dot(weights.numpy(), losses), float(total), rtol=1e-5)


# -- gradient of the total ------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS + [50.0, -50.0])
@pytest.mark.parametrize("jit_compile", [None, True], ids=["eager", "xla"])
def test_gradient_of_total_equals_reported_weights(gamma, jit_compile):
    balancer = GeneralizedMean(gamma=gamma)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total, weights = balancer.combine(x * x)  # losses are functions of x
        return total, weights, tape.gradient(total, x)

    if jit_compile:
        step = tf.function(step, jit_compile=True)
    for losses in log_sequence(3, 3, seed=5, low=0.2, high=5.0):
        x = tf.constant(np.sqrt(losses), tf.float32)
        total, weights, gradient = step(x)
        # d total / d x_i = w_i * 2 x_i
        np.testing.assert_allclose(gradient.numpy(), weights.numpy() * 2 * x.numpy(), rtol=2e-5, atol=1e-7)
        exact = (x.numpy().astype(np.float64)) ** 2
        np.testing.assert_allclose(weights.numpy(), ref_weights(exact, gamma), rtol=RTOL, atol=1e-7)
        assert float(total) == pytest.approx(ref_mean(exact, gamma), rel=RTOL)


@pytest.mark.parametrize("gamma", [-2.0, 0.0, 0.5, 1.0, 2.0])
def test_gradient_at_a_zero_term_is_the_derivative_at_epsilon(gamma):
    # A term below epsilon counts as epsilon, and its gradient is not cut.
    balancer = GeneralizedMean(gamma=gamma, epsilon=1e-6)
    x = tf.Variable([0.0, 1.0, 4.0])
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(x)
    gradient = tape.gradient(total, x).numpy()
    np.testing.assert_allclose(gradient, weights.numpy(), rtol=2e-5)
    np.testing.assert_allclose(weights.numpy(), ref_weights([1e-6, 1.0, 4.0], gamma), rtol=2e-5)
    assert float(total) == pytest.approx(ref_mean([1e-6, 1.0, 4.0], gamma), rel=2e-5)
    if gamma == 1.0:
        np.testing.assert_allclose(gradient, [1 / 3] * 3, rtol=1e-6)


# -- scale ----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("factor", [1e6, 1e-6])
def test_scaling_every_term_scales_the_mean_only(gamma, factor):
    sequence = log_sequence(10, 3, seed=6)
    base_totals, base_weights = run(GeneralizedMean(gamma=gamma), sequence)
    totals, weights = run(GeneralizedMean(gamma=gamma), sequence * factor)
    np.testing.assert_allclose(totals, base_totals * factor, rtol=1e-5)
    np.testing.assert_allclose(weights, base_weights, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("factor", [1e6, 1e-6])
@pytest.mark.parametrize("term", [0, 2])
def test_geometric_mean_direction_is_invariant_to_one_term_scale(factor, term):
    # Scaling term j by c multiplies M by c^(1/K) (not invariant), but the
    # gradient in log space, d log M / d log L_i = w_i L_i / M = 1/K, does not
    # change: the direction of the update is the same.
    k = 3
    sequence = log_sequence(12, k, seed=7)
    scaled = sequence.copy()
    scaled[:, term] *= factor
    base_totals, base_weights = run(GeneralizedMean(gamma=0.0), sequence)
    totals, weights = run(GeneralizedMean(gamma=0.0), scaled)
    np.testing.assert_allclose(totals, base_totals * factor ** (1 / k), rtol=1e-5)
    base_log_gradient = base_weights * sequence / base_totals[:, None]
    log_gradient = weights * scaled / totals[:, None]
    np.testing.assert_allclose(log_gradient, base_log_gradient, rtol=1e-5)
    np.testing.assert_allclose(log_gradient, np.full_like(log_gradient, 1 / k), rtol=1e-5)
    expected = base_weights * factor ** (1 / k)
    expected[:, term] /= factor
    np.testing.assert_allclose(weights, expected, rtol=1e-5)


def test_arithmetic_mean_is_not_invariant_to_one_term_scale():
    # The property above is specific to gamma = 0.
    sequence = log_sequence(5, 3, seed=7)
    scaled = sequence.copy()
    scaled[:, 0] *= 1e3
    base_totals, base_weights = run(GeneralizedMean(gamma=1.0), sequence)
    totals, weights = run(GeneralizedMean(gamma=1.0), scaled)
    assert not np.allclose(weights * scaled / totals[:, None], base_weights * sequence / base_totals[:, None])


# -- finiteness -----------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS + [50.0, -50.0, 0.01, 200.0])
@pytest.mark.parametrize(
    "losses",
    [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1e-12, 1e12, 1.0], [1e-30, 3e38, 1.0], [0.0, 3e38, 3e38]],
    ids=["zero", "all-zero", "1e-12-vs-1e12", "1e-30-vs-3e38", "zero-and-max"],
)
def test_extreme_terms_stay_finite(gamma, losses):
    balancer = GeneralizedMean(gamma=gamma)
    x = tf.Variable(losses, dtype=tf.float32)
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(x)
    gradient = tape.gradient(total, x).numpy()
    assert np.isfinite(float(total))
    assert np.all(np.isfinite(weights.numpy())) and np.all(weights.numpy() >= 0)
    assert np.all(np.isfinite(gradient))
    assert float(total) >= 0


def test_1e12_spread_matches_reference():
    losses = [1e-12, 1e12, 1.0]
    for gamma in (2.0, -2.0, 0.0, 1.0):
        total, weights = GeneralizedMean(gamma=gamma).combine(losses)
        exact = np.float32(losses).astype(np.float64)
        assert float(total) == pytest.approx(ref_mean(exact, gamma), rel=RTOL)
        np.testing.assert_allclose(weights.numpy(), ref_weights(exact, gamma), rtol=RTOL, atol=1e-30)


# -- NaN policy -----------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [float("nan"), INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("bad_step", [0, 3])
@pytest.mark.parametrize("gamma", [-1.0, 0.0, 2.0, INF])
def test_skip_policy(bad_value, bad_step, gamma):
    """The total of a step with a non-finite term is the mean of the others, with a zero
    gradient for that term (the weights and the rest of the run: test_loss_level_properties)."""
    sequence = log_sequence(6, 3, seed=9)
    balancer = GeneralizedMean(gamma=gamma)
    for losses in sequence[:bad_step]:
        balancer.combine(tf.constant(losses, tf.float32))
    bad = sequence[bad_step].astype(np.float32).copy()
    bad[1] = bad_value
    before = balancer.term_weights.numpy().copy() if balancer.built else np.full(3, 1 / 3, np.float32)
    x = tf.Variable(bad)
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(x)
    gradient = tape.gradient(total, x).numpy()
    np.testing.assert_array_equal(weights.numpy(), before)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), before)
    finite = np.delete(bad.astype(np.float64), 1)
    assert float(total) == pytest.approx(ref_mean(finite, gamma), rel=RTOL)
    assert np.all(np.isfinite(gradient)) and gradient[1] == 0.0
    np.testing.assert_allclose(np.delete(gradient, 1), ref_weights(finite, gamma), rtol=RTOL, atol=1e-7)


def test_all_terms_non_finite_gives_a_zero_total():
    balancer = GeneralizedMean(gamma=0.0, num_terms=2)
    x = tf.Variable([float("nan"), INF])
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(x)
    assert float(total) == 0.0
    np.testing.assert_array_equal(tape.gradient(total, x).numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(weights.numpy(), [0.5, 0.5])  # the initial weights


# -- call / evaluate / build ------------------------------------------------------------


def test_initial_weights_and_call():
    balancer = GeneralizedMean(gamma=2.0, num_terms=4)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [0.25] * 4)
    weights = balancer([1.0, 1.0, 1.0, 3.0]).numpy()  # __call__ returns the weights
    np.testing.assert_allclose(weights, ref_weights([1, 1, 1, 3], 2.0), rtol=1e-6)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), weights)


def test_evaluate_leaves_the_weights_alone():
    balancer = GeneralizedMean(gamma=2.0)
    balancer.combine([3.0, 4.0])
    before = balancer.term_weights.numpy().copy()
    total, weights = balancer.evaluate([1.0, 4.0])
    np.testing.assert_array_equal(balancer.term_weights.numpy(), before)
    assert float(total) == pytest.approx(ref_mean([1, 4], 2.0), rel=1e-6)
    np.testing.assert_allclose(weights.numpy(), ref_weights([1, 4], 2.0), rtol=1e-6)
    total, weights = balancer.evaluate([float("nan"), 4.0])
    assert float(total) == pytest.approx(4.0)
    np.testing.assert_array_equal(weights.numpy(), before)
    total, _ = GeneralizedMean().evaluate([1.0, 4.0])  # builds on first use
    assert float(total) == pytest.approx(2.0)


def test_one_training_step_of_a_balanced_model():
    """SGD on the geometric mean of two terms, written out by hand."""
    from keras_balance import BalancedModel

    class TwoTerms(BalancedModel):
        term_names = ("fit", "size")

        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            return [tf.reduce_mean(tf.square(y - y_pred)), tf.reduce_mean(tf.square(y_pred))]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(0))(inputs)
    model = TwoTerms(inputs, outputs, balancer=GeneralizedMean(gamma=0.0))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        fit, size = model.compute_loss_terms(x, y, model(x))
        geometric = tf.sqrt(fit * size)
    grads = tape.gradient(geometric, model.trainable_variables)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(float(geometric), rel=1e-5)
    for b, g, v in zip(before, grads, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), rtol=1e-5, atol=1e-7)
    expected = [float(geometric) / (2 * float(fit)), float(geometric) / (2 * float(size))]
    np.testing.assert_allclose(model.balancer.term_weights.numpy(), expected, rtol=1e-5)


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [("gamma", float("nan")), ("epsilon", 0.0), ("epsilon", -1e-3), ("epsilon", float("nan")), ("epsilon", INF)],
)
def test_out_of_range_arguments(name, value):
    assert_refused(GeneralizedMean, {name: value}, name)


@pytest.mark.parametrize("value", ["2", None, True, [1.0]])
def test_non_numeric_gamma(value):
    with pytest.raises(TypeError, match="gamma"):
        GeneralizedMean(gamma=value)


def test_infinite_gamma_accepted():
    assert GeneralizedMean(gamma=INF).gamma == INF
    assert GeneralizedMean(gamma=-INF).gamma == -INF
    assert GeneralizedMean(gamma=3).gamma == 3.0


def test_defaults():
    balancer = GeneralizedMean()
    assert (balancer.gamma, balancer.epsilon, balancer.name) == (0.0, 1e-12, "generalized_mean")
    assert GeneralizedMean.summary


# -- checkpoints ----------------------------------------------------------------------


def test_checkpoint_restores_the_weights(tmp_path):
    # The only state is the record of the latest weights, which a skipped
    # step returns: a restored balancer returns the saved ones.
    sequence = log_sequence(6, 3, seed=10)
    balancer = GeneralizedMean(gamma=2.0, num_terms=3)
    run(balancer, sequence[:3])
    saved = balancer.term_weights.numpy().copy()
    checkpoint = tf.train.Checkpoint(balancer=balancer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    _, after = run(balancer, sequence[3:])
    assert not np.array_equal(balancer.term_weights.numpy(), saved)
    other = GeneralizedMean(gamma=2.0, num_terms=3)
    tf.train.Checkpoint(balancer=other).restore(path).assert_consumed()
    np.testing.assert_array_equal(other.term_weights.numpy(), saved)
    np.testing.assert_array_equal(other.combine([1.0, float("nan"), 1.0])[1].numpy(), saved)
    _, again = run(other, sequence[3:])
    np.testing.assert_array_equal(again, after)
