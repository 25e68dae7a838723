"""Tests of `MGDA` against hand computations and an independent reference.

The reference is written from the definition (Sener & Koltun 2018) in
float64 NumPy and does not use the package: the min-norm point of the convex
hull of the rows, found by trying every support S and solving the KKT system
of the affine min-norm problem on S,

    [G_SS  -1] [alpha_S]   [0]
    [1^T    0] [lambda ] = [1],

keeping the solutions with alpha >= 0 and (G alpha)_i >= lambda for every i.
Normalized variants divide row i by n_i first and report w_i = alpha_i / n_i.
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import jacobians
from test_qp import ref_min_norm  # the exact enumeration of supports, written from the KKT conditions

from keras_balance.balancers import MGDA

SCALES = [1e-10, 1e-5, 1.0, 1e5, 1e10]


# -- independent reference ---------------------------------------------------------


def ref_mgda_weights(jacobian, normalization="none", losses=None):
    jacobian = np.asarray(jacobian, np.float64)
    norms = np.linalg.norm(jacobian, axis=1)
    losses = None if losses is None else np.abs(np.asarray(losses, np.float64))
    scales = {
        "none": np.ones(len(jacobian)),
        "l2": norms,
        "loss": losses,
        "loss+": None if losses is None else losses * norms,
    }[normalization]
    scales = np.where(scales > 1e-30, scales, 1.0)
    rows = jacobian / scales[:, None]
    return ref_min_norm(rows @ rows.T) / scales


def assert_kkt(jacobian, alpha, tol=1e-9):
    """Min-norm KKT: g_i . d >= ||d||^2, with equality where alpha_i > 0."""
    direction = alpha @ jacobian
    scale = np.sum(jacobian**2)
    slack = (jacobian @ direction - direction @ direction) / scale
    assert alpha.min() >= 0.0 and abs(alpha.sum() - 1.0) < 1e-10
    assert slack.min() >= -tol, slack
    assert np.all(np.abs(slack[alpha > 0.0]) <= tol), slack


# -- hand computations ------------------------------------------------------------------

# K = 2 closed form: gamma = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1), alpha = (gamma, 1 - gamma).
HAND_TWO = [
    # Orthogonal unit rows: gamma = 1 / 2, d = (1/2, 1/2).
    ([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], [0.5, 0.5]),
    # Orthogonal (3, 0), (0, 4): gamma = 16 / 25 = 0.64, d = (1.92, 1.44).
    ([[3.0, 0.0], [0.0, 4.0]], [0.64, 0.36], [1.92, 1.44]),
    # Opposite (1, 0), (-2, 0): gamma = (4 + 2) / (1 + 4 + 4) = 2/3, d = 0.
    ([[1.0, 0.0], [-2.0, 0.0]], [2.0 / 3.0, 1.0 / 3.0], [0.0, 0.0]),
    # (-4, 1, 1), (6, 1, 1): G = [[18, -22], [-22, 38]], gamma = 60 / 100, d = (0, 1, 1).
    ([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], [0.6, 0.4], [0.0, 1.0, 1.0]),
    # (1, 0), (2, 1): gamma = (5 - 2) / (1 + 5 - 4) = 3/2, clipped to 1: d = g1.
    ([[1.0, 0.0], [2.0, 1.0]], [1.0, 0.0], [1.0, 0.0]),
]


@pytest.mark.parametrize("jacobian, weights, direction", HAND_TWO)
@pytest.mark.parametrize("solver", ["exact", "frank_wolfe"])
def test_two_terms_hand_computed(jacobian, weights, direction, solver):
    balancer = MGDA(solver=solver)
    jacobian = np.array(jacobian)
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), direction, atol=1e-6)
    np.testing.assert_allclose(ref_mgda_weights(jacobian), weights, atol=1e-9)


def test_three_terms_hand_computed():
    # The unit vectors of R^3: by symmetry alpha = 1/3 each, d = (1/3, 1/3, 1/3).
    np.testing.assert_allclose(MGDA().weigh(np.eye(3)).numpy(), [1 / 3] * 3, rtol=1e-6)
    # (1, 0), (0, 1), (1, 1): the closest point of the triangle to 0 is (1/2, 1/2) on
    # the edge g1-g2, and g3 . d = 1 >= ||d||^2 = 1/2: alpha = (1/2, 1/2, 0).
    jacobian = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(MGDA().weigh(jacobian).numpy(), [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(MGDA().aggregate(jacobian).numpy(), [0.5, 0.5], atol=1e-7)


# Normalizations on g1 = (3, 0), g2 = (0, 4), losses L = (2, 1):
#   "l2":    h = (1, 0), (0, 1) -> alpha = (1/2, 1/2), w = (1/6, 1/8), d = (1/2, 1/2)
#   "loss":  h = (1.5, 0), (0, 4) -> gamma = 16 / 18.25 = 64/73, w = (32/73, 9/73),
#            d = (96/73, 36/73)
#   "loss+": n = (6, 4), h = (0.5, 0), (0, 1) -> gamma = 1 / 1.25 = 0.8,
#            w = (0.8 / 6, 0.2 / 4) = (2/15, 1/20), d = (0.4, 0.2)
NORMALIZED = [
    ("l2", [1 / 6, 1 / 8], [0.5, 0.5]),
    ("loss", [32 / 73, 9 / 73], [96 / 73, 36 / 73]),
    ("loss+", [2 / 15, 1 / 20], [0.4, 0.2]),
]


@pytest.mark.parametrize("normalization, weights, direction", NORMALIZED)
def test_normalizations_hand_computed(normalization, weights, direction):
    jacobian = np.array([[3.0, 0.0], [0.0, 4.0]])
    balancer = MGDA(normalization=normalization)
    losses = np.array([2.0, 1.0])
    np.testing.assert_allclose(balancer.weigh(jacobian, losses).numpy(), weights, rtol=1e-6)
    np.testing.assert_allclose(balancer.aggregate(jacobian, losses).numpy(), direction, rtol=1e-6)
    expected = ref_mgda_weights(jacobian, normalization, losses)
    np.testing.assert_allclose(expected, weights, rtol=1e-9)


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_loss_normalizations_need_losses(normalization):
    balancer = MGDA(normalization=normalization)
    with pytest.raises(ValueError, match="losses"):
        balancer.aggregate(np.eye(2))
    with pytest.raises(ValueError, match="losses"):
        balancer.gramian_weights(tf.eye(2, dtype=tf.float64))


def test_zero_loss_or_zero_gradient_is_not_normalized():
    # Term 2 has a zero gradient: the min-norm point is 0, alpha = e2, and its
    # weight is not blown up by 1 / ||g2||.
    jacobian = np.array([[1.0, 2.0], [0.0, 0.0]])
    for normalization in ("l2", "loss", "loss+"):
        balancer = MGDA(normalization=normalization)
        weights = balancer.weigh(jacobian, [1.0, 0.0]).numpy()
        np.testing.assert_allclose(weights, [0.0, 1.0], atol=1e-7)
        np.testing.assert_array_equal(balancer.aggregate(jacobian, [1.0, 0.0]).numpy(), [0.0, 0.0])


# -- against the reference --------------------------------------------------------------


def test_matches_reference_and_kkt():
    for jacobian in jacobians(seed=1):
        num, rank = len(jacobian), np.linalg.matrix_rank(jacobian)
        weights = MGDA().weigh(jacobian).numpy()
        expected = ref_mgda_weights(jacobian)
        scale = np.sqrt(np.sum(jacobian**2))
        # The min-norm point is unique; its weights are when the rows are independent.
        np.testing.assert_allclose(weights @ jacobian, expected @ jacobian, atol=1e-8 * scale)
        if rank == num:
            np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-9)
        assert_kkt(jacobian, weights)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalized_variants_match_reference(normalization):
    rng = np.random.default_rng(2)
    for jacobian in jacobians(seed=3)[::2]:
        losses = rng.uniform(0.1, 10.0, size=len(jacobian))
        weights = MGDA(normalization=normalization).weigh(jacobian, losses).numpy()
        expected = ref_mgda_weights(jacobian, normalization, losses)
        scale = np.abs(expected).max() * np.sqrt(np.sum(jacobian**2))
        np.testing.assert_allclose(weights @ jacobian, expected @ jacobian, atol=1e-8 * scale)


# -- properties ---------------------------------------------------------------------------


def test_non_conflicting():
    for jacobian in jacobians(seed=4):
        direction = MGDA().aggregate(jacobian).numpy()
        products = jacobian @ direction
        assert products.min() >= -1e-10 * np.sum(jacobian**2), products
        # ... and so is the l2-normalized variant.
        direction = MGDA(normalization="l2").aggregate(jacobian).numpy()
        assert (jacobian @ direction).min() >= -1e-9 * np.linalg.norm(jacobian, axis=1).max()


def test_permutation_invariance():
    rng = np.random.default_rng(5)
    for jacobian in jacobians(seed=6):
        order = rng.permutation(len(jacobian))
        weights = MGDA().weigh(jacobian).numpy()
        permuted = MGDA().weigh(jacobian[order]).numpy()
        scale = np.sqrt(np.sum(jacobian**2))
        np.testing.assert_allclose(
            permuted @ jacobian[order], weights @ jacobian, atol=1e-8 * scale
        )
        if np.linalg.matrix_rank(jacobian) == len(jacobian):
            np.testing.assert_allclose(permuted, weights[order], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("num", [2, 3, 5, 8])
def test_identical_rows_give_the_row(num):
    row = np.array([0.5, -1.0, 2.0, 0.25])
    for solver in ("exact", "frank_wolfe"):
        balancer = MGDA(solver=solver)
        direction = balancer.aggregate(np.tile(row, (num, 1))).numpy()
        np.testing.assert_allclose(direction, row, rtol=1e-6)
        # Any weights on the simplex give the row; the solvers pick equal ones.
        np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0 / num] * num, rtol=1e-4)


@pytest.mark.parametrize("num", [2, 4, 9])
def test_zero_jacobian(num):
    balancer = MGDA()
    direction = balancer.aggregate(np.zeros((num, 6), np.float32))
    assert direction.shape == (6,) and np.all(direction.numpy() == 0.0)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0 / num] * num)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scales_are_finite_and_equivariant(dtype):
    rng = np.random.default_rng(7)
    for num, rank in ((2, 2), (4, 1), (5, 5), (9, 4)):
        jacobian = rng.normal(size=(num, rank)) @ rng.normal(size=(rank, 12))
        base = MGDA().aggregate(jacobian.astype(dtype)).numpy().astype(np.float64)
        reference = np.linalg.norm(jacobian, axis=1).max()
        for scale in SCALES:
            direction = MGDA().aggregate((scale * jacobian).astype(dtype)).numpy()
            assert direction.shape == (12,) and np.all(np.isfinite(direction))
            rtol = 1e-5 if dtype == "float32" else 1e-9
            np.testing.assert_allclose(direction / scale, base, atol=rtol * reference)
        losses = np.full(num, 1e-3)
        for normalization in ("l2", "loss+"):
            for scale in (SCALES[0], SCALES[-1]):
                direction = MGDA(normalization=normalization).aggregate(
                    (scale * jacobian).astype(dtype), losses
                )
                assert np.all(np.isfinite(direction.numpy()))


def test_frank_wolfe_is_close_and_never_shorter():
    for jacobian in jacobians(seed=8)[3::2]:
        exact = MGDA().aggregate(jacobian).numpy()
        balancer = MGDA(solver="frank_wolfe")
        approximate = tf.function(balancer.aggregate)(jacobian).numpy()
        scale = np.sqrt(np.sum(jacobian**2))
        # The exact direction is the shortest vector of the hull.
        assert np.linalg.norm(approximate) >= np.linalg.norm(exact) - 1e-9 * scale
        np.testing.assert_allclose(approximate, exact, atol=5e-2 * scale)


def test_frank_wolfe_iteration_limit_and_tolerance():
    jacobian = jacobians(seed=9)[-1]
    exact = MGDA().aggregate(jacobian).numpy()
    errors = []
    for iterations in (1, 1000):
        balancer = MGDA(solver="frank_wolfe", max_iterations=iterations)
        errors.append(np.linalg.norm(tf.function(balancer.aggregate)(jacobian).numpy() - exact))
    assert errors[1] < errors[0]
    loose = MGDA(solver="frank_wolfe", tolerance=10.0).aggregate(jacobian).numpy()
    one_step = MGDA(solver="frank_wolfe", max_iterations=1).aggregate(jacobian).numpy()
    np.testing.assert_allclose(loose, one_step)  # a huge tolerance stops after one step


# -- eager, tf.function, XLA; dtypes ------------------------------------------------------------


# The solvers that the registry-wide test (K = 3: enumeration) leaves out:
# K = 8, the active set (with a loss normalization); Frank-Wolfe.
@pytest.mark.parametrize(
    "num, kwargs, dtype",
    [(8, {"normalization": "loss+"}, "float64"), (5, {"solver": "frank_wolfe"}, "float32")],
)
def test_graph_and_xla_match_eager(num, kwargs, dtype):
    rng = np.random.default_rng(10)
    losses = rng.uniform(0.5, 2.0, size=num)
    jacobian = rng.normal(size=(num, 10))
    eager = MGDA(**kwargs).aggregate(jacobian.astype(dtype), losses.astype(dtype))
    rtol = 1e-5 if dtype == "float32" else 1e-10
    for jit_compile in (False, True):
        balancer = MGDA(**kwargs)
        fn = tf.function(balancer.aggregate, jit_compile=jit_compile)
        for _ in range(2):
            got = fn(tf.constant(jacobian, dtype), tf.constant(losses, dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got.numpy(), eager.numpy(), rtol=rtol, atol=rtol * 1e-2)
        assert int(balancer.step.numpy()) == 2


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"normalization": "l1"}, "normalization"),
        ({"solver": "sgd"}, "solver"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"max_iterations": 2.5}, "max_iterations"),
        ({"tolerance": -1.0}, "tolerance"),
        ({"tolerance": float("nan")}, "tolerance"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*received {name}="):
        MGDA(**kwargs)
