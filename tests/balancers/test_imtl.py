"""Tests of `keras_balance.balancers.imtl.IMTLG` against an independent reference.

The reference is the closed form of Liu et al. (ICLR 2021), on the rows of J,
in float64:

    D = [g_1 - g_i]_{i>=2},  U = [u_1 - u_i]_{i>=2},  u_i = g_i / ||g_i||
    alpha_{2:K} = g_1 U^T (D U^T)^{-1},  alpha_1 = 1 - sum_{i>=2} alpha_i
    d = sum_i alpha_i g_i
"""

import numpy as np
import pytest
from helpers import full_rank

from keras_balance.balancers import IMTLG

# -- independent reference ------------------------------------------------------


def ref_imtl_g(jacobian):
    jacobian = np.asarray(jacobian, dtype=np.float64)
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    d_mat = jacobian[0] - jacobian[1:]
    u_mat = units[0] - units[1:]
    rest = jacobian[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1.0 - rest.sum()], rest])
    return alpha, alpha @ jacobian


def projections(jacobian, direction):
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    return units @ direction


# -- closed form and hand values ----------------------------------------------------


def test_hand_example():
    # Orthogonal rows of norms 2 and 1: equal projections need alpha_1 * 2 = alpha_2 * 1,
    # so alpha = (1/3, 2/3) and d = (2/3, 2/3).
    jacobian = np.array([[2.0, 0.0], [0.0, 1.0]])
    balancer = IMTLG()
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [2 / 3, 2 / 3], rtol=1e-12)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1 / 3, 2 / 3], rtol=1e-6)


def test_published_example():
    # The example of TorchJD's IMTLG documentation.
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(IMTLG().aggregate(jacobian).numpy(), [0.0767, 1.0, 1.0], atol=1e-4)


@pytest.mark.parametrize("k, p", [(2, 2), (3, 5), (4, 4), (6, 20), (10, 12)])
def test_matches_closed_form(k, p):
    for seed in range(3):
        jacobian = full_rank(k, p, seed, spread=1.0)
        alpha, expected = ref_imtl_g(jacobian)
        weights = IMTLG().weigh(jacobian).numpy()
        np.testing.assert_allclose(weights, alpha, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(weights @ jacobian, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("k, p", [(2, 3), (3, 3), (5, 8), (8, 30)])
def test_equal_projections(k, p):
    for seed in range(4):
        jacobian = full_rank(k, p, seed + 10, spread=2.0)
        weights = IMTLG().weigh(jacobian).numpy()
        assert abs(weights.sum() - 1.0) < 1e-10
        proj = projections(jacobian, weights @ jacobian)
        np.testing.assert_allclose(proj, np.full(k, proj.mean()), rtol=1e-8)


# -- special rows ----------------------------------------------------------------------


def test_identical_rows_give_the_row():
    g = np.array([1.0, -2.0, 0.5])
    for k in (2, 3, 7):
        np.testing.assert_allclose(IMTLG().aggregate(np.tile(g, (k, 1))).numpy(), g, rtol=1e-10)


def test_parallel_rows_give_the_limit_of_independent_rows():
    # Rows g and a g: d = 2a / (1 + a) g, the limit of nearby independent rows.
    g = np.array([0.6, 0.8, 0.0])
    for a in (2.0, 100.0):
        direction = IMTLG().aggregate(np.stack([g, a * g])).numpy()
        np.testing.assert_allclose(direction, 2 * a / (1 + a) * g, rtol=1e-9)
        nearby = np.stack([g, a * (g + np.array([0.0, 0.0, 1e-5]))])
        np.testing.assert_allclose(direction, ref_imtl_g(nearby)[1], atol=1e-4)


def test_zero_row_gets_weight_zero():
    jacobian = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    weights = IMTLG().weigh(jacobian).numpy()
    np.testing.assert_allclose(weights, [1 / 3, 0.0, 2 / 3], rtol=1e-12, atol=1e-15)


def test_linearly_dependent_rows_keep_equal_projections():
    # Four rows in R^3 (rank 3 < K) whose unit vectors lie on a cone around x:
    # the equal-projection system is solvable although D U^T is singular.
    angles = np.array([0.0, 1.0, 2.5, 4.0])
    units = np.stack([np.full(4, 0.6), 0.8 * np.cos(angles), 0.8 * np.sin(angles)], axis=1)
    jacobian = units * np.array([[1.0], [3.0], [0.2], [5.0]])
    weights = IMTLG().weigh(jacobian).numpy()
    assert abs(weights.sum() - 1.0) < 1e-10
    proj = projections(jacobian, weights @ jacobian)
    np.testing.assert_allclose(proj, np.full(4, proj.mean()), rtol=1e-8)
    assert proj.mean() > 0


def test_opposite_rows_give_zero():
    # d . u = d . (-u) forces d . u = 0, impossible with weights summing to 1.
    jacobian = np.array([[1.0, 2.0], [-3.0, -6.0]])
    np.testing.assert_array_equal(IMTLG().aggregate(jacobian).numpy(), [0.0, 0.0])


# -- invariances --------------------------------------------------------------------------


def test_permutation_invariance():
    jacobian = full_rank(5, 9, seed=4, spread=1.0)
    weights = IMTLG().weigh(jacobian).numpy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(5)
        np.testing.assert_allclose(IMTLG().weigh(jacobian[order]).numpy(), weights[order], rtol=1e-9)


def test_direction_is_invariant_to_rescaling_rows():
    jacobian = full_rank(4, 6, seed=5, spread=1.0)
    direction = IMTLG().aggregate(jacobian).numpy()
    scaled = jacobian * np.array([[1e-6], [3.0], [1.0], [1e4]])
    other = IMTLG().aggregate(scaled).numpy()
    cosine = direction @ other / np.linalg.norm(direction) / np.linalg.norm(other)
    assert cosine > 1 - 1e-10
    # Scaling all rows together scales the direction.
    np.testing.assert_allclose(IMTLG().aggregate(1e8 * jacobian).numpy(), 1e8 * direction, rtol=1e-9)
