"""A step whose gradients are not finite, behind finite terms, is skipped whole.

`tanh` saturates on an infinite input, so the terms stay finite while the
backward pass multiplies inf by 0: dL/dW is NaN. `sqrt(0)` inside a term does
the same. Such a step must leave the parameters, the optimizer and the
balancer as they were, be counted in History's `skipped_steps`, and warn once
per fit.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance import BalancedModel, balancers

BALANCERS = ["relobralo", "pcgrad", "sum", "lr_annealing", "uncertainty"]


class Two(BalancedModel):
    """Two terms on one small network: a fit and a (sqrt-able) smoothness term."""

    term_names = ("fit", "size")
    use_sqrt = False

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        fit = tf.reduce_mean(tf.square(y_pred - y))
        size = tf.reduce_mean(tf.square(y_pred))
        if self.use_sqrt:
            # sqrt(0) has an infinite derivative: d/dW sqrt(mean(0 * W)) = inf * 0 = NaN.
            size = size + tf.sqrt(tf.reduce_mean(0.0 * y_pred))
        return [fit, size]


def make(balancer, seed=0, use_sqrt=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = Two(inputs, keras.layers.Dense(1)(hidden), balancer=balancer)
    model.use_sqrt = use_sqrt
    return model


def data(poison=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype("float32")
    y = np.sin(x[:, :1]).astype("float32")
    if poison:
        x = x.copy()
        x[20, 0] = np.inf
    return x, y


def state(model):
    return ([v.numpy().copy() for v in model.trainable_variables],
            [v.numpy().copy() for v in model.optimizer.variables],
            [v.numpy().copy() for v in model.balancer.variables if v is not model.balancer.term_losses])


def assert_same(a, b):
    for group_a, group_b in zip(a, b):
        assert len(group_a) == len(group_b)
        for u, v in zip(group_a, group_b):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("name", BALANCERS)
def test_a_non_finite_gradient_behind_finite_terms_skips_the_step(name, mode):
    model = make(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=mode == "eager", jit_compile=mode == "xla")
    x, y = data()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    before = state(model)
    bad_x, _ = data(poison=True)
    terms = model.compute_loss_terms(bad_x, y, model(bad_x))
    assert all(np.isfinite(float(t)) for t in terms)  # the fault hides behind finite terms
    history = model.fit(bad_x, y, batch_size=32, epochs=1, verbose=0)
    assert_same(state(model), before)
    assert history.history["skipped_steps"] == [1.0]
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    # Training goes on from where it was: the next finite step is applied.
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [0.0]
    assert not np.array_equal(model.trainable_variables[0].numpy(), before[0][0])


@pytest.mark.parametrize("name", ["relobralo", "pcgrad"])
def test_sqrt_of_zero_inside_a_term_skips_the_step(name):
    model = make(name, use_sqrt=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    x, y = data()
    model(x)
    model.optimizer.build(model.trainable_variables)
    before = state(model)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert history.history["skipped_steps"] == [2.0, 2.0]
    assert_same(state(model), before)


def test_skipped_steps_are_the_run_without_those_batches():
    """Poisoned batches in between change nothing: the trajectory is the clean run's."""
    x, y = data()
    bad_x, _ = data(poison=True)
    clean = make(balancers.get("relobralo", seed=3))
    clean.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    noisy = make(balancers.get("relobralo", seed=3))
    noisy.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    for _ in range(3):
        clean.fit(x, y, batch_size=32, epochs=1, verbose=0)
        noisy.fit(x, y, batch_size=32, epochs=1, verbose=0)
        noisy.fit(bad_x, y, batch_size=32, epochs=1, verbose=0)
    assert_same(state(noisy), state(clean))


def test_a_warning_once_per_fit(caplog):
    model = make("sum")
    model.compile(optimizer="adam")
    bad_x, y = data(poison=True)
    with caplog.at_level(logging.WARNING, logger="keras_balance"):
        model.fit(bad_x, y, batch_size=8, epochs=3, verbose=0)
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "epoch 1" in warnings[0].getMessage() and "NaN or infinite" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_balance"):
        model.fit(bad_x, y, batch_size=8, epochs=1, verbose=0)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 1


def test_a_finite_fit_does_not_warn(caplog):
    model = make("relobralo")
    model.compile(optimizer="adam")
    x, y = data()
    with caplog.at_level(logging.WARNING, logger="keras_balance"):
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert history.history["skipped_steps"] == [0.0, 0.0]
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


DISTRIBUTED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import test_nonfinite_gradients as t
import keras
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = t.make(sys.argv[2])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
x, y = t.data()
model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
before = t.state(model)
bad_x, _ = t.data(poison=True)  # the bad row lands on the second replica only
history = model.fit(bad_x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
assert history.history["skipped_steps"] == [1.0], history.history
t.assert_same(t.state(model), before)
history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
assert history.history["skipped_steps"] == [0.0], history.history
print("OK")
"""


@pytest.mark.parametrize("name", ["relobralo", "pcgrad"])
def test_skipped_under_a_distribution_strategy(name):
    """Two replicas, the non-finite gradient on one of them: both skip, nothing changes."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    here = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", DISTRIBUTED, here, name], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
