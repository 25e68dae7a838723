"""Tests of the small QP solvers behind MGDA, UPGrad and DualProj.

The references below are independent of the package and written in float64
NumPy from the KKT conditions:

- `ref_lower_bounded_qp`: minimize x^T H x / 2 - c^T x subject to x >= l by
  trying every active set A (x_i = l_i on A), solving the stationarity
  equations on the free set with least squares, and keeping the candidates
  that satisfy x >= l, a zero gradient on the free set and non-negative
  multipliers (gradient) on A; the one with the smallest objective wins.
- `ref_min_norm`: minimize alpha^T G alpha over the simplex by trying every
  support S and solving the KKT system [G_SS -1; 1^T 0] [alpha; lambda] = [0; 1];
  kept when alpha >= 0 and (G alpha)_i >= lambda for every i.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_balance.balancers import qp

METHODS = ["enumeration", "active_set"]


# -- independent references ----------------------------------------------------------


def ref_lower_bounded_qp(hessian, linear, lower, tol=1e-10):
    num = len(lower)
    best_value, best_x = np.inf, None
    for pattern in itertools.product([False, True], repeat=num):
        free = np.array(pattern)
        free_idx, fixed_idx = np.flatnonzero(free), np.flatnonzero(~free)
        x = lower.astype(np.float64).copy()
        if free_idx.size:
            rhs = linear[free_idx] - hessian[np.ix_(free_idx, fixed_idx)] @ lower[fixed_idx]
            x[free_idx] = np.linalg.lstsq(hessian[np.ix_(free_idx, free_idx)], rhs, rcond=None)[0]
        grad = hessian @ x - linear
        scale = 1.0 + np.abs(x).max()
        if (
            np.all(x[free_idx] >= lower[free_idx] - tol * scale)
            and np.all(np.abs(grad[free_idx]) <= tol * scale)
            and np.all(grad[fixed_idx] >= -tol * scale)
        ):
            value = 0.5 * x @ hessian @ x - linear @ x
            if value < best_value:
                best_value, best_x = value, x
    return best_x


def ref_min_norm(gramian, tol=1e-10):
    num = len(gramian)
    trace = np.trace(gramian)
    if trace == 0.0:
        return np.full(num, 1.0 / num)
    gramian = gramian / trace
    best_value, best_alpha = np.inf, None
    for size in range(1, num + 1):
        for support in itertools.combinations(range(num), size):
            support = list(support)
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = gramian[np.ix_(support, support)]
            system[:size, size] = -1.0
            system[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
            if np.abs(system @ solution - rhs).max() > tol:
                continue
            alpha = np.zeros(num)
            alpha[support] = solution[:size]
            value = alpha @ gramian @ alpha
            feasible = alpha.min() >= -tol and np.all(gramian @ alpha >= value - tol)
            if feasible and value < best_value:
                best_value, best_alpha = value, alpha
    return best_alpha


def random_problem(rng, num, rank, regularization):
    factor = rng.normal(size=(num, rank))
    hessian = factor @ factor.T
    hessian = hessian / np.trace(hessian) + regularization * np.eye(num)
    linear = rng.normal(size=(3, num))
    lower = rng.normal(size=(3, num))
    return hessian, linear, lower


def random_gramian(rng, num, rank):
    jacobian = rng.normal(size=(num, rank)) @ rng.normal(size=(rank, 9))
    return jacobian @ jacobian.T, jacobian


# -- the lower-bounded QP --------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_lower_bounded_qp_matches_reference(method):
    rng = np.random.default_rng(0)
    for num in range(2, 9):
        for rank in sorted({1, num}):
            hessian, linear, lower = random_problem(rng, num, rank, 1e-3)
            got = qp.solve_lower_bounded_qp(hessian, linear, lower, method=method).numpy()
            for row in range(3):
                expected = ref_lower_bounded_qp(hessian, linear[row], lower[row])
                atol = 1e-8 * np.abs(expected).max()
                np.testing.assert_allclose(got[row], expected, rtol=1e-7, atol=atol)
            assert np.all(got >= lower)


def test_lower_bounded_qp_hand_example():
    # H = I, c = (1, -1), l = (0, 0): unconstrained minimizer (1, -1); the bound
    # clips the second coordinate (multiplier 1 >= 0): x = (1, 0).
    for method in METHODS:
        got = qp.solve_lower_bounded_qp(np.eye(2), [[1.0, -1.0]], [[0.0, 0.0]], method=method)
        np.testing.assert_allclose(got.numpy(), [[1.0, 0.0]], atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_singular_hessian_objective_matches_reference(method):
    # Rank-deficient H, no regularization: the minimizer need not be unique,
    # but its objective is.
    rng = np.random.default_rng(1)
    for num in (3, 5, 8):
        hessian, linear, lower = random_problem(rng, num, 1, 0.0)
        linear = linear @ hessian  # c in the range of H: bounded below
        got = qp.solve_lower_bounded_qp(hessian, linear, lower, method=method).numpy()
        for row in range(3):
            expected = ref_lower_bounded_qp(hessian, linear[row], lower[row])

            def value(x, row=row):
                return 0.5 * x @ hessian @ x - linear[row] @ x

            assert value(got[row]) <= value(expected) + 1e-9 * (1.0 + abs(value(expected)))
            assert np.all(got[row] >= lower[row])


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        qp.solve_lower_bounded_qp(np.eye(2), [[0.0, 0.0]], [[0.0, 0.0]], method="newton")


# -- dual cone ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_dual_cone_weights_match_reference(method):
    rng = np.random.default_rng(2)
    for num in (2, 3, 5, 7, 10):
        gramian, _ = random_gramian(rng, num, max(1, num - 2))
        preferences = np.eye(num) / num
        got = qp.dual_cone_weights(gramian, preferences, reg_eps=1e-4, method=method).numpy()
        hessian = gramian / np.trace(gramian) + 1e-4 * np.eye(num)
        for row in range(num):
            expected = ref_lower_bounded_qp(hessian, np.zeros(num), preferences[row])
            np.testing.assert_allclose(got[row], expected, rtol=1e-6, atol=1e-9)


def test_dual_cone_weights_of_a_zero_or_tiny_gramian():
    preferences = np.array([[0.5, 0.5, 0.0], [1.0, -2.0, 0.0]])
    zero = qp.dual_cone_weights(np.zeros((3, 3)), preferences).numpy()
    np.testing.assert_array_equal(zero, [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    # A trace at or below norm_eps counts as zero.
    conflicting = np.array([[1.0, -0.9, 0.0], [-0.9, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 1e-6
    first = np.array([[1.0, 0.0, 0.0]])
    # Projecting g1 moves weight onto g2: v = (1, 0.9 / (1 + 3e-4 * ...), 0).
    assert qp.dual_cone_weights(conflicting, first).numpy()[0, 1] > 0.89
    thresholded = qp.dual_cone_weights(conflicting, first, norm_eps=1e-4)
    np.testing.assert_array_equal(thresholded.numpy(), first)


def test_normalize_gramian():
    normalized, nonzero = qp.normalize_gramian(np.array([[4.0, 1.0], [1.0, 6.0]]) * 1e-20)
    np.testing.assert_allclose(normalized.numpy(), [[0.4, 0.1], [0.1, 0.6]], rtol=1e-12)
    assert bool(nonzero)
    normalized, nonzero = qp.normalize_gramian(np.zeros((2, 2)))
    assert not bool(nonzero) and np.all(normalized.numpy() == 0.0)


# -- min-norm point ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_min_norm_weights_match_reference(method):
    rng = np.random.default_rng(4)
    for num in range(3, 10):
        for rank in sorted({1, num // 2, num}):
            gramian, jacobian = random_gramian(rng, num, rank)
            alpha = qp.min_norm_weights(gramian, method=method).numpy()
            expected = ref_min_norm(gramian)
            assert alpha.min() >= 0.0 and abs(alpha.sum() - 1.0) < 1e-12
            # The min-norm point is unique even when alpha is not.
            scale = np.sqrt(np.trace(gramian))
            np.testing.assert_allclose(alpha @ jacobian, expected @ jacobian, atol=1e-7 * scale)
            if rank == num:
                np.testing.assert_allclose(alpha, expected, rtol=1e-6, atol=1e-9)


def test_two_term_closed_form():
    # g1 = (-4, 1, 1), g2 = (6, 1, 1): G = [[18, -22], [-22, 38]];
    # gamma = (38 + 22) / (18 + 38 + 44) = 0.6.
    np.testing.assert_allclose(
        qp.two_term_min_norm(np.array([[18.0, -22.0], [-22.0, 38.0]])).numpy(),
        [0.6, 0.4],
        rtol=1e-12,
    )
    # Equal rows: the gap is 0, gamma = 1/2.
    np.testing.assert_allclose(qp.two_term_min_norm(np.ones((2, 2))).numpy(), [0.5, 0.5])


def test_frank_wolfe_approaches_the_exact_weights():
    rng = np.random.default_rng(5)
    for num in (3, 6):
        gramian, jacobian = random_gramian(rng, num, num)
        exact = ref_min_norm(gramian)
        scale = np.sqrt(np.trace(gramian))
        gaps = []
        for iterations in (10, 2000):
            solve = tf.function(lambda g, n=iterations: qp.frank_wolfe_min_norm_weights(g, n, 0.0))
            alpha = solve(tf.constant(gramian)).numpy()
            assert alpha.min() >= 0.0 and abs(alpha.sum() - 1.0) < 1e-12
            gaps.append(np.linalg.norm((alpha - exact) @ jacobian) / scale)
        assert gaps[1] < 5e-3 and gaps[1] <= gaps[0]


def test_frank_wolfe_stops_at_a_vertex():
    # g1 . g2 >= ||g1||^2 and g1 . g3 >= ||g1||^2: the min-norm point is g1.
    gramian = np.array([[1.0, 1.0, 1.5], [1.0, 4.0, 2.0], [1.5, 2.0, 9.0]])
    alpha = qp.frank_wolfe_min_norm_weights(gramian, 250, 1e-12).numpy()
    np.testing.assert_allclose(alpha, [1.0, 0.0, 0.0], atol=1e-12)
