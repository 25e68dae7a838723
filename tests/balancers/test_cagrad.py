"""Tests of `keras_balance.balancers.cagrad.CAGrad` against independent references.

CAGrad (Liu et al., NeurIPS 2021) solves, with g0 the mean gradient and
rho = c ||g0||,

    primal:  max_d min_i g_i . d   subject to ||d - g0|| <= rho
    dual:    min_{w in simplex} g_w . g0 + rho ||g_w||,    d = g0 + rho g_w / ||g_w||.

Two float64 NumPy references, written from these formulas and not from the
package's solver:

- K = 2: the dual is one-dimensional and convex; a fine grid refined by
  ternary search finds w.
- any K (small): the primal optimum satisfies, for its active set S,
  J_S d = nu 1 and d = g0 + rho J_S^T v with v >= 0 and ||J_S^T v|| = 1, a
  quadratic equation in nu; every active set is tried, and the best feasible
  d (largest min_i g_i . d) is the optimum.
"""

import itertools

import numpy as np
import pytest
from helpers import assert_refused, full_rank, sample_matrices

from keras_balance.balancers import CAGrad

# -- independent references --------------------------------------------------------


def ref_two_rows(jacobian, c):
    g0 = jacobian.mean(axis=0)
    rho = c * np.linalg.norm(g0)

    def dual(t):
        gw = t * jacobian[0] + (1 - t) * jacobian[1]
        return gw @ g0 + rho * np.linalg.norm(gw)

    grid = np.linspace(0.0, 1.0, 10001)[:, None]
    rows = grid * jacobian[0] + (1 - grid) * jacobian[1]
    best = grid[np.argmin(rows @ g0 + rho * np.linalg.norm(rows, axis=1)), 0]
    lo, hi = max(best - 2e-4, 0.0), min(best + 2e-4, 1.0)
    for _ in range(200):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if dual(a) < dual(b):
            hi = b
        else:
            lo = a
    t = (lo + hi) / 2
    gw = t * jacobian[0] + (1 - t) * jacobian[1]
    return g0 + rho * gw / np.linalg.norm(gw)


def ref_active_sets(jacobian, c):
    k = len(jacobian)
    g0 = jacobian.mean(axis=0)
    rho = c * np.linalg.norm(g0)
    best_value, best_d = -np.inf, None
    for size in range(1, k + 1):
        for active in itertools.combinations(range(k), size):
            rows = jacobian[list(active)]
            gram = rows @ rows.T
            if np.linalg.matrix_rank(gram) < size:
                continue
            h = rows @ g0
            a1 = np.linalg.solve(gram, np.ones(size))
            a2 = np.linalg.solve(gram, h)
            # v = (nu a1 - a2) / rho and v^T gram v = 1:
            qa, qb, qc = a1.sum(), -2 * a2.sum(), h @ a2 - rho**2
            disc = qb * qb - 4 * qa * qc
            if disc < 0:
                continue
            for nu in ((-qb + np.sqrt(disc)) / (2 * qa), (-qb - np.sqrt(disc)) / (2 * qa)):
                v = (nu * a1 - a2) / rho
                if np.any(v < -1e-12):
                    continue
                d = g0 + rho * rows.T @ v
                value = np.min(jacobian @ d)
                if value > best_value:
                    best_value, best_d = value, d
    return best_d


# -- closed forms and reference values --------------------------------------------------


def test_published_example():
    # The example of TorchJD's CAGrad documentation (c = 0.5, no rescaling).
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(CAGrad(c=0.5).aggregate(jacobian).numpy(), [0.1835, 1.2041, 1.2041], atol=1e-4)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9, 2.0])
def test_two_rows_match_the_one_dimensional_reference(c):
    balancer = CAGrad(c=c)
    for seed in range(6):
        jacobian = full_rank(2, 4, seed)
        np.testing.assert_allclose(
            balancer.aggregate(jacobian).numpy(), ref_two_rows(jacobian, c), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("k, p", [(2, 3), (3, 3), (3, 6), (4, 5)])
@pytest.mark.parametrize("c", [0.1, 0.5, 0.9, 2.0])
def test_matches_the_active_set_reference(k, p, c):
    balancer = CAGrad(c=c)
    for seed in range(4):
        jacobian = full_rank(k, p, seed + 100 * k)
        expected = ref_active_sets(jacobian, c)
        direction = balancer.aggregate(jacobian).numpy()
        np.testing.assert_allclose(direction, expected, rtol=1e-5, atol=1e-5 * np.linalg.norm(expected))


def test_c_zero_is_the_mean_exactly():
    jacobian = full_rank(4, 6, seed=1)
    balancer = CAGrad(c=0.0)
    np.testing.assert_array_equal(balancer.weigh(jacobian).numpy(), np.full(4, 0.25))
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), jacobian.mean(axis=0), rtol=1e-14)


@pytest.mark.parametrize("rescale, factor", [(0, 1.5), (1, 1.5 / 1.25), (2, 1.0)])
def test_identical_rows(rescale, factor):
    # g0 = g_w = g, so d = (1 + c) g, divided by the rescaling.
    g = np.array([0.3, -1.0, 2.0])
    direction = CAGrad(c=0.5, rescale=rescale).aggregate(np.tile(g, (3, 1))).numpy()
    np.testing.assert_allclose(direction, factor * g, rtol=1e-9)


def test_rescale_options_scale_the_direction():
    jacobian = full_rank(3, 5, seed=2)
    base = CAGrad(c=0.4).aggregate(jacobian).numpy()
    np.testing.assert_allclose(CAGrad(c=0.4, rescale=1).aggregate(jacobian).numpy(), base / 1.16, rtol=1e-12)
    np.testing.assert_allclose(CAGrad(c=0.4, rescale=2).aggregate(jacobian).numpy(), base / 1.4, rtol=1e-12)


# -- guarantees -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [6, 10])
def test_optimality_conditions_for_many_terms(k):
    # KKT of the dual: (J d)_i = min_j (J d)_j wherever w_i > 0, and d lies on
    # the sphere ||d - g0|| = rho. Also the worst term improves at least as much
    # as with g0, which is feasible.
    for seed in range(3):
        jacobian = np.random.default_rng(seed).normal(size=(k, k + 4))
        balancer = CAGrad(c=0.5)
        weights = balancer.weigh(jacobian).numpy()
        direction = weights @ jacobian
        g0 = jacobian.mean(axis=0)
        rho = 0.5 * np.linalg.norm(g0)
        np.testing.assert_allclose(np.linalg.norm(direction - g0), rho, rtol=1e-7)
        products = jacobian @ direction
        w = weights - 1.0 / k  # proportional to the dual solution
        active = w > 1e-7 * w.max()
        scale = np.abs(products).max()
        np.testing.assert_allclose(products[active], products.min(), atol=1e-7 * scale)
        assert products.min() >= np.min(jacobian @ g0) - 1e-9 * scale
        assert np.all(w >= -1e-12)


def test_zero_gradient_keeps_the_mean():
    # A zero row puts g_w = 0 in the hull; with every other row agreeing with
    # g0 the dual optimum is g_w = 0, and the mean gradient is returned.
    jacobian = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    for c in (0.5, 3.0):
        direction = CAGrad(c=c).aggregate(jacobian).numpy()
        np.testing.assert_allclose(direction, jacobian.mean(axis=0), rtol=1e-12)


def test_opposite_rows():
    # g and -3g: g0 = -g opposes term 0, the worst one; the ball of radius
    # ||g|| / 2 lets d move towards it as far as -g / 2 (w = (1, 0)).
    g = np.array([1.0, 2.0])
    jacobian = np.stack([g, -3 * g])
    np.testing.assert_allclose(CAGrad(c=0.5).aggregate(jacobian).numpy(), -0.5 * g, rtol=1e-8)


def test_permutation_invariance():
    jacobian = full_rank(5, 7, seed=3)
    weights = CAGrad(c=0.7).weigh(jacobian).numpy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(5)
        np.testing.assert_allclose(CAGrad(c=0.7).weigh(jacobian[order]).numpy(), weights[order], rtol=1e-7)


def test_scale_equivariance():
    jacobian = full_rank(4, 6, seed=4)
    direction = CAGrad().aggregate(jacobian).numpy()
    for scale in (1e-10, 1e10):
        np.testing.assert_allclose(CAGrad().aggregate(scale * jacobian).numpy(), scale * direction, rtol=1e-8)


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_finite_for_zero_rank_deficient_and_scaled_rows(c):
    balancer_by_k = {}
    for jacobian in sample_matrices():
        k = jacobian.shape[0]
        for dtype in ("float32", "float64"):
            balancer = balancer_by_k.setdefault((k, dtype), CAGrad(c=c))
            direction = balancer.aggregate(jacobian.astype(dtype)).numpy()
            assert direction.shape == (jacobian.shape[1],)
            assert np.all(np.isfinite(direction)), jacobian
            # d stays in the ball around g0 (up to rounding).
            g0 = jacobian.astype(dtype).astype(np.float64).mean(axis=0)
            radius = c * np.linalg.norm(g0)
            assert np.linalg.norm(direction - g0) <= radius * (1 + 1e-4) + 1e-6 * np.abs(jacobian).max()
    np.testing.assert_array_equal(CAGrad().aggregate(np.zeros((3, 4))).numpy(), np.zeros(4))


def test_single_term():
    g = np.array([[3.0, -4.0]])
    np.testing.assert_allclose(CAGrad(c=0.5).aggregate(g).numpy(), 1.5 * g[0], rtol=1e-12)


# -- configuration and arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"c": -0.1}, "c"),
        ({"c": float("nan")}, "c"),
        ({"c": float("inf")}, "c"),
        ({"rescale": 3}, "rescale"),
        ({"rescale": True}, "rescale"),
        ({"rescale": "1"}, "rescale"),
    ],
)
def test_bad_arguments(kwargs, name):
    assert_refused(CAGrad, kwargs, name)


def test_non_numeric_c():
    with pytest.raises(TypeError, match="`c`"):
        CAGrad(c="big")
