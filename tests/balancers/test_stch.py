"""Tests of `keras_balance.balancers.STCH`, against values computed by hand from the formula.

S(L) = mu log sum_i exp(lambda_i y_i / mu) and the weights are dS/dL_i:
`lambda_i s_i` with y = L - z ("none"), `lambda_i s_i / (L_i + eps n_i)` with
y = log(L / n + eps) ("log_nadir"), where s = softmax(lambda y / mu).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance import BalancedModel
from keras_balance.balancers import STCH


def softmax(x):
    e = np.exp(np.asarray(x, "float64") - np.max(x))
    return e / e.sum()


def test_two_terms_by_hand():
    # lambda = 1/2, mu = 0.5: s = softmax([1, 2]) = [1, e] / (1 + e).
    weights = STCH(mu=0.5)([1.0, 2.0]).numpy()
    e = np.e
    np.testing.assert_allclose(weights, [0.5 / (1 + e), 0.5 * e / (1 + e)], rtol=1e-6)


def test_preference_and_ideal_point():
    losses, preference, ideal = np.array([1.0, 3.0, 2.0]), np.array([0.5, 0.2, 0.3]), np.array([0.5, 2.0, 0.0])
    weights = STCH(mu=0.2, preference=preference.tolist(), ideal_point=ideal.tolist())(losses).numpy()
    np.testing.assert_allclose(weights, preference * softmax(preference * (losses - ideal) / 0.2), rtol=1e-5)


def test_small_mu_gives_the_tchebycheff_subgradient_and_large_mu_the_preference():
    losses = [1.0, 3.0, 2.0]
    np.testing.assert_allclose(STCH(mu=1e-3)(losses).numpy(), [0.0, 1 / 3, 0.0], atol=1e-7)
    # mu -> inf: s -> 1/K, weights -> lambda / K.
    np.testing.assert_allclose(STCH(mu=1e6)(losses).numpy(), [1 / 9] * 3, rtol=1e-5)
    # Equal shifted terms: uniform s, whatever mu.
    np.testing.assert_allclose(STCH(mu=0.01, ideal_point=[0.0, 2.0, 1.0])(losses).numpy(), [1 / 9] * 3, rtol=1e-5)


def test_the_weights_are_the_gradient_of_the_smooth_maximum():
    losses = tf.Variable([0.3, 1.2, 0.9])
    preference, mu = tf.constant([0.2, 0.3, 0.5]), 0.4
    with tf.GradientTape() as tape:
        smooth = mu * tf.reduce_logsumexp(preference * losses / mu)
    expected = tape.gradient(smooth, losses).numpy()
    np.testing.assert_allclose(STCH(mu=mu, preference=[0.2, 0.3, 0.5])(losses).numpy(), expected, rtol=1e-5)


def test_log_nadir_with_a_given_nadir_point():
    losses, nadir, mu = np.array([0.5, 4.0]), np.array([1.0, 2.0]), 0.5
    weights = STCH(mu=mu, normalization="log_nadir", nadir_point=nadir.tolist())(losses).numpy()
    s = softmax(0.5 * np.log(losses / nadir) / mu)
    np.testing.assert_allclose(weights, 0.5 * s / losses, rtol=1e-5)


def test_log_nadir_ignores_the_units_of_a_term():
    # Term 0 in other units (x 1e6, nadir too): y is unchanged, so the weighted gradient w_0 dL_0 is.
    plain = STCH(normalization="log_nadir", nadir_point=[2.0, 1.0])([0.5, 3.0]).numpy()
    scaled = STCH(normalization="log_nadir", nadir_point=[2e6, 1.0])([0.5e6, 3.0]).numpy()
    np.testing.assert_allclose(scaled * [1e6, 1.0], plain, rtol=1e-5)


def test_the_warmup_trains_on_the_log_sum_and_measures_the_nadir_point():
    balancer = STCH(normalization="log_nadir", warmup_epochs=2, mu=0.5)
    assert balancer.needs_epoch_end and balancer.needs_non_negative_losses
    epoch_0, epoch_1 = [[1.0, 4.0], [2.0, 8.0]], [[0.5, 2.0], [1.5, 6.0]]
    for losses in epoch_0:
        np.testing.assert_allclose(balancer(losses).numpy(), 1.0 / np.array(losses), rtol=1e-6)
    balancer.end_epoch()
    balancer.end_epoch()  # an epoch without steps does not count
    for losses in epoch_1:
        np.testing.assert_allclose(balancer(losses).numpy(), 1.0 / np.array(losses), rtol=1e-6)
    balancer.end_epoch()
    np.testing.assert_allclose(balancer.nadir.numpy(), [1.0, 4.0])  # the mean of the last warm-up epoch
    losses = np.array([0.5, 3.0])
    s = softmax(0.5 * np.log(losses / [1.0, 4.0]) / 0.5)
    np.testing.assert_allclose(balancer(losses).numpy(), 0.5 * s / losses, rtol=1e-5)
    assert int(balancer.epochs_seen.numpy()) == 2


def test_a_balanced_model_closes_the_warmup_with_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": 100.0 * x[:, 1:2]}
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = [keras.layers.Dense(1, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)]
    balancer = STCH(normalization="log_nadir", warmup_epochs=1)
    model = BalancedModel(inputs, outputs, balancer=balancer)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"a": "mse", "b": "mse"})
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
    # The nadir point is the mean of each term over the first epoch, as logged.
    np.testing.assert_allclose(balancer.nadir.numpy(), [history["a"][0], history["b"][0]], rtol=1e-4)
    assert int(balancer.epochs_seen.numpy()) == 3
    assert history["b"][-1] < history["b"][0]


def test_extreme_scales_give_finite_weights():
    for balancer in (STCH(mu=0.01), STCH(normalization="log_nadir", nadir_point=[1e-30, 1.0, 1e30])):
        weights = balancer([1e-12, 0.0, 1e12]).numpy()
        assert np.all(np.isfinite(weights)), weights


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"mu": 0.0}, r"`mu` must be in \(0.0, inf\); received mu=0.0"),
        ({"normalization": "nadir"}, r"`normalization` must be one of \('none', 'log_nadir'\); received normalization='nadir'"),
        ({"preference": [0.0, 0.0]}, r"`preference` must contain finite, non-negative numbers, not all zero"),
        ({"ideal_point": [0.0, float("nan")]}, r"`ideal_point` must contain finite numbers; received"),
        ({"ideal_point": [0.0, 1.0], "normalization": "log_nadir", "warmup_epochs": 1},
         r"`ideal_point` is used with normalization='none' only"),
        ({"nadir_point": [1.0, 2.0]}, r"`nadir_point` is used with normalization='log_nadir' only"),
        ({"nadir_point": [1.0, 0.0], "normalization": "log_nadir"}, r"`nadir_point` must contain finite, positive"),
        ({"normalization": "log_nadir"}, r"`warmup_epochs` must be >= 1 when normalization='log_nadir' has no"),
        ({"warmup_epochs": 2}, r"`warmup_epochs` measures the nadir point.*received warmup_epochs=2"),
        ({"warmup_epochs": -1}, r"`warmup_epochs` must be an int >= 0; received warmup_epochs=-1"),
        ({"epsilon": 0.0}, r"`epsilon` must be in \(0.0, inf\); received epsilon=0.0"),
        ({"preference": [1.0, 1.0], "ideal_point": [0.0, 0.0, 0.0]},
         r"`num_terms`=2 disagrees with the 3 entries of `ideal_point`"),
    ],
)
def test_bad_arguments_name_themselves(arguments, message):
    with pytest.raises(ValueError, match=message):
        STCH(**arguments)


def test_config_round_trip_keeps_every_option():
    balancer = STCH(mu=0.3, preference=[0.2, 0.8], normalization="log_nadir", warmup_epochs=3, epsilon=1e-12)
    copy = STCH.from_config(balancer.get_config())
    assert copy.get_config() == balancer.get_config()
    assert (copy.mu, copy.preference, copy.warmup_epochs, copy.num_terms) == (0.3, [0.2, 0.8], 3, 2)
    assert not STCH().needs_epoch_end and not STCH().needs_non_negative_losses
