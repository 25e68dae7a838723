"""BalancedModel: the training step, its metrics, and its contracts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance import BalancedModel
from keras_balance.balancers import GradientBalancer, ReLoBRaLo, Sum


@keras.saving.register_keras_serializable(package="keras_balance_tests")
class TwoTerms(BalancedModel):
    """Regression with a fit term and a (differently scaled) smoothness term."""

    term_names = ("fit", "small")

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        fit = tf.reduce_mean(tf.square(y - y_pred))
        small = 1e-4 * tf.reduce_mean(tf.square(y_pred))
        return [fit, small]


class MeanAggregator(GradientBalancer):
    """Test-only gradient balancer: the mean of the rows of the Jacobian."""

    summary = "mean of the per-term gradients"

    def gramian_weights(self, gramian):
        k = tf.shape(gramian)[0]
        return tf.ones([k], gramian.dtype) / tf.cast(k, gramian.dtype)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32") + 0.1).astype("float32")
    return x, y


def _functional(cls=TwoTerms, seed=0, **kwargs):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(hidden)
    return cls(inputs, outputs, **kwargs)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_functional_model_logs_terms_and_weights(jit_compile):
    x, y = _data()
    model = _functional(balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    logs = history.history
    assert {"loss", "fit", "small", "w_fit", "w_small"} <= set(logs)
    assert len(logs["fit"]) == 3
    assert logs["fit"][-1] < logs["fit"][0]
    w = np.array([logs["w_fit"][-1], logs["w_small"][-1]])
    np.testing.assert_allclose(w, model.balancer.term_weights.numpy(), rtol=1e-6)
    np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-5)
    assert int(model.balancer.step.numpy()) == 12  # 4 batches x 3 epochs


def test_loss_is_the_weighted_sum_of_the_terms():
    x, y = _data()
    model = _functional(balancer=Sum(weights=[2.0, 3.0]))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], 2.0 * logs["fit"] + 3.0 * logs["small"], rtol=1e-6)
    assert (logs["w_fit"], logs["w_small"]) == (2.0, 3.0)


def test_one_step_matches_a_hand_written_step():
    """SGD on sum_i w_i L_i with the balancer's weights, written out by hand."""
    x, y = _data(16)
    model = _functional(balancer=ReLoBRaLo(rho=1.0))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(x, y)  # step 0: weights 1
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x)
        terms = model.compute_loss_terms(x, y, pred)
    losses = np.array([float(t) for t in terms])
    reference = ReLoBRaLo(rho=1.0)
    reference(model.balancer.previous_losses.numpy())
    expected_w = reference(losses).numpy()
    per_term = [tape.gradient(t, model.trainable_variables) for t in terms]
    grads = [expected_w[0] * g0 + expected_w[1] * g1 for g0, g1 in zip(*per_term)]
    model.train_on_batch(x, y)
    np.testing.assert_allclose(model.balancer.term_weights.numpy(), expected_w, rtol=1e-5)
    for b, g, v in zip(before, grads, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), rtol=1e-4, atol=1e-6)


def test_evaluate_does_not_advance_the_balancer():
    x, y = _data()
    model = _functional(balancer="relobralo")
    model.compile(optimizer="adam")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    state = [v.numpy().copy() for v in model.balancer.variables if v is not model.balancer.term_losses]
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    for before, after in zip(state, [v for v in model.balancer.variables if v is not model.balancer.term_losses]):
        np.testing.assert_array_equal(before, after.numpy())
    np.testing.assert_allclose([logs["w_fit"], logs["w_small"]], model.balancer.term_weights.numpy())


def test_balancer_and_term_names_can_be_set_in_compile():
    x, y = _data()
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(inputs)

    class Plain(BalancedModel):
        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            err = tf.square(y - y_pred)
            return tf.stack([tf.reduce_mean(err), tf.reduce_max(err), tf.reduce_mean(tf.abs(y_pred))])

    model = Plain(inputs, outputs)
    model.compile(optimizer="adam", balancer="relobralo", term_names=["mse", "worst", "size"])
    history = model.fit(x, y, epochs=1, verbose=0)
    assert {"mse", "worst", "size", "w_mse", "w_worst", "w_size"} <= set(history.history)
    assert isinstance(model.balancer, ReLoBRaLo) and model.balancer.num_terms == 3


def test_subclassed_model_without_functional_graph():
    class Sub(BalancedModel):
        term_names = ("a", "b")

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            return [tf.reduce_mean(tf.square(y - y_pred)), tf.reduce_mean(tf.abs(y - y_pred))]

    x, y = _data()
    model = Sub(balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, y, epochs=5, verbose=0)
    assert history.history["a"][-1] < history.history["a"][0]


def test_missing_term_names_is_a_clear_error():
    class NoNames(BalancedModel):
        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            return [tf.reduce_mean(y_pred)]

    inputs = keras.Input((3,))
    model = NoNames(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="term_names"):
        model.compile(optimizer="adam")


def test_missing_compute_loss_terms_is_a_clear_error():
    inputs = keras.Input((3,))
    model = BalancedModel(inputs, keras.layers.Dense(1)(inputs), term_names=["a"])
    model.compile(optimizer="adam")
    x, y = _data(8)
    with pytest.raises(TypeError, match="override `compute_loss_terms"):
        model.fit(x, y, verbose=0)


@pytest.mark.parametrize("returned", ["list", "tensor"])
def test_wrong_number_of_terms_is_a_clear_error(returned):
    class ThreeTerms(TwoTerms):
        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            terms = super().compute_loss_terms(x, y, y_pred) + [tf.reduce_mean(y_pred)]
            return terms if returned == "list" else tf.stack(terms)

    model = _functional(ThreeTerms)
    model.compile(optimizer="adam")
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"ThreeTerms.compute_loss_terms returned .*3.*expected.*2"):
        model.fit(x, y, verbose=0)


def test_non_scalar_term_is_a_clear_error():
    class PerSample(TwoTerms):
        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            return [tf.square(y - y_pred), tf.reduce_mean(y_pred)]

    model = _functional(PerSample)
    model.compile(optimizer="adam")
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"term 0 of shape \(8, 1\).*scalar"):
        model.fit(x, y, batch_size=8, verbose=0)


def test_bad_term_names_and_balancer():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(inputs)
    with pytest.raises(ValueError, match="term_names"):
        BalancedModel(inputs, outputs, term_names=["a", "a"])
    with pytest.raises(ValueError, match="Unknown balancer: balancer='nope'"):
        BalancedModel(inputs, outputs, term_names=["a"], balancer="nope")


def test_nan_term_does_not_poison_the_balancer():
    class Spiky(TwoTerms):
        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            fit, small = super().compute_loss_terms(x, y, y_pred)
            # A batch whose first feature is exactly 99 produces a NaN term.
            poison = tf.reduce_any(tf.equal(x[:, 0], 99.0))
            return [tf.where(poison, tf.constant(np.nan), fit), small]

    x, y = _data(48)
    bad_x = x.copy()
    bad_x[16:32, 0] = 99.0
    model = _functional(Spiky, balancer=ReLoBRaLo(rho=1.0))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(x[:16], y[:16], batch_size=16, epochs=2, verbose=0)
    weights_before = model.balancer.term_weights.numpy().copy()
    step_before = int(model.balancer.step.numpy())
    model.train_on_batch(bad_x[16:32], y[16:32])
    np.testing.assert_array_equal(model.balancer.term_weights.numpy(), weights_before)
    assert int(model.balancer.step.numpy()) == step_before
    model.train_on_batch(x[:16], y[:16])
    assert np.all(np.isfinite(model.balancer.term_weights.numpy()))
    assert int(model.balancer.step.numpy()) == step_before + 1


def test_regularization_losses_are_added():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(10.0))(inputs)
    model = TwoTerms(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = _data(16)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    penalty = 10.0 * float(np.sum(model.layers[-1].kernel.numpy() ** 2))
    np.testing.assert_allclose(logs["loss"], logs["fit"] + logs["small"] + penalty, rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_level_contract_drives_the_update(jit_compile):
    """A mean aggregator must move the weights exactly like Sum with weights 1/K."""
    x, y = _data(16)
    by_gradient = _functional(balancer=MeanAggregator())
    by_loss = _functional(balancer=Sum(weights=[0.5, 0.5]))
    for model in (by_gradient, by_loss):
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
        model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for a, b in zip(by_gradient.trainable_variables, by_loss.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_gradient.balancer.last_weights, [0.5, 0.5])


def test_config_round_trip_keeps_balancer_and_names():
    model = _functional(balancer=ReLoBRaLo(alpha=0.9, temperature=1.0, rho=1.0, seed=5))
    config = model.get_config()
    assert config["term_names"] == ["fit", "small"]
    restored = TwoTerms.from_config(config)
    assert isinstance(restored.balancer, ReLoBRaLo)
    assert restored.balancer.get_config() == model.balancer.get_config()
    assert restored.term_names == ("fit", "small")


def test_save_and_load_model_restores_the_balancer(tmp_path):
    x, y = _data()
    model = _functional(balancer=ReLoBRaLo(rho=1.0, seed=2))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TwoTerms) and isinstance(loaded.balancer, ReLoBRaLo)
    for a, b in zip(model.balancer.variables, loaded.balancer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Both continue identically: same weights, same optimizer state.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(loaded.balancer.term_weights.numpy(), model.balancer.term_weights.numpy(), rtol=1e-5)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_trains_under_a_distribution_strategy():
    x, y = _data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _functional(balancer="relobralo")
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert int(model.balancer.step.numpy()) == 8
    assert all(np.isfinite(history.history["w_fit"]))
    np.testing.assert_allclose(history.history["w_fit"][-1] + history.history["w_small"][-1], 2.0, rtol=1e-5)


def test_built_from_a_sequential_stack():
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model = TwoTerms(net.inputs, net.outputs, balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["fit"][-1] < history.history["fit"][0]
    # The layers are shared with the stack: training the model trains `net`.
    np.testing.assert_allclose(net(x).numpy(), model(x).numpy(), rtol=1e-6)
