"""Tests of `keras_balance.balancers.DWA` against an independent reference.

The reference below is written from the formula (METHODS.md, section A), in
float64 with plain loops, and does not use the package:

    w_i = L_i(t-1) / (L_i(t-2) + eps)
    lambda_i(t) = K exp(w_i / T) / sum_j exp(w_j / T);  lambda(0) = lambda(1) = 1

per step: L(t) is the loss of step t; per epoch: the mean over epoch t's steps.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused, assert_same_state, bad_arguments, random_sequence, state_of

from keras_balance import BalancedModel
from keras_balance.balancers import DWA
from keras_balance.callbacks import BalancerEpochEnd

RTOL = 1e-5
ATOL = 1e-6


# -- independent reference ----------------------------------------------------


def ref_dwa_weights(latest, before, temperature, epsilon=1e-12):
    k = len(latest)
    logits = [float(latest[i]) / (float(before[i]) + epsilon) / temperature for i in range(k)]
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    total = sum(exps)
    return [k * e / total for e in exps]


def ref_dwa(periods, temperature, epsilon=1e-12):
    """Weights of every period from the period losses (step losses or epoch means)."""
    out = []
    for t in range(len(periods) + 1):  # one more: the weights after the last period
        if t < 2:
            out.append([1.0] * len(periods[0]))
        else:
            out.append(ref_dwa_weights(periods[t - 1], periods[t - 2], temperature, epsilon))
    return np.array(out, dtype=np.float64)


def run(balancer, sequence, fn=None):
    fn = balancer if fn is None else fn
    return np.array([np.asarray(fn(tf.constant(np.asarray(v, np.float32)))) for v in sequence])


def run_epochs(balancer, epochs, fn=None):
    """Feed each epoch's steps, then close it; return the weights of every step."""
    weights = []
    for steps in epochs:
        weights.append(run(balancer, steps, fn))
        balancer.end_epoch()
    return weights


# -- per step: hand computation ---------------------------------------------------------

# K = 2, T = 2, per="step", 2 * softmax([a, b]) = [2 / (1 + e^(b - a)), 2 / (1 + e^(a - b))].
#   step 0, 1: [1, 1]
#   step 2: w = L(1) / L(0) = [1/2, 1/1] = [0.5, 1]; w / T = [0.25, 0.5], e^0.25 = 1.2840254
#           -> [2 / 2.2840254, ...] = [0.87564700, 1.12435300]
#   step 3: w = L(2) / L(1) = [0.5, 0.9]; w / T = [0.25, 0.45], e^0.2 = 1.2214028
#           -> [2 / 2.2214028, ...] = [0.90033201, 1.09966799]
#   step 4: w = L(3) / L(2) = [0 / 0.5, 0.7 / 0.9] = [0, 0.7777778]; w / T = [0, 0.3888889],
#           e^0.3888889 = 1.4753442 -> [2 / 2.4753442, ...] = [0.80796961, 1.19203039]
#   step 5: w = L(4) / L(3) = [0.3 / (0 + 1e-12), 0.3 / 0.7] = [3e11, 0.43]: term 0 takes
#           everything -> [2, 0] (the 0 is floored at the smallest normal float, ~1.2e-38)
STEP_SEQ = [[2.0, 1.0], [1.0, 1.0], [0.5, 0.9], [0.0, 0.7], [0.3, 0.3], [0.3, 0.3]]
STEP_HAND = [
    [1.0, 1.0],
    [1.0, 1.0],
    [0.87564700, 1.12435300],
    [0.90033201, 1.09966799],
    [0.80796961, 1.19203039],
    [2.0, 0.0],
]


def test_per_step_hand_computed_values():
    balancer = DWA(per="step")
    weights = run(balancer, STEP_SEQ)
    np.testing.assert_allclose(weights, STEP_HAND, rtol=2e-6, atol=1e-7)
    assert 0.0 < weights[5, 1] < 1e-30
    np.testing.assert_allclose(ref_dwa(STEP_SEQ, 2.0)[:6], STEP_HAND, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("temperature", [2.0, 0.5, 10.0])
@pytest.mark.parametrize("num_terms", [2, 4])
def test_per_step_matches_reference(temperature, num_terms):
    sequence = random_sequence(30, num_terms, seed=num_terms)
    balancer = DWA(temperature=temperature, per="step")
    weights = run(balancer, sequence)
    np.testing.assert_allclose(weights, ref_dwa(sequence, temperature)[:30], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(weights.sum(axis=1), num_terms, rtol=1e-5)
    assert int(balancer.step.numpy()) == 30


def test_per_step_end_epoch_is_a_no_op():
    balancer = DWA(per="step")
    assert balancer.needs_epoch_end is False
    run(balancer, STEP_SEQ[:3])
    before = state_of(balancer)
    balancer.end_epoch()
    BalancerEpochEnd(balancer).on_epoch_end(0)
    assert_same_state(state_of(balancer), before)


# -- per epoch: hand computation --------------------------------------------------------

# K = 2, T = 2, per="epoch"; the epoch means:
#   epoch 0: [3, 1], [1, 1], [2, 1]          -> mean [6/3, 3/3] = [2, 1]
#   epoch 1: [1, 2], [1, 0]                  -> mean [2/2, 2/2] = [1, 1]
#   epoch 2: [0.5, 1], [0.5, 0.8], [0.5, 0.9] -> mean [1.5/3, 2.7/3] = [0.5, 0.9]
#   epoch 3: [0.25, 0.9], [0.25, 0.9]        -> mean [0.25, 0.9]
# weights used during each epoch (constant within the epoch):
#   epoch 0, 1: [1, 1] (fewer than two epoch means)
#   epoch 2: w = mean(1) / mean(0) = [0.5, 1], as step 2 above -> [0.87564700, 1.12435300]
#   epoch 3: w = mean(2) / mean(1) = [0.5, 0.9], as step 3 above -> [0.90033201, 1.09966799]
#   after epoch 3 (epoch 4's weights): w = [0.25 / 0.5, 0.9 / 0.9] = [0.5, 1] -> [0.87564700, 1.12435300]
EPOCHS = [
    [[3.0, 1.0], [1.0, 1.0], [2.0, 1.0]],
    [[1.0, 2.0], [1.0, 0.0]],
    [[0.5, 1.0], [0.5, 0.8], [0.5, 0.9]],
    [[0.25, 0.9], [0.25, 0.9]],
]
EPOCH_HAND = [[1.0, 1.0], [1.0, 1.0], [0.87564700, 1.12435300], [0.90033201, 1.09966799]]
AFTER_EPOCH_3 = [0.87564700, 1.12435300]


def test_per_epoch_hand_computed_values():
    balancer = DWA()
    assert balancer.per == "epoch" and balancer.needs_epoch_end is True
    weights = run_epochs(balancer, EPOCHS)
    for epoch, used in enumerate(weights):
        # Constant within the epoch.
        np.testing.assert_allclose(used, [EPOCH_HAND[epoch]] * len(used), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)
    np.testing.assert_allclose(balancer.term_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)
    np.testing.assert_allclose(balancer.latest_epoch_losses.numpy(), [0.25, 0.9], rtol=1e-6)
    np.testing.assert_allclose(balancer.previous_epoch_losses.numpy(), [0.5, 0.9], rtol=1e-6)
    assert int(balancer.epochs_seen.numpy()) == 4
    # The accumulators are reset.
    np.testing.assert_array_equal(balancer.epoch_loss_sum.numpy(), [0.0, 0.0])
    assert int(balancer.epoch_steps.numpy()) == 0
    means = [np.mean(steps, axis=0) for steps in EPOCHS]
    np.testing.assert_allclose(ref_dwa(means, 2.0), EPOCH_HAND + [AFTER_EPOCH_3], rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("temperature", [2.0, 0.3])
def test_per_epoch_matches_reference(temperature):
    rng = np.random.default_rng(11)
    epochs = [rng.uniform(0.5, 2.0, size=(int(rng.integers(1, 6)), 3)) for _ in range(8)]
    balancer = DWA(temperature=temperature)
    weights = run_epochs(balancer, epochs)
    expected = ref_dwa([e.mean(axis=0) for e in epochs], temperature)
    for epoch, used in enumerate(weights):
        np.testing.assert_allclose(used, np.tile(expected[epoch], (len(used), 1)), rtol=RTOL, atol=ATOL)
        assert np.all(used == used[0])  # bit-for-bit constant within the epoch
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), expected[-1], rtol=RTOL, atol=ATOL)


def test_epoch_without_steps_changes_nothing():
    balancer = DWA(num_terms=2)
    balancer.end_epoch()  # nothing seen yet
    assert int(balancer.epochs_seen.numpy()) == 0
    run_epochs(balancer, EPOCHS[:3])
    before = state_of(balancer)
    balancer.end_epoch()  # an empty epoch
    balancer.end_epoch()
    assert_same_state(state_of(balancer), before)
    assert np.all(np.isfinite(balancer.epoch_weights.numpy()))
    run_epochs(balancer, EPOCHS[3:])
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)


def test_end_epoch_before_build_is_harmless():
    balancer = DWA()
    balancer.end_epoch()
    assert not balancer.built
    run_epochs(balancer, EPOCHS)
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)


def test_evaluate_uses_current_epoch_weights():
    balancer = DWA()
    run_epochs(balancer, EPOCHS[:2])
    run(balancer, EPOCHS[2][:1])
    before = state_of(balancer)
    total, weights = balancer.evaluate([1.0, 2.0])
    assert_same_state(state_of(balancer), before)
    np.testing.assert_allclose(weights.numpy(), EPOCH_HAND[2], rtol=2e-6)
    np.testing.assert_allclose(total.numpy(), EPOCH_HAND[2][0] + 2 * EPOCH_HAND[2][1], rtol=2e-6)


# -- scale invariance ----------------------------------------------------------------


@pytest.mark.parametrize("per", ["step", "epoch"])
@pytest.mark.parametrize("factor", [1e6, 1e-3])
def test_scale_invariance(per, factor):
    # Only ratios of a term to itself enter the weights.
    sequence = random_sequence(12, 3, seed=4)
    scaled = sequence.copy()
    scaled[:, 1] *= factor
    if per == "step":
        base = run(DWA(per="step"), sequence)
        other = run(DWA(per="step"), scaled)
    else:
        base = np.concatenate(run_epochs(DWA(), np.split(sequence, 4)))
        other = np.concatenate(run_epochs(DWA(), np.split(scaled, 4)))
    np.testing.assert_allclose(other, base, rtol=1e-5)


# -- finiteness ----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [2.0, 1e-3])
def test_finite_for_extreme_losses(temperature):
    sequence = [
        [0.0, 1.0, 2.0],
        [0.0, 1.0, 2.0],
        [1e-12, 1e12, 0.0],
        [1e12, 1e-12, 0.0],
        [0.0, 1e12, 1e-12],
        [3e38, 0.0, 1e-12],
        [0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
    ]
    weights = run(DWA(per="step", temperature=temperature), sequence)
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), 3.0, rtol=1e-5)
    balancer = DWA(temperature=temperature)
    used = run_epochs(balancer, [sequence[i : i + 2] for i in range(0, 8, 2)])
    assert all(np.all(np.isfinite(u)) for u in used)
    assert np.all(np.isfinite(balancer.epoch_weights.numpy()))
    np.testing.assert_allclose(balancer.epoch_weights.numpy().sum(), 3.0, rtol=1e-5)


# -- tf.function / XLA ---------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True])
def test_per_epoch_tf_function_matches_eager(jit_compile):
    eager = run_epochs(DWA(temperature=0.5), EPOCHS)
    balancer = DWA(temperature=0.5)
    fn = tf.function(lambda losses: balancer(losses), jit_compile=jit_compile)
    compiled = run_epochs(balancer, EPOCHS, fn=fn)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # end_epoch itself is graph-safe too.
    other = DWA(temperature=0.5, num_terms=2)
    close = tf.function(other.end_epoch, jit_compile=jit_compile)
    for steps in EPOCHS:
        run(other, steps, fn=tf.function(lambda losses: other(losses)))
        close()
    np.testing.assert_allclose(other.epoch_weights.numpy(), balancer.epoch_weights.numpy(), rtol=1e-6)


# -- NaN policy ------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [float("nan"), -float("inf")], ids=["nan", "-inf"])
def test_per_epoch_non_finite_step_stays_out_of_the_accumulators(bad_value):
    clean = DWA(num_terms=2)
    dirty = DWA(num_terms=2)
    for epoch, steps in enumerate(EPOCHS):
        for t, losses in enumerate(steps):
            if t == 1:
                before = state_of(dirty)
                returned = dirty([bad_value, 1.0]).numpy()
                assert_same_state(state_of(dirty), before)
                np.testing.assert_allclose(returned, EPOCH_HAND[epoch], rtol=2e-6)
            np.testing.assert_array_equal(dirty(losses).numpy(), clean(losses).numpy())
        clean.end_epoch()
        dirty.end_epoch()
        assert_same_state(state_of(dirty), state_of(clean))
    np.testing.assert_allclose(dirty.epoch_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)


def test_epoch_of_only_non_finite_steps_is_ignored():
    balancer = DWA(num_terms=2)
    run_epochs(balancer, EPOCHS[:3])
    before = state_of(balancer)
    balancer([float("nan"), 1.0])
    balancer.end_epoch()
    assert_same_state(state_of(balancer), before)


# -- BalancedModel and the callback ---------------------------------------------------


class TwoTerms(BalancedModel):
    term_names = ("a", "b")

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        a = tf.reduce_mean(tf.square(y - y_pred))
        b = tf.reduce_mean(tf.abs(y_pred))
        return [a, b]


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32") + 1.0).astype("float32")
    return x, y


def _model(balancer):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(0))(inputs)
    return TwoTerms(inputs, outputs, balancer=balancer)


def test_balanced_model_fit_calls_end_epoch():
    x, y = _data()
    model = _model(DWA(temperature=0.5))
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    logs = model.fit(x, y, batch_size=8, epochs=5, verbose=0, shuffle=False).history
    balancer = model.balancer
    assert int(balancer.epochs_seen.numpy()) == 5
    means = np.stack([logs["a"], logs["b"]], axis=1)
    assert not np.allclose(means[0], means[-1], rtol=1e-2)  # the epoch means do change
    expected = ref_dwa(means, 0.5)
    # The weights used in each epoch (logged at its last step).
    used = np.stack([logs["w_a"], logs["w_b"]], axis=1)
    np.testing.assert_allclose(used, expected[:5], rtol=1e-5, atol=1e-6)
    # After fit: the weights for the next epoch, from the last two epoch means.
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), expected[5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[5], 1.0)


def test_callback_with_a_plain_balancer_and_a_plain_model():
    balancer = DWA(num_terms=2)

    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(0))

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                terms = tf.stack([tf.reduce_mean(tf.square(y - y_pred)), tf.reduce_mean(tf.abs(y_pred))])
                total, _ = balancer.combine(terms)
            grads = tape.gradient(total, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            self.a.update_state(terms[0])
            self.b.update_state(terms[1])
            return {"a": self.a.result(), "b": self.b.result()}

        @property
        def metrics(self):
            return [self.a, self.b]

    model = Plain()
    model.a, model.b = keras.metrics.Mean(name="a"), keras.metrics.Mean(name="b")
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x, y = _data()
    logs = model.fit(
        x, y, batch_size=8, epochs=4, verbose=0, shuffle=False, callbacks=[BalancerEpochEnd(balancer)]
    ).history
    assert int(balancer.epochs_seen.numpy()) == 4
    means = np.stack([logs["a"], logs["b"]], axis=1)
    np.testing.assert_allclose(balancer.epoch_weights.numpy(), ref_dwa(means, 2.0)[4], rtol=1e-5, atol=1e-6)


# -- arguments -----------------------------------------------------------------------


BAD_ARGUMENTS = {"temperature": [0.0, -1.0, float("nan"), float("inf")], "epsilon": [-1e-3], "per": ["batch"]}


@pytest.mark.parametrize("name, value", bad_arguments(BAD_ARGUMENTS))
def test_bad_arguments(name, value):
    assert_refused(DWA, {name: value}, name)


def test_non_numeric_temperature():
    with pytest.raises(TypeError, match="temperature"):
        DWA(temperature="warm")


# -- checkpoints -----------------------------------------------------------------------


def test_checkpoint_per_epoch_mid_epoch(tmp_path):
    # Saved in the middle of epoch 2: the accumulators travel with the checkpoint.
    balancer = DWA(num_terms=2)
    run_epochs(balancer, EPOCHS[:2])
    run(balancer, EPOCHS[2][:1])
    path = tf.train.Checkpoint(balancer=balancer).save(str(tmp_path / "ckpt"))
    rest = [EPOCHS[2][1:]] + EPOCHS[3:]
    after = run_epochs(balancer, rest)
    other = DWA(num_terms=2)
    tf.train.Checkpoint(balancer=other).restore(path).assert_consumed()
    again = run_epochs(other, rest)
    for a, b in zip(again, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(other.epoch_weights.numpy(), AFTER_EPOCH_3, rtol=2e-6)
