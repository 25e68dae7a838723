"""Saving and loading PDE problems: a user's own PDE subclass survives `model.save`
and `keras.models.load_model` without `custom_objects`, and configs written before
PDE classes were registered still load."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_balance import pde as pde_lib
from keras_balance.losses import BalancedLoss, ReLoBRaLoLoss
from keras_balance.pde import PDE, HelmholtzPDE, KirchhoffPDE
from keras_balance.pde.serialization import registered_name
from keras_balance.pinn import PINNModel, build_pinn


def sin(values):
    return tf.sin(values) if tf.is_tensor(values) else np.sin(values)


class SquarePoissonPDE(PDE):
    """-(u_xx + u_yy) = 2 (a pi)^2 sin(a pi x) sin(a pi y) on the unit square, u = 0 on the edges.

    The exact solution is u = sin(a pi x) sin(a pi y) (a whole number).
    """

    term_names = ("L_f", "L_b")
    derivatives = ("u", "u_xx", "u_yy")
    domain = ((0.0, 1.0), (0.0, 1.0))

    def __init__(self, a=1.0):
        self.a = float(a)

    def get_config(self):
        return {"a": self.a}

    def residuals(self, x, y, fields):
        w = self.a * math.pi
        source = 2.0 * w**2 * sin(w * x) * sin(w * y)
        residual = -(fields["u_xx"] + fields["u_yy"]) - source
        on_boundary = tf.reduce_max(tf.stack(list(self.boundary_masks(x, y).values())), axis=0)
        return [tf.square(residual), tf.square(on_boundary * fields["u"])]

    def exact(self, x, y):
        return sin(self.a * math.pi * x) * sin(self.a * math.pi * y)

    def exact_preds(self, x, y):
        u = np.asarray(self.exact(np.asarray(x, "float64"), np.asarray(y, "float64")))
        u = u.reshape(-1, 1)
        second = -((self.a * math.pi) ** 2) * u  # u_xx = u_yy
        return np.concatenate([u, second, second], axis=1)


def train_a_step(model, points, y=None):
    model.fit(points, y, batch_size=len(points), epochs=2, verbose=0)


def predict(model, points):
    return model.predict(points, verbose=0)


def test_a_subclass_is_registered_when_defined():
    name = registered_name(SquarePoissonPDE)
    assert name == f"{SquarePoissonPDE.__module__}>SquarePoissonPDE"
    assert keras.saving.get_registered_object(name) is SquarePoissonPDE
    assert keras.saving.get_registered_name(SquarePoissonPDE) == name
    helmholtz = "keras_balance.pde.helmholtz>HelmholtzPDE"
    assert keras.saving.get_registered_name(HelmholtzPDE) == helmholtz


def test_round_trip_of_a_user_pde():
    config = pde_lib.serialize(SquarePoissonPDE(a=2.0))
    assert config["class_name"] == "SquarePoissonPDE" and config["config"] == {"a": 2.0}
    restored = pde_lib.deserialize(config)
    assert type(restored) is SquarePoissonPDE and restored.get_config() == {"a": 2.0}


def test_pinn_model_with_a_user_pde_saves_and_loads(tmp_path):
    problem = SquarePoissonPDE(a=2.0)
    model = PINNModel(problem, build_pinn(problem, width=4, depth=1, seed=0), balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    points = problem.sample(12, 8, seed=0)
    train_a_step(model, points)
    path = tmp_path / "poisson.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    assert type(loaded.pde) is SquarePoissonPDE and loaded.pde.get_config() == {"a": 2.0}
    np.testing.assert_array_equal(predict(loaded, points), predict(model, points))
    np.testing.assert_array_equal(loaded.balancer.term_weights.numpy(),
                                  model.balancer.term_weights.numpy())
    assert int(loaded.balancer.step.numpy()) == 2


@pytest.mark.parametrize("make_loss", [lambda pde: ReLoBRaLoLoss(pde, seed=1),
                                       lambda pde: BalancedLoss(pde, "softadapt")],
                         ids=["relobralo_loss", "balanced_loss"])
def test_keras_loss_with_a_user_pde_saves_and_loads(tmp_path, make_loss):
    problem = SquarePoissonPDE(a=1.0)
    model = build_pinn(problem, width=4, depth=1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(problem))
    points = problem.sample(12, 8, seed=0)
    train_a_step(model, points, points)
    path = tmp_path / "poisson.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    loss = loaded.loss
    assert type(loss) is type(model.loss)
    assert type(loss.pde) is SquarePoissonPDE and loss.pde.get_config() == {"a": 1.0}
    assert loss.term_names == ("L_f", "L_b")
    np.testing.assert_array_equal(predict(loaded, points), predict(model, points))


def test_configs_without_a_registered_name_still_load():
    # The format of configs saved before PDE classes were registered.
    config = {"class_name": "HelmholtzPDE", "config": {"a2": 2.0, "boundary": "per_edge"}}
    helmholtz = pde_lib.deserialize(config)
    assert type(helmholtz) is HelmholtzPDE
    assert (helmholtz.a2, helmholtz.boundary) == (2.0, "per_edge")
    kirchhoff = pde_lib.deserialize({"class_name": "KirchhoffPDE", "config": {"width": 8.0}})
    assert type(kirchhoff) is KirchhoffPDE and kirchhoff.width == 8.0
    assert type(pde_lib.deserialize({"class_name": "SquarePoissonPDE", "config": {}})) is SquarePoissonPDE


def test_legacy_loss_and_model_configs_still_load():
    loss = ReLoBRaLoLoss(HelmholtzPDE(a2=2.0), seed=3)
    config = keras.losses.serialize(loss)
    config["config"]["terms"]["pde"] = {"class_name": "HelmholtzPDE", "config": {"a2": 2.0}}
    restored = keras.losses.deserialize(config)
    assert type(restored.pde) is HelmholtzPDE and restored.pde.a2 == 2.0

    pde = KirchhoffPDE(width=8.0)
    model = PINNModel(pde, build_pinn(pde, width=4, depth=1, seed=0))
    config = model.get_config()
    config["pde"] = {"class_name": "KirchhoffPDE", "config": {"width": 8.0}}
    assert PINNModel.from_config(config).pde.width == 8.0


def test_a_class_moved_to_another_module_loads_by_its_name():
    config = pde_lib.serialize(SquarePoissonPDE(a=3.0))
    config["module"], config["registered_name"] = "old_project", "old_project>SquarePoissonPDE"
    restored = pde_lib.deserialize(config)
    assert type(restored) is SquarePoissonPDE and restored.a == 3.0


def test_unknown_class_is_a_clear_error():
    with pytest.raises(ValueError, match="'NoSuchPDE'.*Define or import"):
        pde_lib.deserialize({"class_name": "NoSuchPDE", "config": {}})


def test_a_redefined_class_replaces_the_earlier_one():
    def define(a):
        class Redefined(SquarePoissonPDE):
            def __init__(self, a=a):
                super().__init__(a)

        return Redefined

    define(1.0)
    latest = define(5.0)
    restored = pde_lib.deserialize(pde_lib.serialize(latest()))
    assert type(restored) is latest and restored.a == 5.0
