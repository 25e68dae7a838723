"""Tests of the advection problem: the exact solution against the method of
characteristics and finite differences, terms, sampling, periodic networks,
serialization and a short training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.pde as pde_lib
from keras_balance.pde import AdvectionPDE
from keras_balance.pinn import PINNModel, build_pinn


@pytest.mark.parametrize("c", [30.0, 1.0, -2.5])
def test_exact_is_transported_and_satisfies_the_equation(c):
    pde = AdvectionPDE(c=c)
    rng = np.random.default_rng(0)
    x, t = rng.uniform(0.1, 2 * math.pi - 0.1, (50, 1)), rng.uniform(0.01, 0.99, (50, 1))
    # Constant along the characteristics x - c t = const.
    np.testing.assert_allclose(pde.exact(x + c * 0.3, t + 0.3), pde.exact(x, t), atol=1e-12)
    np.testing.assert_allclose(pde.exact(x, np.zeros_like(x)), np.sin(x), atol=1e-15)
    h = 1e-6
    u_t = (pde.exact(x, t + h) - pde.exact(x, t - h)) / (2 * h)
    u_x = (pde.exact(x + h, t) - pde.exact(x - h, t)) / (2 * h)
    np.testing.assert_allclose(u_t + c * u_x, 0.0, atol=1e-7 * max(1.0, abs(c)))
    preds = pde.exact_preds(x, t)
    np.testing.assert_allclose(preds, np.concatenate([pde.exact(x, t), u_t, u_x], axis=1), atol=1e-6 * abs(c) + 1e-8)
    # Periodic in x with period 2 pi.
    np.testing.assert_allclose(pde.exact(np.zeros_like(t), t), pde.exact(np.full_like(t, 2 * math.pi), t), atol=1e-12)


@pytest.mark.parametrize("means", ["batch", "own"])
def test_terms(means):
    pde = AdvectionPDE(means=means)
    points = pde.sample(120, 30, seed=4).astype("float64")
    x, t = points[:, :1], points[:, 1:]
    preds = pde.exact_preds(x, t)
    terms = pde.compute_loss(x, t, preds)
    assert [term.shape for term in terms] == [(150, 1)] * 2
    assert max(float(tf.reduce_max(term)) for term in terms) < 1e-20
    still = np.concatenate([np.sin(x), np.zeros_like(x), np.cos(x)], axis=1)  # u = sin(x) for all t
    residual, initial = (float(tf.reduce_mean(term)) for term in pde.compute_loss(x, t, still))
    rows = slice(None) if means == "batch" else slice(0, 120)
    np.testing.assert_allclose(residual, np.mean((30.0 * np.cos(x[rows])) ** 2), rtol=1e-10)
    assert initial == 0.0


def test_time_axis_sampling_and_periodic_network():
    pde = AdvectionPDE()
    assert pde.term_names == ("L_f", "L_i") and pde.time_domain == (0.0, 1.0)
    assert pde.periods == (2 * math.pi, None) and pde.boundary_edges == ("bottom",)
    points = pde.sample(40, 12, seed=0, method="sobol")
    assert np.all(points[40:, 1] == 0) and np.all((points[:, 0] >= 0) & (points[:, 0] <= 2 * math.pi + 1e-6))
    network = build_pinn(pde, width=8, depth=2, seed=0)
    t = np.linspace(0, 1, 5).reshape(-1, 1).astype("float32")
    left = network(np.concatenate([np.zeros_like(t), t], axis=1)).numpy()
    right = network(np.concatenate([np.full_like(t, 2 * math.pi), t], axis=1)).numpy()
    np.testing.assert_allclose(left, right, atol=1e-5)


def test_config_round_trip_and_name():
    pde = AdvectionPDE(c=50.0, means="own")
    again = pde_lib.deserialize(pde_lib.serialize(pde))
    assert type(again) is AdvectionPDE and again.get_config() == pde.get_config()
    assert AdvectionPDE().get_config() == {"c": 30.0}
    assert type(pde_lib.get("advection")) is AdvectionPDE


@pytest.mark.parametrize("name, value", [("c", float("nan")), ("c", "fast"), ("means", "all")])
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        AdvectionPDE(**{name: value})


def test_a_few_training_steps_reduce_the_loss():
    pde = AdvectionPDE()
    keras.utils.set_random_seed(0)
    model = PINNModel(pde, build_pinn(pde, width=16, depth=2, seed=0), balancer="sum")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    points = pde.sample(256, 64, seed=0)
    losses = model.fit(points, batch_size=len(points), epochs=20, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses[::5]
