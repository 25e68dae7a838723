"""GradDrop, DB-MTL and ExcessMTL in BalancedModel: a plain two-output Keras model, each training mode,
the skip policy with per-column state, saving and restoring it, and the refused combinations."""

import keras
import numpy as np
import pytest

from keras_balance import BalancedModel, balancers

NAMES = ["graddrop", "db_mtl", "excess_mtl"]
LOSSES = {"depth": "mse", "seg": "sparse_categorical_crossentropy"}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    depth = (x @ np.array([[1.0], [0.5], [-1.0], [2.0]], "float32")).astype("float32")
    seg = np.digitize(x[:, 0], [-0.5, 0.5]).astype("int32")
    return x, {"depth": depth, "seg": seg}


def _model(balancer, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    trunk = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    depth = keras.layers.Dense(1, name="depth")(trunk)
    seg = keras.layers.Dense(3, activation="softmax", name="seg")(trunk)
    return BalancedModel(inputs, [depth, seg], balancer=balancer)


@pytest.mark.parametrize("name, mode", [("graddrop", "features"), ("graddrop", "loop"), ("db_mtl", "loop"),
                                        ("excess_mtl", "vectorized")])
def test_each_method_trains_a_two_output_model(name, mode):
    x, y = _data()
    model = _model("sum")
    extra = {"feature_layer": "trunk"} if mode == "features" else {}
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSSES, balancer=name, jacobian_mode=mode, **extra)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history
    for key in ("depth", "seg", "w_depth", "w_seg", "loss"):
        assert len(history[key]) == 4 and np.all(np.isfinite(history[key])), (name, key)
    assert history["depth"][-1] < history["depth"][0], name
    assert int(model.balancer.step.numpy()) == 8
    if model.balancer.column_state:
        assert model.balancer.num_columns == sum(int(np.prod(v.shape)) for v in model.get_layer("trunk").weights)


@pytest.mark.parametrize("name", ["db_mtl", "excess_mtl"])
def test_save_load_and_restore_into_a_new_model_carry_the_per_column_state(name, tmp_path):
    x, y = _data()
    model = _model(name)
    model.compile(optimizer="adam", loss=LOSSES)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    after = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False).history["loss"]
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.balancer.num_columns == model.balancer.num_columns
    # A new model whose balancer has not run yet (as BackupAndRestore restores into).
    fresh = _model(name)
    fresh.compile(optimizer="adam", loss=LOSSES)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "m.weights.h5")
    for other in (loaded, fresh):
        assert other.balancer.columns_built
        again = other.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False).history["loss"]
        np.testing.assert_allclose(again, after, rtol=1e-5)


@pytest.mark.parametrize("name", ["db_mtl", "excess_mtl", "graddrop"])
def test_a_non_finite_batch_leaves_every_variable_as_it_was(name):
    x, y = _data(32)
    model = _model(name)
    model.compile(optimizer="adam", loss=LOSSES, jit_compile=True)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.balancer.variables if v is not model.balancer.term_losses]
    weights = [v.numpy().copy() for v in model.trainable_variables]
    bad = {"depth": np.full_like(y["depth"], np.nan), "seg": y["seg"]}
    history = model.fit(x, bad, batch_size=32, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    after = [v.numpy() for v in model.balancer.variables if v is not model.balancer.term_losses]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(weights, model.trainable_variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_unusable_combinations_are_refused_with_the_argument_named():
    model = _model("db_mtl")
    with pytest.raises(ValueError, match=r"`jacobian_mode`.*received jacobian_mode='features'"):
        model.compile(optimizer="adam", loss=LOSSES, jacobian_mode="features", feature_layer="trunk")
    for name in NAMES:
        with pytest.raises(ValueError, match=r"`update_every` must be 1.*update_every=2"):
            balancers.get(name, update_every=2)
