"""Save and resume: an interrupted run continues exactly as the uninterrupted one.

The balancer state (weights, initial and previous losses, step counts,
random generator state, trainable parameters and their optimizer slots)
travels with `model.save` / `keras.models.load_model` (no `custom_objects`),
with `tf.train.Checkpoint`, and with `keras.callbacks.BackupAndRestore`, for a
`PINNModel` and for a plain Keras model compiled with a balanced loss.
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance import balancers
from keras_balance.callbacks import BalancerEpochEnd

PDE = kb.HelmholtzPDE()
POINTS = PDE.sample(24, 16, seed=0)
BEFORE, AFTER = 3, 3  # epochs (one step each) before and after the interruption
LOSS_LEVEL = [n for n, c in balancers.available().items() if c.kind == balancers.LOSS_LEVEL]


def _balancer(name):
    cls = balancers.available()[name]
    options = {}
    if "seed" in inspect.signature(cls.__init__).parameters:
        options["seed"] = 3
    if name == "prior_loss":
        options["prior_losses"] = [1e3, 1.0]
    if name == "lr_annealing":
        options["update_every"] = 2
    return balancers.get(name, **options)


def _pinn_model(name):
    keras.utils.set_random_seed(0)
    model = kb.PINNModel(PDE, kb.build_pinn(PDE, width=6, depth=1, seed=0), balancer=_balancer(name))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    return model


def _plain_model(name):
    keras.utils.set_random_seed(0)
    network = kb.build_pinn(PDE, width=6, depth=1, seed=0)
    network.compile(optimizer=keras.optimizers.Adam(1e-2), loss=kb.BalancedLoss(PDE, _balancer(name)),
                    jit_compile=False)
    return network


def _balancer_of(model):
    return model.balancer if isinstance(model, kb.BalancedModel) else model.loss.balancer


class Recorder(keras.callbacks.Callback):
    """The balancer's weights after every epoch (each epoch is one step here)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(np.array(_balancer_of(self.model).term_weights.numpy()))


def _epoch_end(model):
    """A plain model with a per-epoch balancer (DWA) needs its epoch-end callback, first."""
    if not isinstance(model, kb.BalancedModel) and _balancer_of(model).needs_epoch_end:
        return [BalancerEpochEnd(model.loss)]
    return []


def _fit(model, epochs, initial_epoch=0, callbacks=()):
    recorder = Recorder()
    model.fit(POINTS, POINTS, batch_size=len(POINTS), epochs=epochs, initial_epoch=initial_epoch,
              verbose=0, shuffle=False, callbacks=[*_epoch_end(model), recorder, *callbacks])
    return recorder.weights


def _state(model):
    return {v.path: np.array(v.numpy()) for v in _balancer_of(model).variables}


def _assert_same(reference, weights, model, resumed, where):
    np.testing.assert_allclose(np.array(weights), np.array(reference["weights"]), rtol=1e-6, atol=1e-9,
                               err_msg=f"{where}: weight trajectory")
    state = _state(resumed)
    assert state.keys() == reference["state"].keys()
    for path, value in reference["state"].items():
        np.testing.assert_allclose(state[path], value, rtol=1e-6, atol=1e-9, err_msg=f"{where}: {path}")
    for a, b in zip(resumed.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=f"{where}: parameters")


def _uninterrupted(make, name):
    model = make(name)
    weights = _fit(model, BEFORE + AFTER)
    return model, {"weights": weights, "state": _state(model)}


# One of each kind of state in the default suite; every balancer with `-m slow`.
REPRESENTATIVE = {"relobralo", "dwa", "uncertainty", "gradnorm", "pcgrad", "lr_annealing"}


def _cases(names):
    return [pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _cases(balancers.available()))
def test_save_and_load_model_resumes_the_trajectory(name, tmp_path):
    model, reference = _uninterrupted(_pinn_model, name)
    first = _pinn_model(name)
    weights = _fit(first, BEFORE)
    first.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")  # no custom_objects
    assert type(resumed) is kb.PINNModel and resumed.balancer.name == first.balancer.name
    assert int(resumed.optimizer.iterations.numpy()) == BEFORE
    weights += _fit(resumed, BEFORE + AFTER, initial_epoch=BEFORE)
    _assert_same(reference, weights, model, resumed, name)


# Not for a Keras loss: trainable parameters (uncertainty, IMTL-L), NTK traces (ntk, a PINNModel only).
@pytest.mark.parametrize("name", _cases([n for n in LOSS_LEVEL if n not in ("uncertainty", "imtl_l", "ntk")]))
def test_plain_keras_model_with_balanced_loss_resumes_after_load_model(name, tmp_path):
    model, reference = _uninterrupted(_plain_model, name)
    first = _plain_model(name)
    weights = _fit(first, BEFORE)
    first.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")
    assert isinstance(resumed.loss, kb.BalancedLoss)
    weights += _fit(resumed, BEFORE + AFTER, initial_epoch=BEFORE)
    _assert_same(reference, weights, model, resumed, name)


# Random state, per-epoch state, GradNorm's own optimizer, trainable
# parameters with their slots, and an update schedule.
CHECKPOINT_CASES = [
    pytest.param(_pinn_model, "relobralo", id="relobralo-PINNModel", marks=pytest.mark.slow),
    pytest.param(_plain_model, "relobralo", id="relobralo-plain"),
    pytest.param(_pinn_model, "dwa", id="dwa-PINNModel"),
    pytest.param(_plain_model, "dwa", id="dwa-plain", marks=pytest.mark.slow),
    pytest.param(_pinn_model, "gradnorm", id="gradnorm-PINNModel"),
    pytest.param(_pinn_model, "uncertainty", id="uncertainty-PINNModel", marks=pytest.mark.slow),
    pytest.param(_pinn_model, "lr_annealing", id="lr_annealing-PINNModel", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("make, name", CHECKPOINT_CASES)
def test_tf_train_checkpoint_resumes_the_trajectory(make, name, tmp_path):
    model, reference = _uninterrupted(make, name)
    first = make(name)
    weights = _fit(first, BEFORE)
    path = tf.train.Checkpoint(**kb.checkpoint_objects(first)).save(str(tmp_path / "ckpt"))
    resumed = make(name)
    resumed.build((None, 2))
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(**kb.checkpoint_objects(resumed)).restore(path).assert_existing_objects_matched()
    weights += _fit(resumed, BEFORE + AFTER, initial_epoch=BEFORE)
    _assert_same(reference, weights, model, resumed, name)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at_epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("make", [_pinn_model, _plain_model], ids=["PINNModel", "plain"])
@pytest.mark.parametrize("name", ["relobralo", "dwa", pytest.param("rlw", marks=pytest.mark.slow)])
def test_backup_and_restore_resumes_the_trajectory(make, name, tmp_path):
    model, reference = _uninterrupted(make, name)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    # The job dies after BEFORE epochs; a new process builds the same model and calls fit again.
    first = make(name)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(POINTS, POINTS, batch_size=len(POINTS), epochs=BEFORE + AFTER, verbose=0, shuffle=False,
                  callbacks=[*_epoch_end(first), recorder, backup, Interrupt(BEFORE)])
    weights = recorder.weights
    resumed = make(name)
    weights += _fit(resumed, BEFORE + AFTER, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    _assert_same(reference, weights, model, resumed, name)


def test_checkpoint_objects_names_the_balancer_of_a_plain_model_and_needs_a_compiled_model():
    plain = _plain_model("relobralo")
    objects = kb.checkpoint_objects(plain)
    assert objects["balancer"] is plain.loss.balancer and objects["optimizer"] is plain.optimizer
    assert "balancer" not in kb.checkpoint_objects(_pinn_model("relobralo"))  # tracked as a layer
    with pytest.raises(ValueError, match="must be compiled"):
        kb.checkpoint_objects(kb.build_pinn(PDE, width=4, depth=1, seed=0))
