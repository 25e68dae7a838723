"""BalancedModel with gradient-level balancers: the per-term gradients and the update.

The checks recompute the per-term gradients with a separate GradientTape and
combine them in NumPy, independently of `BalancedModel`'s code.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import default_or_slow

from keras_balance import BalancedModel, balancers
from keras_balance.balancers import GradientBalancer, GradNorm, LRAnnealing


class FixedWeights(GradientBalancer):
    """A test aggregator: constant weights, so the expected update is known."""

    def __init__(self, weights=(2.0, 3.0), **kwargs):
        self.fixed = tuple(float(w) for w in weights)
        super().__init__(**kwargs)

    def gramian_weights(self, gramian):
        return tf.constant(self.fixed, tf.float64)

    def get_config(self):
        return {**super().get_config(), "weights": self.fixed}


class ScaledFixedWeights(FixedWeights):
    weights_all_parameters = True


def two_head_model(balancer, seed=0):
    """A shared trunk and two heads; one term per head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(8, activation="tanh", name="trunk_1")(inputs)
    h = keras.layers.Dense(6, activation="tanh", name="trunk_2")(h)
    a = keras.layers.Dense(1, name="head_a")(h)
    b = keras.layers.Dense(1, name="head_b")(h)
    return BalancedModel(inputs, {"a": a, "b": b}, balancer=balancer)


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, {"a": np.sin(x[:, :1]).astype("float32"), "b": (3.0 * x[:, 1:2] ** 2).astype("float32")}


def per_term_gradients(model, x, y):
    """Per-term gradients of the mse of each head, keyed by variable path."""
    grads = []
    for key in ("a", "b"):
        with tf.GradientTape() as tape:
            pred = model(x)[key]
            loss = tf.reduce_mean(tf.square(pred - y[key]))
        g = tape.gradient(loss, model.trainable_variables)
        grads.append({v.path: (None if gi is None else gi.numpy()) for v, gi in zip(model.trainable_variables, g)})
    return grads


def one_sgd_step(model, x, y, **compile_kwargs):
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse", **compile_kwargs)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return {path: before[path] - v.numpy() for path, v in ((v.path, v) for v in model.trainable_variables)}


@pytest.mark.parametrize("mode", ["loop", "vectorized"])
@pytest.mark.parametrize("cls, head_scaled", [(FixedWeights, False), (ScaledFixedWeights, True)])
def test_update_is_the_combination_of_per_term_gradients(mode, cls, head_scaled):
    x, y = data()
    model = two_head_model(cls((2.0, 3.0)))
    model(x)
    expected_grads = per_term_gradients(model, x, y)
    update = one_sgd_step(model, x, y, jacobian_mode=mode)
    for path, step in update.items():
        ga, gb = expected_grads[0][path], expected_grads[1][path]
        if ga is not None and gb is not None:  # shared trunk: J^T w
            expected = 2.0 * ga + 3.0 * gb
        elif ga is not None:  # head a: plain gradient, or weighted for loss-weighting methods
            expected = (2.0 if head_scaled else 1.0) * ga
        else:
            expected = (3.0 if head_scaled else 1.0) * gb
        np.testing.assert_allclose(step, expected, rtol=2e-4, atol=1e-6, err_msg=path)


def test_features_mode_combines_the_representation_gradient():
    x, y = data()
    model = two_head_model(FixedWeights((2.0, 3.0)))
    model(x)
    expected_grads = per_term_gradients(model, x, y)
    update = one_sgd_step(model, x, y, jacobian_mode="features", feature_layer="trunk_2")
    for path, step in update.items():
        ga, gb = expected_grads[0][path], expected_grads[1][path]
        if ga is not None and gb is not None:
            # Trunk: the backward pass of sum_i w_i dL_i/dh equals sum_i w_i g_i.
            expected = 2.0 * ga + 3.0 * gb
        else:
            expected = ga if ga is not None else gb
        np.testing.assert_allclose(step, expected, rtol=2e-4, atol=1e-6, err_msg=path)


def test_features_mode_weights_come_from_the_representation():
    """With MGDA-like weights computed from the feature Jacobian, not the parameters'."""

    class FirstRowNorm(GradientBalancer):
        def gramian_weights(self, gramian):
            # Records the Gramian it saw through the weights: w = (G_00, G_11).
            return tf.stack([gramian[0, 0], gramian[1, 1]])

    x, y = data()
    model = two_head_model(FirstRowNorm())
    model(x)
    features = keras.Model(model.inputs, model.get_layer("trunk_2").output)
    with tf.GradientTape(persistent=True) as tape:
        h = features(x)
        tape.watch(h)
        la = tf.reduce_mean(tf.square(model.get_layer("head_a")(h) - y["a"]))
        lb = tf.reduce_mean(tf.square(model.get_layer("head_b")(h) - y["b"]))
    expected = [float(tf.reduce_sum(tf.square(tape.gradient(t, h)))) for t in (la, lb)]
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", jacobian_mode="features",
                  feature_layer="trunk_2")
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_allclose([history.history["w_a"][0], history.history["w_b"][0]], expected, rtol=1e-4)


@pytest.mark.parametrize("convention", ["authors", "paper"])
def test_lr_annealing_statistics_cover_the_kernels_layer_by_layer(convention):
    """The authors' convention: shared kernels only, max of the layers' max, mean of the layers' means.

    Recomputed from separate per-term gradients: the shared variables are
    trunk_1's and trunk_2's kernel and bias; the heads belong to one term each.
    """
    x, y = data()
    model = two_head_model(LRAnnealing(smoothing=0.0, mode="max", update_every=1, convention=convention))
    model(x)
    ga, gb = per_term_gradients(model, x, y)
    names = [v.path for v in model.trainable_variables if v.path.startswith("trunk")]
    if convention == "authors":
        kernels = [n for n in names if n.endswith("kernel")]
        numerator = max(np.abs(ga[n]).max() for n in kernels)
        denominator = np.mean([np.abs(gb[n]).mean() for n in kernels])
    else:
        numerator = max(np.abs(ga[n]).max() for n in names)
        denominator = np.concatenate([np.abs(gb[n]).ravel() for n in names]).mean()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["w_b"][0], numerator / denominator, rtol=1e-4)
    assert history.history["w_a"][0] == 1.0


def test_modes_agree_under_xla():
    x, y = data()
    results = {}
    for mode in ("loop", "vectorized"):
        model = two_head_model(LRAnnealing(update_every=2))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jacobian_mode=mode, jit_compile=True)
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
        results[mode] = (history.history["w_b"], [v.numpy() for v in model.trainable_variables])
    np.testing.assert_allclose(results["loop"][0], results["vectorized"][0], rtol=1e-4)
    for a, b in zip(results["loop"][1], results["vectorized"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


#: The gradient-level methods that may hold their weights between updates.
HOLDING = ["lr_annealing", "gradnorm", "gradient_normalization", "mgda", "imtl_g", "cagrad",
           "nash_mtl", "fairgrad"]


def held(name, n):
    options = {"smoothing": 0.5} if name == "lr_annealing" else {}
    return balancers.get(name, update_every=n, **options)


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "dualproj", "aligned_mtl", "config", "gradvac"])
def test_projection_methods_refuse_update_every(name):
    with pytest.raises(ValueError, match="`update_every` must be 1 for .*received update_every=10.*current gradients"):
        balancers.get(name, update_every=10)
    assert balancers.get(name).update_every == 1


@pytest.mark.parametrize("name", HOLDING)
def test_update_every_is_a_config_argument(name):
    balancer = held(name, 7)
    assert type(balancer).from_config(balancer.get_config()).update_every == 7
    with pytest.raises(ValueError, match="`update_every` must be a positive integer; received update_every=0"):
        held(name, 0)


@pytest.mark.parametrize("name", HOLDING)
def test_held_weights_update_only_every_n_steps(name):
    x, y = data(n=32)
    model = two_head_model(held(name, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    weights = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(model.balancer.term_weights.numpy().tolist())

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[Record()])
    assert len(weights) == 8
    changes = [i for i in range(1, 8) if weights[i] != weights[i - 1]]
    assert changes == [3, 6]
    if name == "lr_annealing":
        assert weights[0][1] != 1.0  # step 0 is an update step
    assert int(model.balancer.step.numpy()) == 8


def test_gradnorm_uses_the_last_shared_kernel_and_survives_saving(tmp_path):
    x, y = data()
    model = two_head_model(GradNorm(alpha=1.5, learning_rate=0.1, optimizer="sgd"))
    model(x)
    kernel = model.get_layer("trunk_2").kernel
    norms = []
    for key in ("a", "b"):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)[key] - y[key]))
        norms.append(float(tf.norm(tape.gradient(loss, kernel))))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    # One SGD step of w from w = 1 at equal training rates (r = 1).
    n = np.array(norms)
    g = np.sign(n - n.mean()) * n
    w = np.maximum(1.0 - 0.1 * g, 1e-3)
    np.testing.assert_allclose(model.balancer.task_weights.numpy(), 2.0 * w / w.sum(), rtol=1e-4)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    path = tmp_path / "gradnorm.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.balancer, GradNorm)
    for a, b in zip(model.balancer.variables, restored.balancer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert restored.jacobian_mode == "loop"


def test_gradnorm_named_layer_must_be_shared():
    x, y = data()
    model = two_head_model(GradNorm(layer="head_a"))
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="head_a"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


def test_bad_jacobian_mode_and_feature_layer():
    model = two_head_model(FixedWeights())
    with pytest.raises(ValueError, match="jacobian_mode.*'loop'"):
        model.compile(optimizer="adam", loss="mse", jacobian_mode="pfor")
    with pytest.raises(ValueError, match="nope"):
        model.compile(optimizer="adam", loss="mse", jacobian_mode="features", feature_layer="nope")


def test_validation_uses_the_latest_weights_without_advancing():
    x, y = data()
    model = two_head_model(FixedWeights((2.0, 3.0)))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    step = int(model.balancer.step.numpy())
    result = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert int(model.balancer.step.numpy()) == step
    np.testing.assert_allclose(result["loss"], 2.0 * result["a"] + 3.0 * result["b"], rtol=1e-5)


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_update_schedule_is_the_same_for_one_or_several_steps_per_execution(run_eagerly):
    """The update-or-hold decision is read from the balancer's step inside the
    step (one step per execution, several, or eager): the same trajectory."""
    x, y = data(n=32)
    results = []
    for steps_per_execution in (1, 4):
        model = two_head_model(LRAnnealing(update_every=3, smoothing=0.5))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", steps_per_execution=steps_per_execution,
                      jit_compile=not run_eagerly, run_eagerly=run_eagerly)
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        results.append((history.history["w_b"], [v.numpy() for v in model.trainable_variables],
                        int(model.balancer.step.numpy())))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert results[0][2] == results[1][2] == 16


@pytest.mark.parametrize("name", default_or_slow(HOLDING, ("lr_annealing", "mgda")))
def test_update_schedule_follows_a_backup_and_restore(tmp_path, name):
    """Interrupted after an epoch and resumed with BackupAndRestore, an
    every-3-steps schedule (4 steps an epoch) ends where the uninterrupted run
    ends: Keras builds the train function before the restore, so the decision
    must come from the restored step variable, not from the build."""
    x, y = data(n=16)

    def run(interrupt):
        model = two_head_model(held(name, 3))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / f"backup_{interrupt}"), delete_checkpoint=False)

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if interrupt and epoch == 1:
                    raise RuntimeError("interrupted")

        if interrupt:
            with pytest.raises(RuntimeError, match="interrupted"):
                model.fit(x, y, batch_size=4, epochs=4, verbose=0, shuffle=False, callbacks=[backup, Interrupt()])
            model = two_head_model(held(name, 3))
            model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
        model.fit(x, y, batch_size=4, epochs=4, verbose=0, shuffle=False, callbacks=[backup])
        return model

    straight, resumed = run(False), run(True)
    assert int(resumed.balancer.step.numpy()) == int(straight.balancer.step.numpy()) == 16
    np.testing.assert_array_equal(resumed.balancer.term_weights.numpy(), straight.balancer.term_weights.numpy())
    for a, b in zip(straight.trainable_variables, resumed.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_update_schedule_continues_after_loading(tmp_path):
    x, y = data(n=20)
    model = two_head_model(LRAnnealing(update_every=4, smoothing=0.5))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)  # 5 steps: updates at 0 and 4
    path = tmp_path / "lr.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    weights = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(float(restored.balancer.term_weights.numpy()[1]))

    restored.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[Record()])
    # Steps 5..9: the next update is step 8, the fourth of this run.
    changes = [i for i in range(1, 5) if weights[i] != weights[i - 1]]
    assert changes == [3]
    assert int(restored.balancer.step.numpy()) == 10


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_update_schedule_after_skipped_steps_is_the_run_without_them(mode):
    """Non-finite batches are skipped whole: the every-3-steps schedule (read
    from the balancer's step) continues as if those batches were not there."""
    x, y = data(n=24)
    bad = {key: value.copy() for key, value in y.items()}
    bad["b"][:] = np.nan

    def run(with_bad_batches):
        model = two_head_model(LRAnnealing(update_every=3, smoothing=0.5))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=mode == "eager",
                      jit_compile=mode == "xla")
        for epoch in range(4):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
            if with_bad_batches and epoch % 2 == 0:
                history = model.fit(x, bad, batch_size=8, epochs=1, verbose=0, shuffle=False)
                assert history.history["skipped_steps"] == [3.0]
        return model

    clean, noisy = run(False), run(True)
    assert int(noisy.balancer.step.numpy()) == int(clean.balancer.step.numpy()) == 12
    np.testing.assert_array_equal(noisy.balancer.term_weights.numpy(), clean.balancer.term_weights.numpy())
    for a, b in zip(clean.trainable_variables, noisy.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
