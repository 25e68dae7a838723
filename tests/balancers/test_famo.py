"""Tests of `keras_balance.balancers.FAMO`, against values computed by hand from the formula.

With the logits xi, z = softmax(xi), D_i = L_i - b_i + eps, the weights are
`z_i / D_i / sum_j (z_j / D_j)`. Step t >= 1 first moves the logits by one
Adam step on `g = z * (delta - z . delta) + gamma xi`, with
`delta = log D(t-1) - log D(t)`; Adam's first step is
`-lr * g / (|g| + 1e-8)` (the bias-corrected moments are g and g^2).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import FAMO


def famo_weights(logits, losses, min_losses=0.0, eps=1e-8):
    z = np.exp(logits - np.max(logits))
    z /= z.sum()
    scores = z / (np.asarray(losses, "float64") - min_losses + eps)
    return scores / scores.sum()


def test_first_step_weights_are_proportional_to_one_over_the_loss():
    np.testing.assert_allclose(FAMO()([1.0, 3.0]).numpy(), [0.75, 0.25], rtol=1e-6)
    # Lower bounds shift every loss: D = [0.5, 1.0] -> [2/3, 1/3].
    np.testing.assert_allclose(FAMO(min_losses=[0.5, 2.0])([1.0, 3.0]).numpy(), [2 / 3, 1 / 3], rtol=1e-6)


def test_second_step_is_one_adam_step_on_the_fall_of_the_log_losses():
    balancer = FAMO(learning_rate=0.1, weight_decay=0.0)
    balancer([1.0, 1.0])
    weights = balancer([0.5, 1.0]).numpy()
    # delta = [log 2, 0], z = [1/2, 1/2]: g = [log 2 / 4, -log 2 / 4], Adam moves by -lr sign(g).
    g = np.array([math.log(2) / 4, -math.log(2) / 4])
    expected_logits = -0.1 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(balancer.logits.numpy(), expected_logits, rtol=1e-5)
    np.testing.assert_allclose(weights, famo_weights(expected_logits, [0.5, 1.0]), rtol=1e-5)
    assert int(balancer.updates.numpy()) == 1 and int(balancer.step.numpy()) == 2


def test_the_second_adam_step_uses_the_moments_and_the_weight_decay():
    lr, gamma = 0.05, 0.01
    balancer = FAMO(learning_rate=lr, weight_decay=gamma)
    sequence = [[1.0, 2.0, 4.0], [0.8, 2.0, 3.0], [0.7, 1.5, 3.0]]
    xi, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t, losses in enumerate(sequence):
        got = balancer(losses).numpy()
        if t:
            z = np.exp(xi) / np.exp(xi).sum()
            delta = np.log(np.array(sequence[t - 1]) + 1e-8) - np.log(np.array(losses) + 1e-8)
            g = z * (delta - z @ delta) + gamma * xi
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            xi = xi - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(balancer.logits.numpy(), xi, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got, famo_weights(xi, losses), rtol=1e-5)


def test_a_stalled_term_gains_weight():
    balancer = FAMO(learning_rate=0.1)
    for t in range(20):
        balancer([0.9**t, 1.0])  # term 0 keeps falling, term 1 stalls
    xi = balancer.logits.numpy()
    assert xi[1] > xi[0]
    weights = balancer([0.9**20, 1.0]).numpy()
    # More than its 1/L share with equal logits.
    assert weights[1] > famo_weights(np.zeros(2), [0.9**20, 1.0])[1]


def test_the_logits_ignore_the_scale_of_a_term():
    a, b = FAMO(), FAMO()
    rng = np.random.default_rng(0)
    for losses in rng.uniform(0.5, 2.0, size=(6, 2)):
        a(losses.astype("float32"))
        b((losses * [1e6, 1.0]).astype("float32"))
    np.testing.assert_allclose(a.logits.numpy(), b.logits.numpy(), rtol=1e-4, atol=1e-6)


def test_a_skipped_step_is_left_out_of_the_next_update():
    clean, dirty = FAMO(), FAMO()
    for losses in ([1.0, 2.0], [0.8, 1.9], [0.7, 1.5]):
        clean(losses)
    dirty([1.0, 2.0])
    dirty([0.8, 1.9])
    dirty([float("nan"), 0.1])  # not compared with the next step
    dirty([0.7, 1.5])
    np.testing.assert_allclose(dirty.logits.numpy(), clean.logits.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(dirty.previous_losses.numpy(), np.float32([0.7, 1.5]))


def test_losses_below_the_lower_bound_are_taken_as_the_bound():
    weights = FAMO(min_losses=[1.0, 0.0])([0.5, 1.0]).numpy()
    # D = [eps, 1]: nearly all the weight on term 0, and finite.
    assert np.all(np.isfinite(weights)) and weights[0] > 0.999999


def test_xla_matches_eager():
    sequence = np.random.default_rng(1).uniform(0.1, 3.0, size=(6, 3)).astype("float32")
    eager, compiled = FAMO(), FAMO()
    step = tf.function(lambda losses: compiled(losses), jit_compile=True)
    for losses in sequence:
        np.testing.assert_allclose(step(tf.constant(losses)).numpy(), eager(losses).numpy(), rtol=1e-5)
    np.testing.assert_allclose(compiled.logits.numpy(), eager.logits.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"learning_rate": -0.1}, r"`learning_rate` must be in \[0.0, inf\); received learning_rate=-0.1"),
        ({"weight_decay": -1.0}, r"`weight_decay` must be in \[0.0, inf\); received weight_decay=-1.0"),
        ({"epsilon": 0.0}, r"`epsilon` must be in \(0.0, inf\); received epsilon=0.0"),
        ({"min_losses": [0.1, -1.0]}, r"`min_losses` must contain finite, non-negative numbers; received"),
        ({"min_losses": [0.1, 0.2], "num_terms": 3}, r"`num_terms`=3 disagrees with the 2 entries of `min_losses`"),
    ],
)
def test_bad_arguments_name_themselves(arguments, message):
    with pytest.raises(ValueError, match=message):
        FAMO(**arguments)


def test_min_losses_fix_the_number_of_terms_and_round_trip():
    balancer = FAMO(min_losses=[0.1, 0.2, 0.0], learning_rate=0.1, weight_decay=1e-5)
    assert balancer.num_terms == 3 and balancer.built
    copy = FAMO.from_config(balancer.get_config())
    assert copy.min_losses == [0.1, 0.2, 0.0] and copy.learning_rate == 0.1 and copy.weight_decay == 1e-5
    assert not balancer.trainable_variables  # FAMO trains its logits itself
