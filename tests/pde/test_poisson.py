"""Tests of the Poisson problem: the exact solution satisfies the equation and the
boundary condition (finite differences and automatic differentiation), terms,
sampling, serialization and a short training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.pde as pde_lib
from keras_balance.pde import PoissonPDE
from keras_balance.pde.base import EDGES
from keras_balance.pinn import PINNModel, build_pinn

CONFIGS = [{}, {"a": 2.0, "b": -3.0, "n": 1}, {"a": 0.5, "b": 0.0, "n": 3, "boundary": "per_edge"}]


@pytest.mark.parametrize("config", CONFIGS)
def test_exact_satisfies_the_equation_by_finite_differences(config):
    pde = PoissonPDE(**config)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.05, 0.95, (60, 1)), rng.uniform(0.05, 0.95, (60, 1))
    h = 1e-4
    u = pde.exact(x, y)
    laplacian = (pde.exact(x + h, y) + pde.exact(x - h, y) + pde.exact(x, y + h) + pde.exact(x, y - h) - 4 * u) / h**2
    scale = 2 * (pde.n * math.pi) ** 2 * max(abs(pde.a), 1.0)
    np.testing.assert_allclose(-laplacian, pde.source(x, y), rtol=0, atol=1e-5 * scale)
    # On the four edges u equals the boundary data b e^x cos(y), which is not 0.
    s = np.linspace(0, 1, 17).reshape(-1, 1)
    zero, one = np.zeros_like(s), np.ones_like(s)
    for ex, ey in ((zero, s), (one, s), (s, zero), (s, one)):
        np.testing.assert_allclose(pde.exact(ex, ey), pde.b * np.exp(ex) * np.cos(ey), rtol=0, atol=1e-14)


def test_exact_preds_match_automatic_differentiation():
    pde = PoissonPDE()
    points = pde.sample(50, 20, seed=1).astype("float64")
    x, y = tf.constant(points[:, :1]), tf.constant(points[:, 1:])
    with tf.GradientTape(persistent=True) as outer:
        outer.watch([x, y])
        with tf.GradientTape(persistent=True) as inner:
            inner.watch([x, y])
            u = pde.exact(x, y)
        u_x, u_y = inner.gradient(u, x), inner.gradient(u, y)
    u_xx, u_yy = outer.gradient(u_x, x), outer.gradient(u_y, y)
    preds = pde.exact_preds(points[:, :1], points[:, 1:])
    np.testing.assert_allclose(preds, np.concatenate([u, u_xx, u_yy], axis=1), rtol=1e-12, atol=1e-10)


def test_scales_of_source_and_boundary():
    pde = PoissonPDE()
    grid = pde.grid(201).astype("float64")
    source = np.abs(pde.source(grid[:, :1], grid[:, 1:])).max()
    np.testing.assert_allclose(source, 8 * math.pi**2, rtol=1e-3)  # 2 (2 pi)^2, about 79
    edges = grid[(grid[:, 0] % 1 == 0) | (grid[:, 1] % 1 == 0)]
    values = np.abs(pde.boundary_values(edges[:, :1], edges[:, 1:]))
    np.testing.assert_allclose([values.min(), values.max()], [0.1 * math.cos(1), 0.1 * math.e], rtol=1e-12)
    assert source / values.max() > 250
    assert pde.characteristic_scale == 1.0 and PoissonPDE(a=0.0, b=1.0).characteristic_scale == math.e


@pytest.mark.parametrize("boundary", ["combined", "per_edge"])
@pytest.mark.parametrize("means", ["batch", "own"])
def test_terms(boundary, means):
    pde = PoissonPDE(boundary=boundary, means=means)
    assert not pde.is_time_dependent and pde.time_domain is None
    points = pde.sample(100, 40, seed=0).astype("float64")
    x, y = points[:, :1], points[:, 1:]
    preds = pde.exact_preds(x, y)
    terms = pde.compute_loss(x, y, preds)
    assert len(terms) == (2 if boundary == "combined" else 5)
    assert max(float(tf.reduce_max(term)) for term in terms) < 1e-20
    zero = np.zeros_like(preds)  # u = 0: the boundary error is -g, the residual f
    values = [float(tf.reduce_mean(term)) for term in pde.compute_loss(x, y, zero)]
    f = pde.source(x, y)
    g2 = (pde.b * np.exp(x) * np.cos(y)) ** 2
    if means == "batch":
        np.testing.assert_allclose(values[0], np.mean(f**2), rtol=1e-10)
        if boundary == "combined":
            np.testing.assert_allclose(values[1], np.sum(g2[100:]) / 140, rtol=1e-10)
    else:
        np.testing.assert_allclose(values[0], np.mean(f[:100] ** 2), rtol=1e-10)
        if boundary == "per_edge":
            for i, edge in enumerate(EDGES):
                rows = slice(100 + 10 * i, 110 + 10 * i)
                np.testing.assert_allclose(values[1 + i], np.mean(g2[rows]), rtol=1e-10, err_msg=edge)


def test_static_problem_has_no_time():
    pde = PoissonPDE()
    assert pde.boundary_edges == EDGES
    with pytest.raises(ValueError, match="no time axis"):
        pde.time(np.zeros(1), np.zeros(1))


def test_config_round_trip_and_name():
    pde = PoissonPDE(a=2.0, b=0.5, n=3, boundary="per_edge", means="own")
    again = pde_lib.deserialize(pde_lib.serialize(pde))
    assert type(again) is PoissonPDE and again.get_config() == pde.get_config()
    assert PoissonPDE().get_config() == {"a": 1.0, "b": 0.1, "n": 2}
    assert type(pde_lib.get("poisson")) is PoissonPDE


@pytest.mark.parametrize("name, value", [("a", float("inf")), ("b", "1"), ("n", 0), ("n", 1.5),
                                         ("boundary", "per_axis"), ("means", None)])
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        PoissonPDE(**{name: value})


def test_a_few_training_steps_reduce_the_loss():
    pde = PoissonPDE()
    keras.utils.set_random_seed(0)
    model = PINNModel(pde, build_pinn(pde, width=16, depth=2, seed=0), balancer="sum")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    points = pde.sample(256, 64, seed=0)
    losses = model.fit(points, batch_size=len(points), epochs=20, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses[::5]
