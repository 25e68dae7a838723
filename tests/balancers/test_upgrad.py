"""Tests of `UPGrad` and `DualProj` against hand computations and an independent reference.

The reference is written from the definitions (Quinton & Rey 2024) in float64
NumPy and does not use the package. The projection of `J^T u` onto the dual
cone `{x : J x >= 0}` is `J^T v*` with `v* = argmin_{v >= u} v^T G v`; with
TorchJD's conventions G is replaced by `G / trace(G) + reg_eps I`. The QP is
solved by trying every active set A (v_i = u_i on A), solving `(G v)_F = 0`
on the free set F by least squares, and keeping the candidates with v >= u,
`(G v)_A >= 0` and the smallest objective (`test_qp.ref_lower_bounded_qp`
with no linear term). Then

    UPGrad:   w = sum_i v*(e_i / K)        DualProj: w = v*(1 / K)
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import jacobians
from test_qp import ref_lower_bounded_qp

from keras_balance.balancers import DualProj, UPGrad

SCALES = [1e-10, 1e-5, 1.0, 1e5, 1e10]
CLASSES = [UPGrad, DualProj]


# -- independent reference ---------------------------------------------------------


def ref_weights(cls, jacobian, reg_eps=1e-4):
    jacobian = np.asarray(jacobian, np.float64)
    num = len(jacobian)
    gramian = jacobian @ jacobian.T
    trace = np.trace(gramian)
    if trace == 0.0:
        return np.full(num, 1.0 / num)
    hessian = gramian / trace + reg_eps * np.eye(num)
    zero = np.zeros(num)
    if cls is UPGrad:
        return sum(ref_lower_bounded_qp(hessian, zero, np.eye(num)[i] / num) for i in range(num))
    return ref_lower_bounded_qp(hessian, zero, np.full(num, 1.0 / num))


# -- hand computations ---------------------------------------------------------------


def test_upgrad_hand_computed_exact_projection():
    # reg_eps = 0: g1 = (1, 0), g2 = (-1, 1), G = [[1, -1], [-1, 2]].
    # Projecting g1: v = (1, t) minimizing 1 - 2t + 2t^2 -> t = 1/2, pi(g1) = (1/2, 1/2).
    # Projecting g2: v = (s, 1) minimizing s^2 - 2s + 2 -> s = 1, pi(g2) = (0, 1).
    # w = ((1, 1/2) + (1, 1)) / 2 = (1, 3/4); d = (1/4, 3/4).
    jacobian = np.array([[1.0, 0.0], [-1.0, 1.0]])
    balancer = UPGrad(reg_eps=0.0)
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [1.0, 0.75], rtol=1e-10)
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [0.25, 0.75], rtol=1e-10)
    np.testing.assert_allclose(ref_weights(UPGrad, jacobian, 0.0), [1.0, 0.75], rtol=1e-10)


def test_dualproj_hand_computed_exact_projection():
    # reg_eps = 0: g1 = (1, 0), g2 = (-2, 1): the mean (-1/2, 1/2) conflicts with g1.
    # v = (s, 1/2) minimizing s^2 - 2s + 5/4 -> s = 1: w = (1, 1/2), d = (0, 1/2).
    jacobian = np.array([[1.0, 0.0], [-2.0, 1.0]])
    balancer = DualProj(reg_eps=0.0)
    np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [1.0, 0.5], rtol=1e-10)
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(ref_weights(DualProj, jacobian, 0.0), [1.0, 0.5], rtol=1e-10)
    # g1 = (1, 0), g2 = (-1, 1) conflict, but their mean (0, 1/2) does not: unchanged.
    weights = DualProj(reg_eps=0.0).weigh([[1.0, 0.0], [-1.0, 1.0]]).numpy()
    np.testing.assert_allclose(weights, [0.5, 0.5])


def test_default_regularization_hand_computed():
    # g1 = (-4, 1, 1), g2 = (6, 1, 1): G = [[18, -22], [-22, 38]], trace 56,
    # H = G / 56 + 1e-4 I, so H_ij / H_kk = G_ij / (G_kk + 56e-4).
    # UPGrad: v(e1) = (1, 22 / 38.0056), v(e2) = (22 / 18.0056, 1), w = their mean.
    # DualProj: (H u)_1 < 0 for u = (1/2, 1/2); v = (11 / 18.0056, 1/2).
    # TorchJD's documentation prints [0.2929, 1.9004, 1.9004] and
    # [0.5563, 1.1109, 1.1109] for this matrix.
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    t, s = 22.0 / 38.0056, 22.0 / 18.0056
    upgrad = np.array([(1.0 + s) / 2.0, (t + 1.0) / 2.0])
    dualproj = np.array([11.0 / 18.0056, 0.5])
    np.testing.assert_allclose(UPGrad().weigh(jacobian).numpy(), upgrad, rtol=1e-10)
    np.testing.assert_allclose(DualProj().weigh(jacobian).numpy(), dualproj, rtol=1e-10)
    np.testing.assert_allclose(
        UPGrad().aggregate(jacobian).numpy(), [0.2929, 1.9004, 1.9004], atol=1e-4
    )
    np.testing.assert_allclose(
        DualProj().aggregate(jacobian).numpy(), [0.5563, 1.1109, 1.1109], atol=1e-4
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_opposite_rows_cancel(cls):
    # g and -g: the dual cone is g's orthogonal complement; both projections
    # (and the projection of the mean, 0) vanish. With reg_eps > 0 the two
    # projections are mirror images, so the weights stay equal and d = 0.
    jacobian = np.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])
    for reg_eps in (0.0, 1e-4):
        direction = cls(reg_eps=reg_eps).aggregate(jacobian).numpy()
        np.testing.assert_allclose(direction, 0.0, atol=1e-12)


# -- against the reference ---------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_matches_reference(cls):
    for jacobian in jacobians(seed=1):
        weights = cls().weigh(jacobian).numpy()
        np.testing.assert_allclose(weights, ref_weights(cls, jacobian), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cls", CLASSES)
def test_matches_reference_without_regularization(cls):
    # reg_eps = 0: the QP may be singular and its solution v not unique, but the
    # projection J^T v is.
    for jacobian in jacobians(seed=2)[::2]:
        direction = cls(reg_eps=0.0).aggregate(jacobian).numpy()
        expected = ref_weights(cls, jacobian, 0.0) @ jacobian
        np.testing.assert_allclose(direction, expected, atol=1e-8 * np.sqrt(np.sum(jacobian**2)))


# -- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_non_conflicting(cls):
    for jacobian in jacobians(seed=4):
        trace = np.sum(jacobian**2)
        weights = cls().weigh(jacobian).numpy()
        products = jacobian @ (weights @ jacobian)
        # The regularization allows (J d)_i >= -reg_eps * trace(G) * w_i.
        assert np.all(products >= -1e-4 * trace * np.abs(weights) - 1e-12 * trace), products
        exact = jacobian @ cls(reg_eps=0.0).aggregate(jacobian).numpy()
        assert exact.min() >= -1e-10 * trace, exact


@pytest.mark.parametrize("cls", CLASSES)
def test_non_conflicting_rows_give_the_mean(cls):
    # Non-negative rows have non-negative inner products: every g_i is in the cone.
    rng = np.random.default_rng(5)
    for num in (2, 3, 6, 9):
        jacobian = rng.uniform(0.0, 1.0, size=(num, 7))
        jacobian[0, :] = 0.0
        jacobian[0, 0] = 1.0  # ... including orthogonal ones
        jacobian[1, 0] = 0.0
        balancer = cls()
        np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), [1.0 / num] * num, rtol=1e-12)
        direction = balancer.aggregate(jacobian).numpy()
        np.testing.assert_allclose(direction, jacobian.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("cls", CLASSES)
def test_permutation_invariance(cls):
    rng = np.random.default_rng(6)
    for jacobian in jacobians(seed=7):
        order = rng.permutation(len(jacobian))
        weights = cls().weigh(jacobian).numpy()
        permuted = cls().weigh(jacobian[order]).numpy()
        np.testing.assert_allclose(permuted, weights[order], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("num", [2, 5, 8])
def test_identical_rows_give_the_row(cls, num):
    row = np.array([0.5, -1.0, 2.0, 0.25])
    balancer = cls()
    np.testing.assert_allclose(balancer.aggregate(np.tile(row, (num, 1))).numpy(), row, rtol=1e-6)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0 / num] * num, rtol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("num", [2, 4, 9])
def test_zero_jacobian(cls, num):
    balancer = cls()
    direction = balancer.aggregate(np.zeros((num, 6), np.float32))
    assert direction.shape == (6,) and np.all(direction.numpy() == 0.0)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0 / num] * num)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scales_are_finite_and_equivariant(cls, dtype):
    rng = np.random.default_rng(8)
    for num, rank in ((2, 2), (5, 1), (9, 4)):
        jacobian = rng.normal(size=(num, rank)) @ rng.normal(size=(rank, 12))
        base = cls().aggregate(jacobian.astype(dtype)).numpy().astype(np.float64)
        reference = np.linalg.norm(jacobian, axis=1).max()
        for scale in SCALES:
            scaled = (scale * jacobian).astype(dtype)
            direction = cls().aggregate(scaled).numpy()
            assert direction.shape == (12,) and np.all(np.isfinite(direction))
            rtol = 1e-5 if dtype == "float32" else 1e-9
            np.testing.assert_allclose(direction / scale, base, atol=rtol * reference)
            # Non-conflicting at every scale, not only near 1.
            products = scaled.astype(np.float64) @ direction.astype(np.float64)
            assert products.min() >= -2e-4 * scale**2 * np.sum(jacobian**2)


@pytest.mark.parametrize("cls", CLASSES)
def test_norm_eps_reproduces_the_absolute_threshold(cls):
    # Sum of squared gradient norms 4e-6 < 1e-4: with TorchJD's norm_eps = 1e-4 the
    # Gramian counts as zero (the mean is returned, which conflicts with g1 here);
    # the default norm_eps = 0 keeps projecting.
    jacobian = np.array([[1.0, 0.0], [-3.0, 1.0]]) * 1e-3 / np.sqrt(2.75)
    mean = jacobian.mean(axis=0)
    assert (jacobian @ mean).min() < 0.0
    np.testing.assert_allclose(cls(norm_eps=1e-4).aggregate(jacobian).numpy(), mean, rtol=1e-12)
    balancer = cls()
    direction = balancer.aggregate(jacobian).numpy()
    # Non-conflicting up to the regularization: (J d)_i >= -reg_eps * trace(G) * w_i.
    bound = -1e-4 * np.sum(jacobian**2) * balancer.term_weights.numpy()
    assert np.all(jacobian @ direction >= bound - 1e-18)
    below = cls(norm_eps=1e-7).aggregate(jacobian).numpy()
    np.testing.assert_allclose(below, direction, rtol=1e-12)


# -- eager, tf.function, XLA; dtypes -------------------------------------------------------


# UPGrad with K = 5 uses the enumeration, DualProj with K = 8 the active-set method.
@pytest.mark.parametrize("cls, num, dtype", [(UPGrad, 5, "float32"), (DualProj, 8, "float64")])
def test_graph_and_xla_match_eager_and_reference(cls, num, dtype):
    rng = np.random.default_rng(9)
    jacobian = rng.normal(size=(num, 10))
    eager = cls().aggregate(jacobian.astype(dtype))
    rtol = 1e-5 if dtype == "float32" else 1e-10
    for jit_compile in (False, True):
        balancer = cls()
        fn = tf.function(balancer.aggregate, jit_compile=jit_compile)
        for _ in range(2):
            got = fn(tf.constant(jacobian, dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got.numpy(), eager.numpy(), rtol=rtol, atol=rtol * 1e-2)
        assert int(balancer.step.numpy()) == 2
    # The QP under XLA: the weights within 1e-6 of the float64 reference, ranks 1 to K.
    for rank in (1, 3, num):
        matrix = (rng.normal(size=(num, rank)) @ rng.normal(size=(rank, 10))).astype(dtype)
        fn(tf.constant(matrix))  # the compiled function of the loop above
        weights = balancer.term_weights.numpy()
        np.testing.assert_allclose(weights, ref_weights(cls, matrix), rtol=1e-6, atol=1e-7)


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"reg_eps": -1e-4}, "reg_eps"),
        ({"reg_eps": float("nan")}, "reg_eps"),
        ({"reg_eps": float("inf")}, "reg_eps"),
    ],
)
def test_bad_arguments(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*received {name}="):
        cls(**kwargs)


def test_non_numeric_argument():
    with pytest.raises(TypeError, match="`reg_eps`"):
        UPGrad(reg_eps="small")
