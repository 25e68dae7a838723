"""Tests of `keras_balance.balancers.uncertainty.UncertaintyWeighting`.

The reference below is written from the formula (METHODS.md, section A), in
float64 with plain loops, and does not use the package. With SGD at learning
rate eta on the noise parameters and the step-t losses L_i(t):

    kendall:  w_i = 0.5 exp(-s_i),   total = sum_i w_i L_i + 0.5 s_i
              d total / d s_i     = 0.5 - 0.5 exp(-s_i) L_i
    log1p:    w_i = 1 / (2 sigma_i^2),   total = sum_i w_i L_i + log(1 + sigma_i^2)
              d total / d sigma_i = -L_i / sigma_i^3 + 2 sigma_i / (1 + sigma_i^2)

and `p <- p - eta * d total / d p`; the weights of step t are read before the
update of step t.
"""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_sequence

from keras_balance import BalancedModel
from keras_balance.balancers import UncertaintyWeighting

RTOL = 1e-5
REGULARIZERS = ("kendall", "log1p")
loss_sequence = functools.partial(random_sequence, low=0.2, high=5.0)


# -- independent reference ----------------------------------------------------------


def ref_sgd(sequence, regularizer, learning_rate):
    """(weights, totals, parameters after the step) for every step."""
    k = len(sequence[0])
    params = [0.0] * k if regularizer == "kendall" else [1.0] * k
    weights, totals, after = [], [], []
    for losses in sequence:
        losses = [float(v) for v in losses]
        if regularizer == "kendall":
            w = [0.5 * math.exp(-s) for s in params]
            total = sum(w[i] * losses[i] + 0.5 * params[i] for i in range(k))
            grad = [0.5 - w[i] * losses[i] for i in range(k)]
        else:
            w = [1.0 / (2.0 * p * p) for p in params]
            total = sum(w[i] * losses[i] + math.log(1.0 + params[i] ** 2) for i in range(k))
            grad = [-losses[i] / params[i] ** 3 + 2 * params[i] / (1 + params[i] ** 2) for i in range(k)]
        params = [params[i] - learning_rate * grad[i] for i in range(k)]
        weights.append(w)
        totals.append(total)
        after.append(params)
    return np.array(weights), np.array(totals), np.array(after)


def log1p_optimum(loss):
    """The sigma > 0 that minimizes f(sigma) = L / (2 sigma^2) + log(1 + sigma^2).

    With u = sigma^2 > 0, g(u) = L / (2u) + log(1 + u) and
        g'(u) = -L / (2 u^2) + 1 / (1 + u) = 0
        <=> 2 u^2 = L (1 + u)  <=>  2 u^2 - L u - L = 0
        <=> u = (L + sqrt(L^2 + 8 L)) / 4      (the positive root).
    g -> +inf as u -> 0 and g' > 0 beyond the root, so it is the minimum
    (f'(sigma) = 2 sigma g'(u) vanishes only there for sigma > 0). At the
    optimum the weight is 1 / (2u). Example: L = 2 gives u = (2 + sqrt(20)) / 4
    = 1.6180340, the golden ratio.
    """
    return math.sqrt((loss + math.sqrt(loss * loss + 8.0 * loss)) / 4.0)


def train(balancer, sequence, optimizer, fn_wrapper=None):
    """Apply `optimizer` to the balancer's variables on the gradients of the
    total of `combine`; return (weights, totals, parameters after) per step."""
    variables = balancer.trainable_variables
    optimizer.build(variables)

    def step(losses):
        with tf.GradientTape() as tape:
            total, weights = balancer.combine(losses)
        optimizer.apply(tape.gradient(total, variables), variables)
        return total, weights

    if fn_wrapper is not None:
        step = fn_wrapper(step)
    weights, totals, after = [], [], []
    for losses in sequence:
        total, w = step(tf.constant(np.asarray(losses, np.float32)))
        weights.append(np.asarray(w))
        totals.append(float(total))
        after.append(balancer.noise_parameters.numpy().copy())
    return np.array(weights), np.array(totals), np.array(after)


def test_log1p_optimum_is_a_minimum():
    for loss in (0.5, 2.0, 8.0, 1e-3):
        sigma = log1p_optimum(loss)
        f = lambda s: loss / (2 * s * s) + math.log1p(s * s)  # noqa: E731
        assert f(sigma) < f(sigma * 1.01) and f(sigma) < f(sigma * 0.99)
    assert log1p_optimum(2.0) ** 2 == pytest.approx((1 + math.sqrt(5)) / 2, rel=1e-12)


# -- formula --------------------------------------------------------------------------

# Hand computation, K = 2, losses [0.5, 2], [1, 4], [2, 1], SGD.
#   kendall, learning rate 0.5, g_i = 0.5 - w_i L_i, w_i = 0.5 exp(-s_i):
#     step 0: s = [0, 0];  w = [0.5, 0.5]
#             total = 0.5*0.5 + 0.5*2 + 0 = 1.25
#             g = [0.5 - 0.25, 0.5 - 1.0] = [0.25, -0.5];  s = [-0.125, 0.25]
#     step 1: w = [0.5 e^0.125, 0.5 e^-0.25] = [0.56657423, 0.38940039]
#             total = 0.56657423*1 + 0.38940039*4 + 0.5*(-0.125 + 0.25) = 2.18667579
#             g = [0.5 - 0.56657423, 0.5 - 1.55760157] = [-0.06657423, -1.05760157]
#             s = [-0.125 + 0.03328712, 0.25 + 0.52880078] = [-0.09171289, 0.77880078]
#     step 2: w = [0.5 e^0.09171289, 0.5 e^-0.77880078] = [0.54802504, 0.22947803]
#             total = 1.09605009 + 0.22947803 + 0.5*(-0.09171289 + 0.77880078) = 1.66907207
#             g = [0.5 - 1.09605009, 0.5 - 0.22947803] = [-0.59605009, 0.27052197]
#             s = [-0.09171289 + 0.29802504, 0.77880078 - 0.13526098] = [0.20631216, 0.64353980]
#   log1p, learning rate 0.25, g_i = -L_i / sigma_i^3 + 2 sigma_i / (1 + sigma_i^2):
#     step 0: sigma = [1, 1];  w = 1 / (2 * 1) = [0.5, 0.5]
#             total = 0.25 + 1 + 2 log 2 = 2.63629436
#             g = [-0.5 + 1, -2 + 1] = [0.5, -1];  sigma = [0.875, 1.25]
#     step 1: w = [1 / (2*0.765625), 1 / (2*1.5625)] = [0.65306122, 0.32]
#             total = 0.65306122 + 1.28 + log 1.765625 + log 2.5625 = 3.44254930
#             g = [-1/0.66992188 + 1.75/1.765625, -4/1.953125 + 2.5/2.5625]
#               = [-1.49271137 + 0.99115044, -2.048 + 0.97560976] = [-0.50156093, -1.07239024]
#             sigma = [0.875 + 0.12539023, 1.25 + 0.26809756] = [1.00039023, 1.51809756]
#     step 2: w = [1 / (2*1.00078061), 1 / (2*2.30461901)] = [0.49961000, 0.21695549]
#             total = 0.99922000 + 0.21695549 + log 2.00078061 + log 3.30461901 = 3.10503444
#             g = [-0.99766051, 0.63294730];  sigma = [1.24980536, 1.35986074]
HAND_SEQUENCE = [[0.5, 2.0], [1.0, 4.0], [2.0, 1.0]]
HAND = {
    "kendall": (
        0.5,
        [[0.5, 0.5], [0.56657423, 0.38940039], [0.54802504, 0.22947803]],
        [1.25, 2.18667579, 1.66907207],
        [[-0.125, 0.25], [-0.09171289, 0.77880078], [0.20631216, 0.64353980]],
    ),
    "log1p": (
        0.25,
        [[0.5, 0.5], [0.65306122, 0.32], [0.49961000, 0.21695549]],
        [2.63629436, 3.44254930, 3.10503444],
        [[0.875, 1.25], [1.00039023, 1.51809756], [1.24980536, 1.35986074]],
    ),
}


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_hand_computed_sgd_steps(regularizer):
    learning_rate, hand_weights, hand_totals, hand_params = HAND[regularizer]
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=2)
    weights, totals, params = train(balancer, HAND_SEQUENCE, keras.optimizers.SGD(learning_rate))
    np.testing.assert_allclose(weights, hand_weights, rtol=2e-6)
    np.testing.assert_allclose(totals, hand_totals, rtol=2e-6)
    np.testing.assert_allclose(params, hand_params, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), weights[-1])
    # The reference agrees with the hand computation.
    ref_w, ref_t, ref_p = ref_sgd(HAND_SEQUENCE, regularizer, learning_rate)
    np.testing.assert_allclose(ref_w, hand_weights, rtol=1e-7)
    np.testing.assert_allclose(ref_t, hand_totals, rtol=1e-7)
    np.testing.assert_allclose(ref_p, hand_params, rtol=1e-7)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("num_terms", [1, 3])
def test_sgd_matches_reference_on_a_random_sequence(regularizer, num_terms):
    sequence = loss_sequence(30, num_terms, seed=num_terms).astype(np.float32).astype(np.float64)
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=num_terms)
    weights, totals, params = train(balancer, sequence, keras.optimizers.SGD(0.1))
    ref_w, ref_t, ref_p = ref_sgd(sequence, regularizer, 0.1)
    np.testing.assert_allclose(weights, ref_w, rtol=RTOL)
    np.testing.assert_allclose(totals, ref_t, rtol=RTOL)
    np.testing.assert_allclose(params, ref_p, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_gradients_of_the_total(regularizer):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    values = np.float32([0.3, -0.2, 0.7]) if regularizer == "kendall" else np.float32([0.8, 1.3, -0.6])
    balancer.noise_parameters.assign(values)
    losses = tf.Variable([0.5, 2.0, 8.0])
    with tf.GradientTape(persistent=True) as tape:
        total, weights = balancer.combine(losses)
    to_losses = tape.gradient(total, losses).numpy()
    to_params = tape.gradient(total, balancer.noise_parameters).numpy()
    p, l = values.astype(np.float64), np.float64([0.5, 2.0, 8.0])
    if regularizer == "kendall":
        expected_w = 0.5 * np.exp(-p)
        expected_p = 0.5 - expected_w * l
        expected_total = np.sum(expected_w * l + 0.5 * p)
    else:
        expected_w = 1.0 / (2.0 * p * p)
        expected_p = -l / p**3 + 2 * p / (1 + p * p)
        expected_total = np.sum(expected_w * l + np.log1p(p * p))
    np.testing.assert_allclose(weights.numpy(), expected_w, rtol=1e-6)
    np.testing.assert_allclose(to_losses, expected_w, rtol=1e-6)  # the weights are the factors
    np.testing.assert_allclose(to_params, expected_p, rtol=1e-5, atol=1e-6)
    assert float(total) == pytest.approx(expected_total, rel=1e-6)


# -- convergence ----------------------------------------------------------------------

CONSTANT = np.float32([0.5, 2.0, 8.0])


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_adam_on_constant_terms_reaches_the_optimum(regularizer):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    variables = balancer.trainable_variables
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(variables)
    losses = tf.constant(CONSTANT)

    @tf.function
    def steps(n):
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                total, _ = balancer.combine(losses)
            optimizer.apply(tape.gradient(total, variables), variables)

    steps(tf.constant(400))
    params = balancer.noise_parameters.numpy()
    weights = balancer(losses).numpy()
    if regularizer == "kendall":
        # d/ds [0.5 e^-s L + 0.5 s] = 0  <=>  e^s = L: the weight is 1 / (2 L).
        np.testing.assert_allclose(np.exp(params), CONSTANT, rtol=1e-2)
        np.testing.assert_allclose(weights, 1 / (2 * CONSTANT), rtol=1e-2)
    else:
        optimum = np.array([log1p_optimum(v) for v in CONSTANT])  # [0.8002, 1.2720, 2.1974]
        np.testing.assert_allclose(np.abs(params), optimum, rtol=1e-2)
        np.testing.assert_allclose(weights, 1 / (2 * optimum**2), rtol=2e-2)
    # A larger term ends with a smaller weight.
    assert weights[0] > weights[1] > weights[2]


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_balanced_model_trains_the_noise_parameters(regularizer):
    class ConstantTerms(BalancedModel):
        term_names = ("a", "b")

        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            one = 1.0 + 0.0 * tf.reduce_mean(y_pred)  # constant, but connected to the model
            return [0.5 * one, 8.0 * one]

    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(inputs)
    balancer = UncertaintyWeighting(regularizer=regularizer)
    model = ConstantTerms(inputs, outputs, balancer=balancer)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    # The balancer's parameters are among the model's trainable variables.
    assert any(v is balancer.noise_parameters for v in model.trainable_variables)
    x = np.zeros((300, 3), "float32")
    history = model.fit(x, np.zeros((300, 1), "float32"), batch_size=1, epochs=1, verbose=0)
    params = balancer.noise_parameters.numpy()
    if regularizer == "kendall":
        np.testing.assert_allclose(np.exp(params), [0.5, 8.0], rtol=2e-2)
    else:
        np.testing.assert_allclose(np.abs(params), [log1p_optimum(0.5), log1p_optimum(8.0)], rtol=2e-2)
    # The optimizer holds slots for them: trained by the model's optimizer.
    assert int(model.optimizer.iterations.numpy()) == 300
    logged = [history.history["w_a"][-1], history.history["w_b"][-1]]
    np.testing.assert_allclose(logged, balancer.term_weights.numpy(), rtol=1e-6)
    assert logged[0] > logged[1]


def test_keras_loss_route_is_refused():
    from keras_balance.losses import BalancedLoss

    def terms(y_true, y_pred):
        return [tf.square(y_true - y_pred), tf.abs(y_pred)]

    with pytest.raises(ValueError, match="BalancedModel"):
        BalancedLoss(terms, UncertaintyWeighting(), term_names=["fit", "size"])


# -- tf.function / XLA ----------------------------------------------------------------


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_matches_eager(regularizer, jit_compile):
    sequence = loss_sequence(6, 3, seed=5)
    sequence[3, 0] = np.nan  # the skip step too
    eager = train(UncertaintyWeighting(regularizer=regularizer, num_terms=3), sequence, keras.optimizers.SGD(0.1))
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    compiled = train(
        balancer,
        sequence,
        keras.optimizers.SGD(0.1),
        fn_wrapper=lambda f: tf.function(f, jit_compile=jit_compile),
    )
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(compiled[2][3], compiled[2][2])  # no update on the NaN step


# -- NaN policy -----------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_non_finite_step_gives_zero_gradient_to_the_parameters(regularizer, bad_value, graph):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    balancer.noise_parameters.assign([0.4, 0.9, 1.3])
    balancer.combine([1.0, 2.0, 3.0])  # records weights
    before = balancer.term_weights.numpy().copy()

    def step(losses):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(losses)
            total, weights = balancer.combine(losses)
        return total, weights, tape.gradient(total, balancer.trainable_variables), tape.gradient(total, losses)

    if graph:
        step = tf.function(step)
    balancer.noise_parameters.assign([0.5, 1.0, 1.2])  # an optimizer step happened since
    total, weights, to_params, to_losses = step(tf.constant([0.5, bad_value, 4.0]))
    np.testing.assert_array_equal(to_params[0].numpy(), [0.0, 0.0, 0.0])  # finite and exactly zero
    np.testing.assert_array_equal(weights.numpy(), before)  # the previous weights
    np.testing.assert_array_equal(balancer.term_weights.numpy(), before)
    assert np.isfinite(float(total))
    # The total is sum_i w_i L_i (previous weights, the bad term as 0) + the regularizer.
    p = np.float64([0.5, 1.0, 1.2])
    penalty = np.sum(0.5 * p) if regularizer == "kendall" else np.sum(np.log1p(p * p))
    assert float(total) == pytest.approx(before[0] * 0.5 + before[2] * 4.0 + penalty, rel=1e-6)
    np.testing.assert_array_equal(to_losses.numpy(), [before[0], 0.0, before[2]])


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_skipped_step_leaves_the_run_as_if_it_never_happened(regularizer):
    # With SGD, a zero gradient is no update: the run continues exactly as a
    # run that never saw the bad step.
    sequence = loss_sequence(8, 3, seed=6)
    dirty_sequence = np.insert(sequence, 4, [1.0, np.nan, 2.0], axis=0)
    clean = train(UncertaintyWeighting(regularizer=regularizer, num_terms=3), sequence, keras.optimizers.SGD(0.2))
    dirty = train(UncertaintyWeighting(regularizer=regularizer, num_terms=3), dirty_sequence, keras.optimizers.SGD(0.2))
    assert np.isfinite(dirty[1][4])
    np.testing.assert_array_equal(dirty[0][4], dirty[0][3])  # previous weights
    for got, expected in zip(dirty, clean):
        np.testing.assert_array_equal(np.delete(got, 4, axis=0), expected)


def test_skip_at_the_first_step_returns_the_initial_weights():
    balancer = UncertaintyWeighting()
    total, weights = balancer.combine([float("nan"), 1.0])
    np.testing.assert_array_equal(weights.numpy(), [0.5, 0.5])
    assert float(total) == pytest.approx(0.5)


# -- finiteness -----------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize(
    "losses", [[0.0, 1.0, 2.0], [1e-12, 1e12, 1.0], [0.0, 0.0, 0.0]], ids=["zero", "1e-12-vs-1e12", "all-zero"]
)
def test_extreme_terms_stay_finite(regularizer, losses):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    weights, totals, params = train(balancer, [losses] * 5, keras.optimizers.SGD(0.01))
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(totals)) and np.all(np.isfinite(params))


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_precision_is_capped_at_one_over_epsilon(regularizer):
    # A term at 0 drives its variance to 0; the weight stops at 1 / (2 eps).
    balancer = UncertaintyWeighting(regularizer=regularizer, epsilon=1e-6, num_terms=2)
    balancer.noise_parameters.assign([-200.0, 0.0] if regularizer == "kendall" else [1e-30, 1.0])
    losses = tf.Variable([0.0, 1.0])
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(losses)
    np.testing.assert_allclose(weights.numpy(), [0.5e6, 0.5], rtol=1e-5)
    assert np.all(np.isfinite(tape.gradient(total, balancer.trainable_variables)[0].numpy()))
    assert np.isfinite(float(total))


# -- call / evaluate ------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_call_reports_the_current_factors_and_changes_nothing(regularizer):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=2)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), [0.5, 0.5])  # before any step
    balancer.noise_parameters.assign([math.log(4.0), 0.0] if regularizer == "kendall" else [2.0, 1.0])
    weights = balancer([1.0, 3.0]).numpy()
    np.testing.assert_allclose(weights, [0.125, 0.5], rtol=1e-6)  # 0.5/4 and 1/(2*4)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), weights)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_evaluate_uses_the_current_parameters_and_changes_nothing(regularizer):
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=2)
    balancer.combine([1.0, 1.0])
    values = [math.log(4.0), 0.0] if regularizer == "kendall" else [2.0, 1.0]
    balancer.noise_parameters.assign(values)
    recorded = balancer.term_weights.numpy().copy()
    total, weights = balancer.evaluate([2.0, 3.0])
    np.testing.assert_allclose(weights.numpy(), [0.125, 0.5], rtol=1e-6)
    penalty = 0.5 * sum(values) if regularizer == "kendall" else math.log(5.0) + math.log(2.0)
    assert float(total) == pytest.approx(0.125 * 2 + 0.5 * 3 + penalty, rel=1e-6)
    np.testing.assert_array_equal(balancer.term_weights.numpy(), recorded)
    np.testing.assert_allclose(balancer.noise_parameters.numpy(), values, rtol=1e-7)


def test_variables_and_defaults():
    kendall = UncertaintyWeighting(num_terms=3)
    assert (kendall.regularizer, kendall.epsilon, kendall.name) == ("kendall", 1e-12, "uncertainty")
    assert [v.name for v in kendall.trainable_variables] == ["log_variance"]
    np.testing.assert_array_equal(kendall.log_variance.numpy(), np.zeros(3))
    log1p = UncertaintyWeighting(regularizer="log1p", num_terms=3)
    assert [v.name for v in log1p.trainable_variables] == ["sigma"]
    np.testing.assert_array_equal(log1p.sigma.numpy(), np.ones(3))
    # term_weights is bookkeeping, not trained.
    assert all(v is not kendall.term_weights for v in kendall.trainable_variables)
    assert UncertaintyWeighting.summary


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["gauss", "Kendall", "", None, 3])
def test_unknown_regularizer(value):
    with pytest.raises(ValueError, match="regularizer") as info:
        UncertaintyWeighting(regularizer=value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_epsilon(value):
    with pytest.raises(ValueError, match="epsilon"):
        UncertaintyWeighting(epsilon=value)


# -- checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_checkpoint_continues_the_same_sequence(regularizer, tmp_path):
    sequence = loss_sequence(8, 3, seed=7)
    balancer = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    optimizer = keras.optimizers.SGD(0.2)
    train(balancer, sequence[:3], optimizer)
    saved = balancer.noise_parameters.numpy().copy()
    path = tf.train.Checkpoint(balancer=balancer).save(str(tmp_path / "ckpt"))
    after = train(balancer, sequence[3:], optimizer)
    other = UncertaintyWeighting(regularizer=regularizer, num_terms=3)
    tf.train.Checkpoint(balancer=other).restore(path).assert_consumed()
    np.testing.assert_array_equal(other.noise_parameters.numpy(), saved)
    again = train(other, sequence[3:], keras.optimizers.SGD(0.2))
    for a, b in zip(again, after):
        np.testing.assert_array_equal(a, b)
