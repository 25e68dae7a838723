"""Tests of the Helmholtz problem: exact solution, residual terms, hand-computed values."""

import math
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers import bad_arguments, domain_points, near_edge, split

from keras_balance.pde import HelmholtzPDE
from keras_balance.pde.base import EDGES

CONFIGS = {
    "default": {},
    "k3_a2_a3": {"k": 3.0, "a1": 2.0, "a2": 3.0},
    "k0.5_a1_a1": {"k": 0.5, "a1": 1, "a2": 1},
    "per_edge": {"boundary": "per_edge"},
    "per_edge_k2_a3_a2": {"k": 2.0, "a1": 3.0, "a2": 2.0, "boundary": "per_edge"},
}


def make(name):
    return HelmholtzPDE(**CONFIGS[name])


def scale(pde):
    """Size of the largest quantity inside the residual."""
    return (pde.a1**2 + pde.a2**2) * math.pi**2 + pde.k**2


def points_for(pde, where):
    if where == "sample":
        return pde.sample(n_interior=300, n_boundary=80, seed=7)
    return pde.grid(21)


# -- the exact solution satisfies the problem ------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["sample", "grid"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_solution_gives_zero_terms(config, where, dtype):
    pde = make(config)
    points = points_for(pde, where)
    x, y = split(points, dtype)
    preds = pde.exact_preds(x, y).astype(dtype)
    terms = pde.compute_loss(x, y, preds)
    assert len(terms) == pde.num_terms
    rtol = 1e-5 if dtype == "float32" else 1e-12
    # L_f: squared residual of quantities of size `scale`; L_b: squared values of size 1.
    tolerances = [(scale(pde) * rtol) ** 2] + [rtol**2] * (pde.num_terms - 1)
    # Near (not on) an edge, u = O(distance * |grad u|).
    gradient = math.pi * math.hypot(pde.a1, pde.a2)
    near = near_edge(pde, points)
    allowance = [0.0] + [(pde.boundary_tolerance * gradient) ** 2] * (pde.num_terms - 1)
    for name, term, tol, extra in zip(pde.term_names, terms, tolerances, allowance):
        values = term.numpy().ravel()
        assert term.shape == (len(points), 1)
        assert values.dtype == np.dtype(dtype)
        assert np.max(values[~near]) <= tol, f"{name}: max {np.max(values[~near])} > {tol}"
        assert np.all(values[near] <= tol + extra), name


def test_exact_solution_is_not_trivially_zero():
    # Guard for the test above: the exact solution is of size 1 inside the domain.
    pde = HelmholtzPDE()
    points = pde.grid(21)
    assert np.max(np.abs(pde.exact(points[:, :1], points[:, 1:]))) > 0.9
    points = np.array([[0.5, 0.125], [-0.5, 0.375]])
    np.testing.assert_allclose(pde.exact(points[:, :1], points[:, 1:]).ravel(), [1.0, 1.0], rtol=1e-12)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_preds_match_finite_differences(config):
    pde = make(config)
    x, y = domain_points(pde, 50, seed=0)
    h = 1e-4

    def f(a, b):
        return np.asarray(pde.exact(a, b), "float64")

    u_xx = (f(x + h, y) - 2 * f(x, y) + f(x - h, y)) / h**2
    u_yy = (f(x, y + h) - 2 * f(x, y) + f(x, y - h)) / h**2
    preds = pde.exact_preds(x, y)
    assert preds.shape == (50, 3) and preds.dtype == np.float64
    np.testing.assert_allclose(preds[:, 0:1], f(x, y), rtol=0, atol=1e-14)
    atol = 1e-5 * scale(pde)
    np.testing.assert_allclose(preds[:, 1:2], u_xx, rtol=0, atol=atol)
    np.testing.assert_allclose(preds[:, 2:3], u_yy, rtol=0, atol=atol)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_exact_solution_satisfies_pde_by_finite_differences(config):
    # Independent of exact_preds: finite-difference Laplacian of `exact` against `source`.
    pde = make(config)
    x, y = domain_points(pde, 40, seed=1)
    h = 1e-4
    u = pde.exact(x, y)
    laplacian = (pde.exact(x + h, y) + pde.exact(x - h, y) + pde.exact(x, y + h) + pde.exact(x, y - h) - 4 * u) / h**2
    np.testing.assert_allclose(laplacian + pde.k**2 * u, pde.source(x, y), rtol=0, atol=1e-5 * scale(pde))
    # And u vanishes on the four edges.
    t = np.linspace(-1, 1, 33).reshape(-1, 1)
    ones = np.ones_like(t)
    for ex, ey in ((-ones, t), (ones, t), (t, -ones), (t, ones)):
        np.testing.assert_allclose(pde.exact(ex, ey), 0.0, atol=1e-12)


def test_exact_formula():
    pde = HelmholtzPDE(k=2.0, a1=1.5, a2=2.5)
    x = np.array([[0.3], [-0.7]])
    y = np.array([[0.1], [0.45]])
    np.testing.assert_allclose(pde.exact(x, y), np.sin(1.5 * np.pi * x) * np.sin(2.5 * np.pi * y), rtol=1e-14)
    assert pde.exact(tf.constant(x), tf.constant(y)).dtype == tf.float64


# -- perturbed solutions ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [1.0, 2.5])
def test_shifted_field_combined(k, dtype):
    pde = HelmholtzPDE(k=k)
    n_int, n_bnd = 60, 24
    points = pde.sample(n_int, n_bnd, seed=2)
    x, y = split(points, dtype)
    preds = pde.exact_preds(x, y)
    preds[:, 0] += 0.1
    L_f, L_b = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds.astype(dtype)))
    rtol = 1e-4 if dtype == "float32" else 1e-9
    # Boundary term: 0.1^2 on the boundary points, exactly zero inside.
    np.testing.assert_allclose(L_b[n_int:], 0.01, rtol=rtol)
    np.testing.assert_array_equal(L_b[:n_int], 0.0)
    # Residual term: shifting u by 0.1 shifts the residual by k^2 * 0.1 everywhere.
    np.testing.assert_allclose(L_f, (0.1 * k**2) ** 2, rtol=1e-2 if dtype == "float32" else 1e-9)


def test_shifted_second_derivative_changes_only_residual():
    pde = HelmholtzPDE()
    points = pde.sample(30, 12, seed=3)
    x, y = split(points, "float64")
    preds = pde.exact_preds(x, y)
    preds[:, 2] -= 0.5
    L_f, L_b = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    np.testing.assert_allclose(L_f, 0.25, rtol=1e-9)
    np.testing.assert_allclose(L_b, 0.0, atol=1e-28)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shifted_field_per_edge(dtype):
    pde = HelmholtzPDE(boundary="per_edge")
    assert pde.term_names == ("L_f", "L_b_left", "L_b_right", "L_b_bottom", "L_b_top")
    n_int, counts = 40, 6
    points = pde.sample(n_int, 4 * counts, seed=4)
    x, y = split(points, dtype)
    preds = pde.exact_preds(x, y)
    preds[:, 0] += 0.1
    terms = [t.numpy().ravel() for t in pde.compute_loss(x, y, preds.astype(dtype))]
    assert len(terms) == 5
    rtol = 1e-4 if dtype == "float32" else 1e-9
    for i, edge in enumerate(EDGES):
        term = terms[1 + i]
        on_edge = np.zeros(len(points), bool)
        on_edge[n_int + i * counts : n_int + (i + 1) * counts] = True
        np.testing.assert_allclose(term[on_edge], 0.01, rtol=rtol, err_msg=edge)
        np.testing.assert_array_equal(term[~on_edge], 0.0, err_msg=edge)


def test_per_edge_corner_counts_in_both_edges():
    pde = HelmholtzPDE(boundary="per_edge")
    x = np.array([[-1.0], [1.0]])
    y = np.array([[-1.0], [1.0]])
    preds = np.array([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    _, left, right, bottom, top = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    np.testing.assert_allclose(left, [4.0, 0.0])
    np.testing.assert_allclose(bottom, [4.0, 0.0])
    np.testing.assert_allclose(right, [0.0, 9.0])
    np.testing.assert_allclose(top, [0.0, 9.0])
    combined = HelmholtzPDE().compute_loss(x, y, preds)[1].numpy().ravel()
    np.testing.assert_allclose(combined, [4.0, 9.0])  # counted once, not twice


# -- hand-computed single points -------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hand_computed_interior_point(dtype):
    pde = HelmholtzPDE()  # k = 1, a1 = 1, a2 = 4
    # At (0.25, 0.125): sin(pi/4) * sin(pi/2) = sqrt(2)/2.
    q = (-(math.pi**2) - 16 * math.pi**2 + 1.0) * math.sqrt(2) / 2
    x = np.array([[0.25]], dtype)
    y = np.array([[0.125]], dtype)
    preds = np.array([[1.0, 2.0, 3.0]], dtype)  # u, u_xx, u_yy
    L_f, L_b = (t.numpy().item() for t in pde.compute_loss(x, y, preds))
    assert L_f == pytest.approx((2.0 + 3.0 + 1.0 * 1.0 - q) ** 2, rel=1e-6 if dtype == "float32" else 1e-12)
    assert L_b == 0.0


def test_hand_computed_nondefault_parameters():
    pde = HelmholtzPDE(k=2.0, a1=0.5, a2=0.5)
    # At (1/3, 1): sin(pi/6) = 1/2, sin(pi/2) = 1.
    q = (-(0.25 * math.pi**2) - 0.25 * math.pi**2 + 4.0) * 0.5
    assert float(pde.source(np.array(1 / 3), np.array(1.0))) == pytest.approx(q, rel=1e-12)
    x = np.array([[1 / 3]])
    y = np.array([[1.0]])  # on the top edge
    preds = np.array([[0.5, -1.0, 4.0]])
    L_f, L_b = (t.numpy().item() for t in pde.compute_loss(x, y, preds))
    assert L_f == pytest.approx((-1.0 + 4.0 + 4.0 * 0.5 - q) ** 2, rel=1e-12)
    assert L_b == pytest.approx(0.25, rel=1e-12)


def test_hand_computed_boundary_point():
    pde = HelmholtzPDE()
    x = np.array([[1.0]], "float32")
    y = np.array([[0.3]], "float32")
    preds = np.array([[0.5, 1.0, -2.0]], "float32")
    L_f, L_b = (t.numpy().item() for t in pde.compute_loss(x, y, preds))
    assert L_b == pytest.approx(0.25, rel=1e-6)
    # q(1, y) = 0 up to float32 rounding of sin(pi): residual = 1 - 2 + 0.5.
    assert L_f == pytest.approx(0.25, rel=1e-3)


# -- configuration ---------------------------------------------------------------


def test_defaults_and_attributes():
    pde = HelmholtzPDE()
    assert (pde.k, pde.a1, pde.a2, pde.boundary) == (1.0, 1.0, 4.0, "combined")
    assert pde.term_names == ("L_f", "L_b")
    assert pde.num_terms == 2
    assert pde.derivatives == ("u", "u_xx", "u_yy")
    assert pde.field == "u"
    assert pde.domain == ((-1.0, 1.0), (-1.0, 1.0))
    assert pde.get_config() == {"k": 1.0, "a1": 1.0, "a2": 4.0, "boundary": "combined"}
    per_edge = HelmholtzPDE(k=2, a1=3, a2=5, boundary="per_edge")
    assert per_edge.num_terms == 5
    assert HelmholtzPDE(**per_edge.get_config()).get_config() == per_edge.get_config()
    assert isinstance(per_edge.k, float) and per_edge.k == 2.0
    # The class attribute is not changed by a per_edge instance.
    assert HelmholtzPDE().term_names == ("L_f", "L_b")


BAD_ARGUMENTS = {
    "boundary": ["foo", None],
    "k": [float("nan"), float("inf"), "1", True],
    "a1": [float("nan")],
    "a2": [None],
}


@pytest.mark.parametrize("name, value", bad_arguments(BAD_ARGUMENTS))
def test_bad_constructor_arguments(name, value):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        HelmholtzPDE(**{name: value})


def test_per_axis_splits_the_boundary_into_x_and_y_edges():
    pde = HelmholtzPDE(boundary="per_axis")
    assert pde.term_names == ("L_f", "L_b_x", "L_b_y")
    # left edge, bottom edge, a corner (on both axes' edges), an interior point
    x = np.array([[-1.0], [0.2], [1.0], [0.0]])
    y = np.array([[0.3], [-1.0], [1.0], [0.0]])
    preds = np.array([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [5.0, 0.0, 0.0], [7.0, 0.0, 0.0]])
    _, on_x, on_y = (t.numpy().ravel() for t in pde.compute_loss(x, y, preds))
    np.testing.assert_allclose(on_x, [4.0, 0.0, 25.0, 0.0])
    np.testing.assert_allclose(on_y, [0.0, 9.0, 25.0, 0.0])
    per_edge = [t.numpy().ravel() for t in HelmholtzPDE(boundary="per_edge").compute_loss(x, y, preds)]
    np.testing.assert_allclose(on_x, np.maximum(per_edge[1], per_edge[2]))
    np.testing.assert_allclose(on_y, np.maximum(per_edge[3], per_edge[4]))


def test_own_means_are_the_means_over_each_set_of_points():
    """`means="own"`: the residual over the interior points, each edge over its own, a sum of edge means."""
    import numpy as np
    import tensorflow as tf

    from keras_balance import HelmholtzPDE

    batch, own = HelmholtzPDE(boundary="per_edge"), HelmholtzPDE(boundary="per_edge", means="own")
    xy = batch.sample(40, 24, seed=1)
    preds = np.random.default_rng(1).normal(size=(len(xy), 3)).astype("float32")
    x, y = xy[:, :1], xy[:, 1:2]
    masks = {k: v.numpy().ravel() > 0 for k, v in batch.boundary_masks(tf.constant(x), tf.constant(y)).items()}
    per_point = [t.numpy().ravel() for t in batch.compute_loss(x, y, preds)]
    values = [float(tf.reduce_mean(t)) for t in own.compute_loss(x, y, preds)]
    interior = ~np.any(np.stack(list(masks.values())), axis=0)
    np.testing.assert_allclose(values[0], per_point[0][interior].mean(), rtol=1e-5)
    for i, edge in enumerate(("left", "right", "bottom", "top")):
        np.testing.assert_allclose(values[1 + i], per_point[1 + i][masks[edge]].mean(), rtol=1e-5)
    combined = HelmholtzPDE(means="own")
    total = [float(tf.reduce_mean(t)) for t in combined.compute_loss(x, y, preds)]
    np.testing.assert_allclose(total[1], sum(values[1:]), rtol=1e-5)
    assert HelmholtzPDE(**own.get_config()).means == "own" and "means" not in batch.get_config()
    # A batch with no boundary point: the boundary terms are 0, not NaN.
    inner = own.compute_loss(xy[:40, :1], xy[:40, 1:2], preds[:40])
    assert all(float(tf.reduce_mean(t)) == 0.0 for t in inner[1:])
