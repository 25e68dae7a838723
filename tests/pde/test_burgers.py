"""Tests of the Burgers problem: the Cole-Hopf reference against independent
computations, the terms, sampling, the time axis, serialization and a short training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.pde as pde_lib
from keras_balance.pde import BurgersPDE
from keras_balance.pde.burgers import cole_hopf
from keras_balance.pinn import PINNModel, build_pinn

NU = 0.01 / math.pi


def gauss_hermite_burgers(x, t, nodes=200, nu=NU):
    """u by Gauss-Hermite quadrature of the Cole-Hopf integral, in log space.

    Independent of `cole_hopf`: a different rule (Gauss-Hermite nodes and
    weights from NumPy instead of the trapezoidal rule), and u alone, from
    the integral of sin(pi (x - eta)) rather than from its derivative form.
    """
    z, weights = np.polynomial.hermite.hermgauss(nodes)
    x, t = np.asarray(x, "float64").reshape(-1, 1), np.asarray(t, "float64").reshape(-1, 1)
    y = x - np.sqrt(4.0 * nu * t) * z
    exponent = np.log(weights) - np.cos(math.pi * y) / (2.0 * math.pi * nu)
    w = np.exp(exponent - exponent.max(axis=1, keepdims=True))
    return -np.sum(w * np.sin(math.pi * y), axis=1) / np.sum(w, axis=1)


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 400), np.linspace(-0.02, 0.02, 41)])
    t = np.concatenate([rng.uniform(0.0, 1.0, 400), np.full(41, 1.0)])
    return x, t


@pytest.fixture(scope="module")
def reference(points):
    return np.stack(cole_hopf(*points, NU), axis=1)


# -- the reference solution ------------------------------------------------------


def test_reference_agrees_with_gauss_hermite_and_more_nodes(points, reference):
    # Two independent evaluations of the same integral agree to round-off
    # (measured: 3e-15), far inside the 1e-6 the reference promises,
    # including the 41 points across the shock at t = 1.
    np.testing.assert_allclose(reference[:, 0], gauss_hermite_burgers(*points), rtol=0, atol=1e-10)
    doubled = cole_hopf(*points, NU, nodes_per_width=16)
    np.testing.assert_allclose(reference, np.stack(doubled, axis=1), rtol=1e-10, atol=1e-10)
    # The shock is there: u falls from 0.71 to -0.71 across |x| <= 0.02 at t = 1.
    shock = reference[-41:, 0]
    assert shock[0] > 0.7 and shock[-1] < -0.7 and np.all(np.diff(shock) < 0)


def test_reference_values_at_known_points():
    # u(t, 0) = 0 by the odd symmetry of the problem; u(0, x) = -sin(pi x); u(t, +-1) = 0.
    t = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(cole_hopf(np.zeros(11), t, NU)[0], 0.0, atol=1e-12)
    x = np.linspace(-1, 1, 21)
    np.testing.assert_allclose(cole_hopf(x, np.zeros(21), NU)[0], -np.sin(np.pi * x), atol=1e-14)
    for edge in (-1.0, 1.0):
        np.testing.assert_allclose(cole_hopf(np.full(11, edge), t, NU)[0], 0.0, atol=1e-12)
    # Odd in x: u(t, -x) = -u(t, x).
    u, u_minus = cole_hopf([0.3, 0.7], [0.5, 0.9], NU)[0], cole_hopf([-0.3, -0.7], [0.5, 0.9], NU)[0]
    np.testing.assert_allclose(u_minus, -u, atol=1e-13)


def test_steepest_slope_is_basdevants():
    # C. Basdevant et al., Comput. Fluids 14 (1986): the slope at x = 0 reaches
    # its extremum -152.00516 at t = 1.6037 / pi (at t = 1 / pi, when the
    # inviscid solution would break, it is only -34.2).
    times = np.linspace(1.59, 1.62, 301) / math.pi
    slope = cole_hopf(np.zeros_like(times), times, NU)[2]
    assert abs(times[np.argmin(slope)] * math.pi - 1.6037) < 2e-4
    np.testing.assert_allclose(slope.min(), -152.00516, atol=2e-5)
    np.testing.assert_allclose(cole_hopf([0.0], [1.0 / math.pi], NU)[2], -34.2263, atol=1e-3)


def test_reference_satisfies_burgers_by_finite_differences():
    # Central differences of u alone (not of the returned derivatives),
    # away from the shock so that h = 1e-4 resolves the solution.
    rng = np.random.default_rng(1)
    x, t = rng.uniform(-0.9, 0.9, 60), rng.uniform(0.05, 0.95, 60)
    keep = np.abs(x) > 0.2
    x, t = x[keep], t[keep]
    h = 1e-4

    def u(a, b):
        return cole_hopf(a, b, NU)[0]

    u0 = u(x, t)
    u_t = (u(x, t + h) - u(x, t - h)) / (2 * h)
    u_x = (u(x + h, t) - u(x - h, t)) / (2 * h)
    u_xx = (u(x + h, t) - 2 * u0 + u(x - h, t)) / h**2
    np.testing.assert_allclose(u_t + u0 * u_x - NU * u_xx, 0.0, atol=1e-5)
    _, ref_t, ref_x, ref_xx = cole_hopf(x, t, NU)
    np.testing.assert_allclose(ref_x, u_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ref_xx, u_xx, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ref_t, u_t, rtol=1e-6, atol=1e-6)


def inviscid(x, t):
    """The inviscid solution before the shock by the characteristics x = xi - t sin(pi xi), u = -sin(pi xi)."""
    low, high = np.full_like(x, -1.0), np.full_like(x, 1.0)
    for _ in range(60):  # bisection; for |x| >= 0.3 at these times only one characteristic arrives
        middle = (low + high) / 2
        above = middle - t * np.sin(np.pi * middle) > x
        high, low = np.where(above, middle, high), np.where(above, low, middle)
    return -np.sin(np.pi * (low + high) / 2)


def test_small_viscosity_does_not_overflow_and_tends_to_the_inviscid_solution():
    # F spans exp(1 / (pi nu)) = exp(1e4): every exponent is shifted before exp.
    # Away from the shock the solution is the inviscid one up to O(nu).
    x, t = np.array([-0.5, -0.3, 0.3, 0.5]), np.array([0.5, 0.2, 0.2, 0.5])
    u, u_t, u_x, u_xx = cole_hopf(x, t, 1e-4 / math.pi)
    assert np.all(np.isfinite(np.stack([u, u_t, u_x, u_xx])))
    np.testing.assert_allclose(u, inviscid(x, t), atol=1e-4)  # measured 6e-5
    assert abs(u[-1] + 0.5946) < 1e-3


# -- the problem ------------------------------------------------------------------


def test_exact_and_exact_preds(points, reference):
    pde = BurgersPDE()
    x, t = points[0].reshape(-1, 1), points[1].reshape(-1, 1)
    preds = pde.exact_preds(x, t)
    assert preds.shape == (len(x), 4) and pde.derivatives == ("u", "u_y", "u_x", "u_xx")
    np.testing.assert_allclose(preds, reference, rtol=1e-12, atol=1e-12)
    exact = pde.exact(x, t)
    assert exact.shape == x.shape
    np.testing.assert_allclose(exact[:, 0], reference[:, 0], atol=1e-12)
    # Tensors go through tf.numpy_function, in a graph too.
    graph = tf.function(lambda a, b: pde.exact(a, b))(tf.constant(x), tf.constant(t))
    np.testing.assert_allclose(graph.numpy(), exact, atol=1e-12)


def test_exact_keeps_recent_point_sets():
    pde = BurgersPDE()
    grid = pde.grid(11).astype("float64")
    first = pde.exact(grid[:, :1], grid[:, 1:])
    assert len(pde._cache) == 1
    again = pde.exact(grid[:, :1], grid[:, 1:])
    np.testing.assert_array_equal(first, again)
    assert len(pde._cache) == 1
    for n in (3, 4, 5, 6, 7):
        pde.exact(*np.split(pde.grid(n).astype("float64"), 2, axis=1))
    assert len(pde._cache) == 4


@pytest.mark.parametrize("options", [{}, {"boundary": "per_edge"}, {"means": "own"},
                                     {"boundary": "per_edge", "means": "own"}])
def test_terms_of_the_reference_vanish_and_of_a_wrong_field_do_not(options):
    pde = BurgersPDE(**options)
    points = pde.sample(200, 60, seed=3).astype("float64")
    x, t = points[:, :1], points[:, 1:]
    preds = pde.exact_preds(x, t)
    terms = pde.compute_loss(x, t, preds)
    assert len(terms) == pde.num_terms and all(term.shape == (260, 1) for term in terms)
    assert max(float(tf.reduce_max(term)) for term in terms) < 1e-20
    shifted = preds.copy()
    shifted[:, 0] += 0.1  # a constant shift breaks the initial and boundary conditions and the residual
    values = [float(tf.reduce_mean(term)) for term in pde.compute_loss(x, t, shifted)]
    assert all(value > 1e-4 for value in values), values
    if options.get("means") != "own":
        # The initial term sees the 20 points at t = 0: 20 / 260 of (0.1)^2.
        np.testing.assert_allclose(values[1], 20 / 260 * 0.01, rtol=1e-10)
    else:
        np.testing.assert_allclose(values[1], 0.01, rtol=1e-10)


def test_time_axis_and_sampling():
    pde = BurgersPDE()
    assert pde.is_time_dependent and pde.time_axis == 1 and pde.time_domain == (0.0, 1.0)
    assert pde.initial_term == "L_i" and pde.residual_term == "L_f"
    assert pde.term_names == ("L_f", "L_i", "L_b")
    assert pde.boundary_edges == ("left", "right", "bottom")
    points = pde.sample(100, 31, seed=0)
    interior, edges = points[:100], points[100:]
    assert np.all((np.abs(interior[:, 0]) < 1) & (interior[:, 1] > 0) & (interior[:, 1] < 1))
    left, right, bottom = edges[:11], edges[11:21], edges[21:]
    assert np.all(left[:, 0] == -1) and np.all(right[:, 0] == 1) and np.all(bottom[:, 1] == 0)
    assert len(bottom) == 10 and not np.any(edges[:, 1] == 1)  # nothing at the final time
    x, t = tf.constant(points[:, :1]), tf.constant(points[:, 1:])
    np.testing.assert_array_equal(pde.time(x, t).numpy(), points[:, 1:])
    np.testing.assert_array_equal(pde.initial_mask(x, t).numpy()[:, 0], (points[:, 1] == 0).astype("float32"))
    low = pde.sample(64, 30, seed=1, method="sobol")
    assert np.all(low[64:84, 0] ** 2 == 1) and np.all(low[84:, 1] == 0)


def test_config_round_trip_and_name():
    pde = BurgersPDE(nu=0.02, boundary="per_edge", means="own")
    config = pde_lib.serialize(pde)
    again = pde_lib.deserialize(config)
    assert type(again) is BurgersPDE and again.get_config() == pde.get_config()
    assert again.term_names == ("L_f", "L_i", "L_b_left", "L_b_right")
    assert BurgersPDE().get_config() == {"nu": 0.01 / math.pi}
    assert type(pde_lib.get("burgers")) is BurgersPDE


@pytest.mark.parametrize("name, value", [("nu", 0.0), ("nu", -1.0), ("nu", float("nan")),
                                         ("boundary", "periodic"), ("means", "mean")])
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        BurgersPDE(**{name: value})


def test_a_few_training_steps_reduce_the_loss():
    pde = BurgersPDE()
    keras.utils.set_random_seed(0)
    model = PINNModel(pde, build_pinn(pde, width=16, depth=2, seed=0), balancer="sum")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    points = pde.sample(256, 96, seed=0)
    history = model.fit(points, batch_size=len(points), epochs=20, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses[::5]
