"""Tests of `keras_balance.balancers.IMTLL`, against values computed by hand from the formula.

total = sum_i exp(s_i) L_i - s_i, weights w_i = exp(s_i) (read before the
update), d total / d s_i = exp(s_i) L_i - 1; with SGD at learning rate eta,
`s <- s - eta (exp(s) L - 1)`. At the optimum exp(s_i) L_i = 1.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_sequence

from keras_balance import BalancedModel
from keras_balance.balancers import IMTLL, UncertaintyWeighting
from keras_balance.losses import BalancedLoss, IMTLLLoss


def sgd_reference(sequence, eta):
    s = np.zeros(len(sequence[0]))
    weights, totals, after = [], [], []
    for losses in sequence:
        losses = np.asarray(losses, "float64")
        weights.append(np.exp(s))
        totals.append(float(np.sum(np.exp(s) * losses - s)))
        s = s - eta * (np.exp(s) * losses - 1.0)
        after.append(s.copy())
    return np.array(weights), np.array(totals), np.array(after)


def run_sgd(balancer, sequence, eta):
    weights, totals, after = [], [], []
    for losses in sequence:
        with tf.GradientTape() as tape:
            total, used = balancer.combine(tf.constant(losses, "float32"))
        (gradient,) = tape.gradient(total, balancer.trainable_variables)
        balancer.log_scale.assign_sub(eta * gradient)
        weights.append(used.numpy())
        totals.append(float(total))
        after.append(balancer.log_scale.numpy())
    return np.array(weights), np.array(totals), np.array(after)


def test_sgd_steps_follow_the_formula():
    sequence = random_sequence(8, 3, seed=3, low=0.2, high=5.0)
    expected = sgd_reference(sequence, 0.1)
    for got, want in zip(run_sgd(IMTLL(), sequence, 0.1), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_scales_settle_where_every_scaled_term_is_one():
    balancer = IMTLL(num_terms=3)
    optimizer = keras.optimizers.Adam(0.02)
    losses = tf.constant([0.05, 2.0, 40.0])
    optimizer.build(balancer.trainable_variables)

    @tf.function
    def train():
        for _ in tf.range(1500):
            with tf.GradientTape() as tape:
                total, _ = balancer.combine(losses)
            optimizer.apply(tape.gradient(total, balancer.trainable_variables), balancer.trainable_variables)

    train()
    np.testing.assert_allclose(np.exp(balancer.log_scale.numpy()) * losses.numpy(), 1.0, rtol=1e-2)


def test_it_is_twice_uncertainty_weighting_with_the_opposite_parameter():
    imtl, kendall = IMTLL(num_terms=3), UncertaintyWeighting(num_terms=3)
    s = np.array([0.3, -1.2, 2.0], "float32")
    imtl.log_scale.assign(s)
    kendall.log_variance.assign(-s)
    losses = [0.5, 2.0, 7.0]
    total, weights = imtl.combine(losses)
    half, half_weights = kendall.combine(losses)
    np.testing.assert_allclose(float(total), 2 * float(half), rtol=1e-6)
    np.testing.assert_allclose(weights.numpy(), 2 * half_weights.numpy(), rtol=1e-6)
    np.testing.assert_allclose(weights.numpy(), np.exp(s), rtol=1e-6)


def test_the_weights_are_capped():
    balancer = IMTLL(epsilon=1e-6, num_terms=2)
    balancer.log_scale.assign([100.0, 0.0])
    np.testing.assert_allclose(balancer([0.0, 1.0]).numpy(), [1e6, 1.0], rtol=1e-5)


def test_a_skipped_step_gives_the_scales_no_gradient():
    balancer = IMTLL(num_terms=2)
    balancer.log_scale.assign([0.5, -0.5])
    previous = balancer([1.0, 1.0]).numpy()
    for bad in ([float("nan"), 1.0], [-1.0, 1.0]):
        with tf.GradientTape() as tape:
            total, weights = balancer.combine(tf.constant(bad))
        np.testing.assert_array_equal(weights.numpy(), previous)
        np.testing.assert_array_equal(tape.gradient(total, balancer.log_scale).numpy(), [0.0, 0.0])


def test_evaluate_uses_the_current_scales_and_changes_nothing():
    balancer = IMTLL(num_terms=2)
    balancer.log_scale.assign([math.log(2.0), 0.0])
    total, weights = balancer.evaluate([1.0, 3.0])
    np.testing.assert_allclose(weights.numpy(), [2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(float(total), 2.0 + 3.0 - math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0, 1.0])


def test_a_balanced_model_trains_the_scales():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = {"a": x[:, :1], "b": 30.0 * x[:, 1:2]}
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)]
    model = BalancedModel(inputs, outputs, balancer="imtl_l")
    model.compile(optimizer=keras.optimizers.Adam(5e-2), loss={"a": "mse", "b": "mse"})
    assert any(v is model.balancer.log_scale for v in model.trainable_variables)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history
    s = model.balancer.log_scale.numpy()
    # Both scales moved from 0, the large term's far lower (its loss is ~900 times the other's).
    assert np.all(s != 0.0) and s[1] < s[0] - 0.2, s
    assert history["w_b"][-1] < history["w_a"][-1]


def test_the_keras_loss_route_points_to_balanced_model():
    with pytest.raises(ValueError, match="BalancedModel"):
        IMTLLLoss(lambda y, p: [y, p], num_terms=2)
    with pytest.raises(ValueError, match="BalancedModel"):
        BalancedLoss(lambda y, p: [y, p], "imtl_l", num_terms=2)


def test_bad_epsilon_names_itself():
    with pytest.raises(ValueError, match=r"`epsilon` must be in \(0.0, inf\); received epsilon=-1.0"):
        IMTLL(epsilon=-1.0)
