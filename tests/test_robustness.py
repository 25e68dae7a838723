"""Training that survives bad input, runs under XLA and in every precision, and logs its balance."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import NAMES, REPRESENTATIVE, make

import keras_balance as kb
from keras_balance import balancers


def _balancer(name, num_terms=2):
    """A registered balancer for `num_terms` terms, seeded where it draws random numbers."""
    return make(name, num_terms, seed=1)


# -- non-finite terms ---------------------------------------------------------------------------


class Poisoned(kb.BalancedModel):
    """Two terms; the second is NaN (or inf) while the non-trainable `poison` variable is set."""

    term_names = ("fit", "penalty")

    def __init__(self, bad=float("nan"), **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.3))
        self.poison = self.add_weight(shape=(), initializer="zeros", trainable=False, name="poison")
        self.bad = bad

    def call(self, x):
        return self.dense(x)

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        fit = keras.ops.mean((y - y_pred) ** 2)
        penalty = 1e-2 * keras.ops.mean(y_pred**2) + 1e-3
        return [fit, tf.where(self.poison > 0, tf.constant(self.bad, "float32"), penalty)]


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")


def _snapshot(model):
    return {
        "params": [v.numpy().copy() for v in model.trainable_variables],
        "optimizer": [np.asarray(v.numpy()).copy() for v in model.optimizer.variables],
        "balancer": {v.path: v.numpy().copy() for v in model.balancer.variables if v is not model.balancer.term_losses},
    }


def _assert_unchanged(before, after):
    for a, b in zip(before["params"], after["params"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before["optimizer"], after["optimizer"]):
        np.testing.assert_array_equal(a, b)
    for path, value in before["balancer"].items():
        np.testing.assert_array_equal(value, after["balancer"][path], err_msg=path)


@pytest.mark.parametrize("bad, bad_steps", [(float("nan"), 1), (float("nan"), 5), (float("inf"), 1)],
                         ids=["nan-1-step", "nan-5-steps", "inf-1-step"])
@pytest.mark.parametrize("name", ["relobralo", "softadapt", "uncertainty", "mgda", "gradnorm", "lr_annealing"])
def test_non_finite_terms_skip_the_step_and_keep_every_state(name, bad_steps, bad):
    """Policy: a step with a non-finite term changes nothing (parameters, optimizer, balancer)."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = Poisoned(bad=bad, balancer=_balancer(name))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    before = _snapshot(model)
    model.poison.assign(1.0)
    logs = model.fit(x, y, batch_size=32, epochs=bad_steps, verbose=0).history
    assert not np.isfinite(logs["penalty"][-1])
    _assert_unchanged(before, _snapshot(model))
    # Training resumes where it stopped, with finite values.
    model.poison.assign(0.0)
    logs = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in logs.values())
    assert int(model.optimizer.iterations.numpy()) == 6
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)


def test_non_finite_step_is_skipped_under_xla():
    x, y = _data()
    model = Poisoned(balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    before = _snapshot(model)
    model.poison.assign(1.0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    _assert_unchanged(before, _snapshot(model))


def test_empty_batch_is_a_skipped_step():
    """Policy: the terms of an empty batch are NaN (a mean over no points), so the step is skipped."""
    pde = kb.HelmholtzPDE()
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer="relobralo")
    model.compile(optimizer="adam", jit_compile=False)
    points = pde.sample(16, 8, seed=0)
    model.fit(points, points, batch_size=len(points), epochs=2, verbose=0)
    before = _snapshot(model)
    empty = np.zeros((0, 2), dtype="float32")
    logs = model.train_on_batch(empty, empty, return_dict=True)
    assert not np.isfinite(logs["L_f"])
    _assert_unchanged(before, _snapshot(model))


@pytest.mark.parametrize("name", NAMES)
def test_zero_initial_loss_gives_finite_weights(name):
    """A term that is exactly 0 at the first step (and later) never yields NaN weights."""
    balancer = _balancer(name)
    if balancer.kind == balancers.LOSS_LEVEL:
        for losses in ([0.0, 1.0], [0.0, 0.5], [0.2, 0.0], [0.0, 0.0]):
            weights = balancer(losses).numpy()
            assert np.all(np.isfinite(weights)), (losses, weights)
    else:
        jacobian = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], dtype="float32")
        for losses in ([0.0, 1.0], [0.0, 0.5], [0.0, 0.0]):
            direction = balancer.aggregate(jacobian, losses).numpy()
            assert np.all(np.isfinite(direction)) and np.all(np.isfinite(balancer.term_weights.numpy()))


def test_reloaded_model_with_a_different_number_of_terms_is_an_error(tmp_path):
    pde = kb.HelmholtzPDE()
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer="relobralo")
    model.compile(optimizer="adam")
    points = pde.sample(16, 8, seed=0)
    model.fit(points, points, batch_size=len(points), epochs=1, verbose=0)
    model.save(tmp_path / "two.keras")
    # The same run's weights loaded into a model with K = 5 (one boundary term per edge).
    five = kb.PINNModel(kb.HelmholtzPDE(boundary="per_edge"), kb.build_pinn(pde, width=8, depth=1, seed=0),
                        balancer="relobralo")
    five.compile(optimizer="adam")
    with pytest.raises(ValueError, match="relobralo|shape"):
        five.load_weights(tmp_path / "two.keras")
    # Recompiling a loaded model with other term names keeps K or says why not.
    loaded = keras.models.load_model(tmp_path / "two.keras")
    with pytest.raises(ValueError, match="built for 2 loss terms but received 3"):
        loaded.compile(optimizer="adam", term_names=["a", "b", "c"])


def test_balancer_reused_on_a_second_model_is_an_error():
    balancer = balancers.get("relobralo")
    pde = kb.HelmholtzPDE()
    first = kb.PINNModel(pde, kb.build_pinn(pde, width=4, depth=1, seed=0), balancer=balancer)
    first.compile(optimizer="adam", balancer=balancer)  # the same model again is fine
    with pytest.raises(ValueError, match="already balances the model"):
        kb.PINNModel(pde, kb.build_pinn(pde, width=4, depth=1, seed=0), balancer=balancer)
    copy = type(balancer).from_config(balancer.get_config())
    kb.PINNModel(pde, kb.build_pinn(pde, width=4, depth=1, seed=0), balancer=copy)


@pytest.mark.parametrize("value", [0.0, -1e-3])
def test_gradnorm_non_positive_learning_rate_is_an_error(value):
    with pytest.raises(ValueError, match="learning_rate"):
        balancers.get("gradnorm", learning_rate=value)


# -- XLA: every balancer, both PDEs -----------------------------------------------------------------


# Every balancer on Helmholtz, one of each family on Kirchhoff (its fourth
# derivatives take seconds to compile); the whole Kirchhoff row runs with `-m slow`.
KIRCHHOFF_DEFAULT = {"relobralo", "uncertainty", "mgda", "gradnorm"}
XLA_CASES = [pytest.param(name, "helmholtz", id=f"{name}-helmholtz",
                          marks=() if name in REPRESENTATIVE or name in KIRCHHOFF_DEFAULT else pytest.mark.slow)
             for name in NAMES] + [
    pytest.param(name, "kirchhoff", id=f"{name}-kirchhoff",
                 marks=() if name in KIRCHHOFF_DEFAULT else pytest.mark.slow)
    for name in NAMES
]


@pytest.mark.parametrize("name, pde_name", XLA_CASES)
def test_every_balancer_trains_both_pdes_under_xla(name, pde_name):
    pde = kb.pde.get(pde_name)
    points = pde.sample(12, 8, seed=0)
    keras.utils.set_random_seed(0)
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=4, depth=1, seed=0), balancer=_balancer(name, pde.num_terms))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model.jit_compile
    logs = model.fit(points, points, batch_size=len(points), epochs=2, verbose=0).history
    assert all(np.isfinite(values[-1]) for values in logs.values()), logs
    assert int(model.optimizer.iterations.numpy()) == 2


# -- precision -------------------------------------------------------------------------------------


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    yield request.param
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize("name", ["relobralo", "uncertainty", "mgda", "gradnorm"])
def test_float64_training(name, floatx64):
    pde = kb.HelmholtzPDE()
    points = pde.sample(16, 8, seed=0).astype("float64")
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer=_balancer(name))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    logs = model.fit(points, points, batch_size=len(points), epochs=3, verbose=0).history
    assert all(v.dtype == "float64" for v in model.solution.trainable_variables)
    assert all(np.isfinite(values[-1]) for values in logs.values())
    assert model.balancer.term_weights.dtype in ("float32", "float64")


@pytest.mark.parametrize("name", ["relobralo", "uncertainty", "mgda", "pcgrad"])
def test_mixed_precision_training(name, mixed):
    """Mixed policies: the network computes in 16 bits, the balancer in float32."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.stack([x[:, 0] - x[:, 1], 10.0 * x[:, 2]], axis=1).astype("float32")
    inputs = keras.Input((4,))
    trunk = keras.layers.Dense(16, activation="tanh")(inputs)
    outputs = {
        "a": keras.layers.Dense(1, dtype="float32", name="a")(trunk),
        "b": keras.layers.Dense(1, dtype="float32", name="b")(trunk),
    }
    model = kb.BalancedModel(inputs, outputs, balancer=_balancer(name))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"a": "mse", "b": "mse"}, jit_compile=True)
    assert model.layers[1].compute_dtype == mixed.split("_")[1]
    if mixed == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logs = model.fit(x, {"a": y[:, :1], "b": y[:, 1:]}, batch_size=64, epochs=30, verbose=0).history
    assert model.balancer.compute_dtype == "float32" and model.balancer.term_weights.dtype == "float32"
    assert all(np.isfinite(values[-1]) for values in logs.values())
    assert logs["loss"][-1] < logs["loss"][0]


def test_mixed_precision_pinn(mixed):
    pde = kb.HelmholtzPDE()
    points = pde.sample(16, 8, seed=0)
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    logs = model.fit(points, points, batch_size=len(points), epochs=3, verbose=0).history
    assert model.balancer.term_weights.dtype == "float32"
    assert all(np.isfinite(values[-1]) for values in logs.values())


# -- logging -------------------------------------------------------------------------------------


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [[float(v) for v in row] for row in rows[1:]]


@pytest.mark.parametrize("frequency", ["epoch", "step", 2])
def test_balance_history_for_a_balanced_model(frequency, tmp_path):
    pde = kb.HelmholtzPDE()
    points = pde.sample(16, 8, seed=0)
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer="relobralo")
    model.compile(optimizer="adam", jit_compile=False)
    logger = kb.BalanceHistory(tmp_path / "run.csv", frequency=frequency, log_dir=tmp_path / "tb")
    history = model.fit(points, points, batch_size=8, epochs=2, verbose=0, callbacks=[logger])  # 3 steps/epoch
    header, rows = _read_csv(tmp_path / "run.csv")
    index = "epoch" if frequency == "epoch" else "step"
    assert header == [index, "L_f", "L_b", "w_L_f", "w_L_b"]
    expected = {"epoch": [0, 1], "step": [1, 2, 3, 4, 5, 6], 2: [2, 4, 6]}[frequency]
    assert [row[0] for row in rows] == expected
    # The last row is the balancer's record of the last step.
    np.testing.assert_allclose(rows[-1][3:], model.balancer.term_weights.numpy(), rtol=1e-6)
    np.testing.assert_allclose(rows[-1][1:3], model.balancer.term_losses.numpy(), rtol=1e-6)
    assert logger.history[index] == expected
    if frequency != "epoch":
        assert history.history[f"step/{index}"] == expected
        assert history.history["step/w_L_b"] == logger.history["w_L_b"]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    tags = set()
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        tags.update(value.tag for value in event.summary.value)
    assert {"balance/L_f", "balance/L_b", "balance/w_L_f", "balance/w_L_b"} <= tags


def test_balance_history_for_a_plain_keras_model_and_append(tmp_path):
    pde = kb.HelmholtzPDE()
    points = pde.sample(16, 8, seed=0)
    network = kb.build_pinn(pde, width=8, depth=1, seed=0)
    loss = kb.ReLoBRaLoLoss(pde, seed=0)
    network.compile(optimizer="adam", loss=loss, jit_compile=False)
    history = network.fit(points, points, batch_size=len(points), epochs=3, verbose=0,
                          callbacks=[kb.BalanceHistory(tmp_path / "run.csv")])
    # Per-epoch records reach Keras' History.
    assert len(history.history["w_L_b"]) == 3
    assert history.history["w_L_f"][-1] == pytest.approx(float(loss.term_weights[0]))
    network.fit(points, points, batch_size=len(points), epochs=5, initial_epoch=3, verbose=0,
                callbacks=[kb.BalanceHistory(tmp_path / "run.csv", append=True)])
    header, rows = _read_csv(tmp_path / "run.csv")
    assert header == ["epoch", "L_f", "L_b", "w_L_f", "w_L_b"]
    assert [row[0] for row in rows] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(rows[-1][1:3], loss.term_losses, rtol=1e-6)


def test_balance_history_arguments():
    with pytest.raises(ValueError, match="frequency"):
        kb.BalanceHistory(frequency="batch")
    with pytest.raises(ValueError, match="frequency"):
        kb.BalanceHistory(frequency=0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="found no balancer"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[kb.BalanceHistory()])


def test_plot_command_draws_a_saved_history(tmp_path):
    from keras_balance import cli

    pde = kb.HelmholtzPDE()
    points = pde.sample(16, 8, seed=0)
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=1, seed=0), balancer="softadapt")
    model.compile(optimizer="adam", jit_compile=False)
    model.fit(points, points, batch_size=len(points), epochs=4, verbose=0,
              callbacks=[kb.BalanceHistory(tmp_path / "run.csv")])
    assert cli.main(["plot", str(tmp_path / "run.csv"), "--out", str(tmp_path / "figures")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["run_losses.png", "run_weights.png"]
    assert all((tmp_path / "figures" / name).stat().st_size > 1000 for name in pngs)
