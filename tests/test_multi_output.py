"""An ordinary multi-task Keras model trained with BalancedModel: one term per output."""

import keras
import numpy as np
import pytest
from helpers import LOSS_LEVEL, make

from keras_balance import BalancedModel, balancers


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    depth = (x @ np.array([[1.0], [0.5], [-1.0], [2.0]], "float32")).astype("float32")
    seg = np.digitize(x[:, 0], [-0.5, 0.5]).astype("int32")  # 3 classes
    return x, depth, seg


def _two_heads(balancer, seed=0):
    inputs = keras.Input((4,), name="features")
    trunk = keras.layers.Dense(16, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    depth = keras.layers.Dense(1, name="depth", kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(trunk)
    seg = keras.layers.Dense(3, activation="softmax", name="seg",
                             kernel_initializer=keras.initializers.GlorotUniform(seed + 2))(trunk)
    return BalancedModel(inputs, [depth, seg], balancer=balancer)


# NTK weighting needs per-point PDE terms (a PINNModel); tests/pinn/test_ntk.py checks its refusal here.
@pytest.mark.parametrize("name", [n for n in LOSS_LEVEL if n != "ntk"])
def test_every_loss_level_balancer_trains_a_two_head_model(name):
    x, depth, seg = _data()
    model = _two_heads(make(name, 2, seed=None))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss={"depth": "mse", "seg": "sparse_categorical_crossentropy"},
                  metrics={"seg": ["accuracy"]})
    history = model.fit(x, {"depth": depth, "seg": seg}, batch_size=32, epochs=4, verbose=0).history
    assert {"loss", "depth", "seg", "w_depth", "w_seg", "seg_accuracy"} <= set(history), sorted(history)
    for key in ("depth", "seg", "w_depth", "w_seg"):
        assert len(history[key]) == 4 and np.all(np.isfinite(history[key])), (name, key)
    assert history["depth"][-1] < history["depth"][0], name
    assert model.term_names == ("depth", "seg")


def test_terms_are_the_keras_losses_with_sample_weights():
    x, depth, seg = _data(32)
    model = _two_heads(balancers.Sum(weights=[2.0, 0.5]))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=["mse", "sparse_categorical_crossentropy"])
    weight = np.linspace(0.0, 2.0, 32).astype("float32")
    logs = model.evaluate(x, [depth, seg], sample_weight=[weight, weight], batch_size=32, verbose=0, return_dict=True)
    pred_depth, pred_seg = model.predict(x, verbose=0)
    mse = np.mean(weight * np.mean((depth - pred_depth) ** 2, axis=-1))
    ce = np.mean(weight * -np.log(pred_seg[np.arange(32), seg]))
    np.testing.assert_allclose(logs["depth"], mse, rtol=1e-4)
    np.testing.assert_allclose(logs["seg"], ce, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 2.0 * mse + 0.5 * ce, rtol=1e-4)


def test_one_loss_for_every_output_and_outputs_without_loss():
    x, depth, seg = _data(32)
    model = _two_heads("sum")
    model.compile(optimizer="adam", loss="mse")
    assert model.term_names == ("depth", "seg")
    model = _two_heads("sum")
    model.compile(optimizer="adam", loss=[None, "sparse_categorical_crossentropy"])
    assert model.term_names == ("seg",)
    history = model.fit(x, [depth, seg], epochs=1, verbose=0).history
    assert "w_seg" in history and "depth" not in history


def test_bad_loss_specifications_name_the_argument():
    model = _two_heads("sum")
    with pytest.raises(ValueError, match=r"`loss` names outputs \['dpeth'\].*\['depth', 'seg'\]"):
        model.compile(loss={"dpeth": "mse"})
    with pytest.raises(ValueError, match=r"one entry per output \(2"):
        model.compile(loss=["mse"])
    with pytest.raises(ValueError, match="Unknown balancer"):
        model.compile(loss="mse", balancer="nope")


def test_per_epoch_dwa_runs_through_fit_when_registered():
    if "dwa" not in LOSS_LEVEL:
        pytest.fail("DWA is not registered")
    x, depth, seg = _data()
    model = _two_heads("dwa")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=["mse", "sparse_categorical_crossentropy"])
    history = model.fit(x, [depth, seg], batch_size=32, epochs=4, verbose=0).history
    # Epochs 0 and 1 use weights 1; from epoch 2 the weights follow the epoch means.
    assert history["w_depth"][:2] == [1.0, 1.0]
    assert history["w_depth"][3] != 1.0
    np.testing.assert_allclose(history["w_depth"][3] + history["w_seg"][3], 2.0, rtol=1e-5)


def test_save_and_load_keeps_the_output_losses(tmp_path):
    x, depth, seg = _data(32)
    model = _two_heads("relobralo")
    model.compile(optimizer="adam", loss={"depth": "mse", "seg": "sparse_categorical_crossentropy"})
    model.fit(x, [depth, seg], epochs=1, verbose=0)
    model.save(tmp_path / "two_heads.keras")
    loaded = keras.models.load_model(tmp_path / "two_heads.keras")
    assert loaded.term_names == ("depth", "seg")
    a = model.evaluate(x, [depth, seg], verbose=0, return_dict=True)
    b = loaded.evaluate(x, [depth, seg], verbose=0, return_dict=True)
    for key in ("loss", "depth", "seg", "w_depth", "w_seg"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5)
