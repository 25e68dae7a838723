"""Tests of the Kirchhoff plate problem: exact (Navier) solution, residual terms,
hand-computed values, constants."""

import math
import re

import numpy as np
import pytest
from helpers import bad_arguments, domain_points, near_edge, split

from keras_balance.pde import KirchhoffPDE

CONFIGS = {
    "default": {},
    "rect_10x5": {"width": 10.0, "height": 5.0},
    "nu0.3": {"nu": 0.3},
    "rect_4x7_nu0_p0.1": {"width": 4, "height": 7, "nu": 0.0, "p0": 0.1, "E": 1000.0, "h": 0.5},
}


def make(name):
    return KirchhoffPDE(**CONFIGS[name])


def rigidity(E, h, nu):
    return E * h**3 / (12.0 * (1.0 - nu**2))


# -- constants -------------------------------------------------------------------


def test_default_rigidity_and_amplitude():
    pde = KirchhoffPDE()
    assert pde.D == pytest.approx(20.8333, abs=5e-5)
    assert pde.D == pytest.approx(30000.0 * 0.2**3 / (12.0 * (1.0 - 0.2**2)), rel=1e-14)
    amplitude = 0.015 / (math.pi**4 * (250.0 / 12.0) * (1 / 100 + 1 / 100) ** 2)
    assert pde.amplitude == pytest.approx(amplitude, rel=1e-13)
    assert pde.amplitude == pytest.approx(0.018479, rel=1e-4)
    # The maximum of the exact solution is the amplitude, reached at the centre.
    assert float(pde.exact(np.array(5.0), np.array(5.0))) == pytest.approx(pde.amplitude, rel=1e-14)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_amplitude_closed_form(config):
    kwargs = {"width": 10.0, "height": 10.0, "p0": 0.015, "E": 30000.0, "h": 0.2, "nu": 0.2}
    kwargs.update(CONFIGS[config])
    pde = KirchhoffPDE(**kwargs)
    D = rigidity(kwargs["E"], kwargs["h"], kwargs["nu"])
    assert pde.D == pytest.approx(D, rel=1e-14)
    W, H = kwargs["width"], kwargs["height"]
    expected = kwargs["p0"] / (math.pi**4 * D * (1 / W**2 + 1 / H**2) ** 2)
    assert pde.amplitude == pytest.approx(expected, rel=1e-13)
    x = np.array([[W / 2], [W / 4]])
    y = np.array([[H / 2], [H / 2]])
    np.testing.assert_allclose(
        pde.exact(x, y), expected * np.sin(np.pi * x / W) * np.sin(np.pi * y / H), rtol=1e-13
    )


# -- the exact solution satisfies the problem ------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["sample", "grid"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_solution_gives_zero_terms(config, where, dtype):
    pde = make(config)
    points = pde.sample(300, 80, seed=5) if where == "sample" else pde.grid(21)
    x, y = split(points, dtype)
    preds = pde.exact_preds(x, y).astype(dtype)
    terms = pde.compute_loss(x, y, preds)
    assert len(terms) == 3
    rtol = 1e-5 if dtype == "float32" else 1e-12
    (_, W), (_, H) = pde.domain
    curvature = pde.amplitude * (math.pi / min(W, H)) ** 2  # size of w_xx, w_yy
    tolerances = {
        "L_f": (pde.p0 * rtol) ** 2,  # D * biharmonic and the load are of size p0
        "L_b0": (pde.amplitude * rtol) ** 2,
        "L_b2": 2 * (curvature * rtol) ** 2,
    }
    # Near (not on) an edge, w and the moments are O(distance * their gradient).
    slope = pde.boundary_tolerance * math.pi * math.hypot(1 / W, 1 / H)
    allowance = {"L_f": 0.0, "L_b0": (slope * pde.amplitude) ** 2, "L_b2": 2 * (slope * curvature * 2) ** 2}
    near = near_edge(pde, points)
    for name, term in zip(pde.term_names, terms):
        values = term.numpy().ravel()
        assert term.shape == (len(points), 1)
        assert values.dtype == np.dtype(dtype)
        tol = tolerances[name]
        assert np.max(values[~near]) <= tol, f"{name}: {np.max(values[~near])} > {tol}"
        assert np.all(values[near] <= tol + allowance[name]), name


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_preds_match_finite_differences(config):
    pde = make(config)
    (_, W), (_, H) = pde.domain
    x, y = domain_points(pde, 40, seed=0)
    hx, hy = 2e-3 * W, 2e-3 * H

    def f(a, b):
        return np.asarray(pde.exact(a, b), "float64")

    def d2x(g):
        return lambda a, b: (g(a + hx, b) - 2 * g(a, b) + g(a - hx, b)) / hx**2

    def d2y(g):
        return lambda a, b: (g(a, b + hy) - 2 * g(a, b) + g(a, b - hy)) / hy**2

    expected = [f, d2x(f), d2y(f), d2x(d2x(f)), d2x(d2y(f)), d2y(d2y(f))]
    preds = pde.exact_preds(x, y)
    assert preds.shape == (40, 6) and preds.dtype == np.float64
    kx2, ky2 = (math.pi / W) ** 2, (math.pi / H) ** 2
    sizes = [1.0, kx2, ky2, kx2**2, kx2 * ky2, ky2**2]
    for column, (g, size) in enumerate(zip(expected, sizes)):
        np.testing.assert_allclose(
            preds[:, column : column + 1], g(x, y), rtol=0, atol=1e-4 * size * pde.amplitude,
            err_msg=pde.derivatives[column],
        )


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_solution_satisfies_pde_by_finite_differences(config):
    # Independent of exact_preds: a 13-point finite-difference biharmonic of `exact`.
    pde = make(config)
    (_, W), (_, H) = pde.domain
    x, y = domain_points(pde, 30, seed=2)
    h = 2e-3 * min(W, H)
    w = pde.exact

    def lap(a, b):
        return (w(a + h, b) + w(a - h, b) + w(a, b + h) + w(a, b - h) - 4 * w(a, b)) / h**2

    biharmonic = (lap(x + h, y) + lap(x - h, y) + lap(x, y + h) + lap(x, y - h) - 4 * lap(x, y)) / h**2
    np.testing.assert_allclose(pde.D * biharmonic, pde.load(x, y), rtol=0, atol=1e-4 * pde.p0)
    # Simple support: w = 0 and zero bending moment along every edge.
    t = np.linspace(0.0, 1.0, 17).reshape(-1, 1)
    zeros, ones = np.zeros_like(t), np.ones_like(t)
    for ex, ey, moment in (
        (0 * ones, H * t, "x"), (W * ones, H * t, "x"), (W * t, 0 * zeros, "y"), (W * t, H * ones, "y"),
    ):
        np.testing.assert_allclose(w(ex, ey), 0.0, atol=1e-15)
        w_xx = (w(ex + h, ey) - 2 * w(ex, ey) + w(ex - h, ey)) / h**2
        w_yy = (w(ex, ey + h) - 2 * w(ex, ey) + w(ex, ey - h)) / h**2
        m = w_xx + pde.nu * w_yy if moment == "x" else pde.nu * w_xx + w_yy
        np.testing.assert_allclose(m, 0.0, atol=1e-9 * pde.amplitude)


# -- perturbed solutions ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", ["default", "rect_10x5"])
def test_shifted_deflection(config, dtype):
    pde = make(config)
    n_int = 50
    points = pde.sample(n_int, 20, seed=6)
    x, y = split(points, dtype)
    preds = pde.exact_preds(x, y)
    preds[:, 0] += 0.1
    L_f, L_b0, L_b2 = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds.astype(dtype)))
    rtol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(L_b0[n_int:], 0.01, rtol=rtol)
    np.testing.assert_array_equal(L_b0[:n_int], 0.0)
    assert np.max(L_f) <= (pde.p0 * (1e-5 if dtype == "float32" else 1e-12)) ** 2
    assert np.max(L_b2) < 1e-12


@pytest.mark.parametrize("nu", [0.0, 0.2, 0.3])
def test_wrong_second_derivative_gives_moment_on_edges(nu):
    pde = KirchhoffPDE(width=10.0, height=5.0, nu=nu)
    n_int, count = 30, 5
    points = pde.sample(n_int, 4 * count, seed=8)
    x, y = split(points, "float64")
    preds = pde.exact_preds(x, y)
    delta = 0.01
    preds[:, 1] += delta  # w_xx
    L_f, L_b0, L_b2 = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    np.testing.assert_allclose(L_b2[:n_int], 0.0, atol=1e-28)
    # x = 0, W: w_xx + nu w_yy; y = 0, H: nu w_xx + w_yy.
    x_edges = slice(n_int, n_int + 2 * count)
    y_edges = slice(n_int + 2 * count, n_int + 4 * count)
    np.testing.assert_allclose(L_b2[x_edges], delta**2, rtol=1e-9)
    np.testing.assert_allclose(L_b2[y_edges], (nu * delta) ** 2, rtol=1e-9, atol=1e-28)
    assert np.all(L_b2[x_edges] > 0)
    # w_xx does not enter the plate equation or the deflection condition.
    assert np.max(L_f) < 1e-25
    assert np.max(L_b0) < 1e-25

    preds = pde.exact_preds(x, y)
    preds[:, 2] += delta  # w_yy
    L_b2 = pde.compute_loss(x, y, preds)[2].numpy().ravel()
    np.testing.assert_allclose(L_b2[:n_int], 0.0, atol=1e-28)
    np.testing.assert_allclose(L_b2[x_edges], (nu * delta) ** 2, rtol=1e-9, atol=1e-28)
    np.testing.assert_allclose(L_b2[y_edges], delta**2, rtol=1e-9)


@pytest.mark.parametrize("column, factor", [(3, 1.0), (4, 2.0), (5, 1.0)])
def test_wrong_fourth_derivative_changes_residual(column, factor):
    pde = KirchhoffPDE()
    points = pde.sample(20, 8, seed=9)
    x, y = split(points, "float64")
    preds = pde.exact_preds(x, y)
    preds[:, column] += 1e-4
    L_f, L_b0, L_b2 = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    np.testing.assert_allclose(L_f, (factor * pde.D * 1e-4) ** 2, rtol=1e-8)
    assert np.max(L_b0) < 1e-25 and np.max(L_b2) < 1e-25


# -- hand-computed single points -------------------------------------------------


def test_hand_computed_points():
    nu = 0.2
    pde = KirchhoffPDE()
    D = 30000.0 * 0.008 / (12.0 * 0.96)
    # rows: interior (2.5, 5), left edge (0, 3), top edge (3, 10), corner (0, 0)
    x = np.array([[2.5], [0.0], [3.0], [0.0]])
    y = np.array([[5.0], [3.0], [10.0], [0.0]])
    # columns: w, w_xx, w_yy, w_xxxx, w_xxyy, w_yyyy
    preds = np.tile([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], (4, 1))
    L_f, L_b0, L_b2 = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    load = np.array([
        0.015 * math.sin(math.pi / 4) * math.sin(math.pi / 2),
        0.015 * 0.0 * math.sin(0.3 * math.pi),
        0.015 * math.sin(0.3 * math.pi) * math.sin(math.pi),
        0.0,
    ])
    np.testing.assert_allclose(L_f, (D * (4 + 2 * 5 + 6) - load) ** 2, rtol=1e-12)
    np.testing.assert_allclose(L_b0, [0.0, 1.0, 1.0, 1.0], rtol=1e-12)
    x_moment = (2.0 + nu * 3.0) ** 2
    y_moment = (nu * 2.0 + 3.0) ** 2
    np.testing.assert_allclose(L_b2, [0.0, x_moment, y_moment, x_moment + y_moment], rtol=1e-12)


def test_hand_computed_nonsquare_plate_load():
    pde = KirchhoffPDE(width=10.0, height=5.0, p0=0.02)
    x = np.array([[5.0]])
    y = np.array([[1.25]])  # sin(pi/2) * sin(pi/4)
    preds = np.zeros((1, 6))
    L_f = pde.compute_loss(x, y, preds)[0].numpy().item()
    assert L_f == pytest.approx((0.02 * math.sqrt(2) / 2) ** 2, rel=1e-12)


# -- configuration ---------------------------------------------------------------


def test_defaults_and_attributes():
    pde = KirchhoffPDE()
    assert pde.term_names == ("L_f", "L_b0", "L_b2")
    assert pde.num_terms == 3
    assert pde.derivatives == ("w", "w_xx", "w_yy", "w_xxxx", "w_xxyy", "w_yyyy")
    assert pde.field == "w"
    assert pde.domain == ((0.0, 10.0), (0.0, 10.0))
    assert pde.get_config() == {"width": 10.0, "height": 10.0, "p0": 0.015, "E": 30000.0, "h": 0.2, "nu": 0.2}
    rect = KirchhoffPDE(width=10, height=5, nu=0.3)
    assert rect.domain == ((0.0, 10.0), (0.0, 5.0))
    assert KirchhoffPDE(**rect.get_config()).get_config() == rect.get_config()
    assert KirchhoffPDE().domain == ((0.0, 10.0), (0.0, 10.0))  # not changed by rect
    assert rect.boundary_tolerance == pytest.approx(1e-4)


BAD_ARGUMENTS = {
    "width": [-1, 0.0],
    "height": [float("inf"), "5"],
    "E": [0],
    "h": [-0.2, float("nan")],
    "nu": [0.6, 0.5, -0.1, float("nan")],
    "p0": [float("nan"), None],
}


@pytest.mark.parametrize("name, value", bad_arguments(BAD_ARGUMENTS))
def test_bad_constructor_arguments(name, value):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        KirchhoffPDE(**{name: value})


def test_characteristic_scale_comes_from_the_data():
    pde = KirchhoffPDE()
    D = 30000.0 * 0.2**3 / (12 * (1 - 0.2**2))
    np.testing.assert_allclose(pde.characteristic_scale, 0.015 * 100 * 100 / (np.pi**4 * D), rtol=1e-12)
    np.testing.assert_allclose(pde.characteristic_scale, 4 * pde.amplitude, rtol=1e-12)  # square plate
    wide = KirchhoffPDE(width=10.0, height=5.0)
    np.testing.assert_allclose(wide.characteristic_scale, 0.015 * 100 * 25 / (np.pi**4 * D), rtol=1e-12)


def test_per_edge_terms_add_up_to_the_combined_ones():
    """Nine terms: the residual, then w and the moment on each edge; their sums are L_b0 and L_b2."""
    import numpy as np
    import tensorflow as tf

    from keras_balance import KirchhoffPDE

    combined, per_edge = KirchhoffPDE(), KirchhoffPDE(boundary="per_edge")
    assert per_edge.num_terms == 9 and per_edge.term_names[1:3] == ("L_b0_left", "L_b2_left")
    xy = combined.sample(40, 60, seed=2)
    preds = np.random.default_rng(2).normal(size=(len(xy), 6)).astype("float32")
    x, y = xy[:, :1], xy[:, 1:2]
    whole = [float(tf.reduce_mean(t)) for t in combined.compute_loss(x, y, preds)]
    parts = [float(tf.reduce_mean(t)) for t in per_edge.compute_loss(x, y, preds)]
    assert parts[0] == whole[0]
    np.testing.assert_allclose(sum(parts[1::2]), whole[1], rtol=1e-5)
    np.testing.assert_allclose(sum(parts[2::2]), whole[2], rtol=1e-5)
    own = KirchhoffPDE(boundary="per_edge", means="own")
    scaled = [float(tf.reduce_mean(t)) for t in own.compute_loss(x, y, preds)]
    # Each edge holds 15 of the 100 points: its own mean is 100/15 times its batch mean.
    np.testing.assert_allclose(scaled[1:], np.array(parts[1:]) * 100 / 15, rtol=1e-5)
    assert KirchhoffPDE(**own.get_config()).term_names == own.term_names
    with pytest.raises(ValueError, match="`boundary` must be one of"):
        KirchhoffPDE(boundary="per_axis")
    with pytest.raises(ValueError, match="`means` must be one of"):
        KirchhoffPDE(means="sum")
