"""Tests of `keras_balance.balancers.aligned_mtl.AlignedMTL` against an independent reference.

The reference uses the singular value decomposition of J itself (the package
works on the eigendecomposition of the Gramian), in float64:

    J = U S W^T (rank r: singular values above sqrt(K * 1.19e-7) * s_max)
    B = s_min U_r S_r^{-1} U_r^T,  weights = B p,  d = J^T B p

so that B J = s_min U_r W_r^T has r singular values, all equal to s_min
(Senushkin et al., CVPR 2023, Algorithm 1).
"""

import numpy as np
import pytest
from helpers import assert_refused, full_rank

from keras_balance.balancers import AlignedMTL

# -- independent reference ------------------------------------------------------------


def ref_aligned(jacobian, preference=None, scale="min"):
    jacobian = np.asarray(jacobian, dtype=np.float64)
    k = len(jacobian)
    p = np.full(k, 1.0 / k) if preference is None else np.asarray(preference, dtype=np.float64)
    u, s, _ = np.linalg.svd(jacobian, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return p
    # Eigenvalues of G are s^2; the tolerance applies to them.
    keep = s**2 > k * np.finfo(np.float32).eps * s[0] ** 2
    u, s = u[:, keep], s[keep]
    if scale == "min":
        target = s.min()
    elif scale == "rmse":
        target = np.sqrt(np.mean(s**2))
    else:
        target = np.sort(s)[(len(s) - 1) // 2]  # lower median
    balance = target * u @ np.diag(1.0 / s) @ u.T
    return balance @ p


def aligned_rows(jacobian, **kwargs):
    """The rows of B J, read off with one-hot preference vectors."""
    k = len(jacobian)
    rows = []
    for i in range(k):
        balancer = AlignedMTL(preference=np.eye(k)[i].tolist(), **kwargs)
        rows.append(balancer.aggregate(jacobian).numpy())
    return np.array(rows)


# -- hand values and the reference -------------------------------------------------------


def test_hand_example():
    # Orthogonal rows of norms 3 and 1: B = diag(1/3, 1), weights = B (1/2, 1/2)
    # = (1/6, 1/2), d = (0.5, 0.5): both components brought to the smaller norm.
    jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])
    balancer = AlignedMTL()
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1 / 6, 1 / 2], rtol=1e-6)


def test_published_example():
    # The example of TorchJD's AlignedMTL documentation.
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    np.testing.assert_allclose(AlignedMTL().aggregate(jacobian).numpy(), [0.2133, 0.9673, 0.9673], atol=1e-4)


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize("k, p, rank", [(2, 3, 2), (3, 3, 3), (4, 9, 4), (5, 8, 3), (6, 6, 1), (10, 12, 7)])
def test_matches_reference(scale, k, p, rank):
    rng = np.random.default_rng(k * 10 + rank)
    jacobian = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, p))
    preference = rng.uniform(0.0, 2.0, size=k)
    for pref in (None, preference.tolist()):
        weights = AlignedMTL(preference=pref, scale=scale).weigh(jacobian).numpy()
        np.testing.assert_allclose(weights, ref_aligned(jacobian, pref, scale), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eigenvalues", [(3e7, 3e4, 3.0, 3e-3), (1e5, 1e2, 1e-1, 1e-5), (1.0, 1e-3, 1e-7, 1e-10)],
                         ids=["3e-3-to-3e7", "1e-5-to-1e5", "1e-10-to-1"])
def test_ill_conditioned_gramians_follow_the_papers_formula(eigenvalues, seed):
    """Eigenvalues of G over ten orders of magnitude: every one is a direction, kept.

    The paper's formula with the full rank (B = s_min U S^{-1} U^T, in float64
    from the SVD of J): a cosine of at least 0.9999 to the direction, and the
    aligned rows have equal norms. A threshold at float32's precision (the
    reference's, K * 1.19e-7) would drop the smallest direction; the package's
    is at float64's, relative to the largest eigenvalue.
    """
    rng = np.random.default_rng(seed)
    k, p = len(eigenvalues), 12
    u, _ = np.linalg.qr(rng.normal(size=(k, k)))
    w, _ = np.linalg.qr(rng.normal(size=(p, k)))
    jacobian = u @ np.diag(np.sqrt(eigenvalues)) @ w.T
    gramian = jacobian @ jacobian.T
    assert np.linalg.eigvalsh(gramian).min() / np.linalg.eigvalsh(gramian).max() < 1e-9
    uu, ss, _ = np.linalg.svd(jacobian, full_matrices=False)
    expected = jacobian.T @ (ss.min() * uu @ np.diag(1.0 / ss) @ uu.T @ np.full(k, 1.0 / k))
    for dtype in ("float64", "float32"):
        if dtype == "float32" and eigenvalues[-1] / eigenvalues[0] < 1e-7:
            continue  # float32 entries cannot carry a direction 1e-10 below the largest
        direction = AlignedMTL().aggregate(jacobian.astype(dtype)).numpy().astype("float64")
        cosine = direction @ expected / (np.linalg.norm(direction) * np.linalg.norm(expected))
        assert cosine >= 0.9999, (dtype, cosine)
        np.testing.assert_allclose(np.linalg.norm(direction), np.linalg.norm(expected), rtol=1e-3)
    rows = aligned_rows(jacobian)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), np.sqrt(eigenvalues[-1]), rtol=1e-6)
    # The authors' float32 threshold treats the smallest direction as zero: a different direction.
    coarse = AlignedMTL(rtol=k * 1.19e-7).aggregate(jacobian).numpy()
    assert coarse @ expected / (np.linalg.norm(coarse) * np.linalg.norm(expected)) < 0.9999


# -- the guarantee ----------------------------------------------------------------------------


@pytest.mark.parametrize("k, p", [(2, 2), (3, 7), (5, 5), (6, 20)])
def test_aligned_components_are_orthogonal_and_equal(k, p):
    jacobian = full_rank(k, p, seed=k + p)
    rows = aligned_rows(jacobian)
    s_min = np.linalg.svd(jacobian, compute_uv=False).min()
    np.testing.assert_allclose(rows @ rows.T, s_min**2 * np.eye(k), atol=1e-9 * s_min**2)


def test_rank_deficient_alignment_has_equal_singular_values():
    rng = np.random.default_rng(1)
    jacobian = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 8))  # rank 2
    rows = aligned_rows(jacobian)
    singular = np.linalg.svd(rows, compute_uv=False)
    s = np.linalg.svd(jacobian, compute_uv=False)
    np.testing.assert_allclose(singular[:2], [s[1], s[1]], rtol=1e-8)
    np.testing.assert_allclose(singular[2:], 0.0, atol=1e-9 * s[0])


@pytest.mark.parametrize("scale", ["median", "rmse"])
def test_other_scales_keep_equal_components(scale):
    jacobian = full_rank(4, 6, seed=2)
    rows = aligned_rows(jacobian, scale=scale)
    singular = np.linalg.svd(rows, compute_uv=False)
    np.testing.assert_allclose(singular, np.full(4, singular[0]), rtol=1e-8)
    s = np.linalg.svd(jacobian, compute_uv=False)
    target = np.sqrt(np.mean(s**2)) if scale == "rmse" else np.sort(s)[1]
    np.testing.assert_allclose(singular[0], target, rtol=1e-8)


# -- special rows ---------------------------------------------------------------------------


def test_identical_rows():
    g = np.array([1.0, -2.0, 0.5])
    for k in (2, 4):
        np.testing.assert_allclose(AlignedMTL().aggregate(np.tile(g, (k, 1))).numpy(), g, rtol=1e-9)
        summed = AlignedMTL(preference=[1.0] * k).aggregate(np.tile(g, (k, 1))).numpy()
        np.testing.assert_allclose(summed, k * g, rtol=1e-9)


def test_zero_jacobian_uses_the_preference():
    balancer = AlignedMTL(preference=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(balancer.aggregate(np.zeros((3, 4))).numpy(), np.zeros(4))
    np.testing.assert_allclose(balancer.term_weights.numpy(), [1.0, 2.0, 3.0])


# -- invariances --------------------------------------------------------------------------------


def test_permutation_invariance():
    jacobian = full_rank(5, 8, seed=3)
    weights = AlignedMTL().weigh(jacobian).numpy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(5)
        np.testing.assert_allclose(AlignedMTL().weigh(jacobian[order]).numpy(), weights[order], rtol=1e-8)


def test_weights_do_not_depend_on_the_scale():
    jacobian = full_rank(4, 6, seed=4)
    weights = AlignedMTL().weigh(jacobian).numpy()
    for scale in (1e-10, 1e10):
        np.testing.assert_allclose(AlignedMTL().weigh(scale * jacobian).numpy(), weights, rtol=1e-8)


# -- configuration and arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"preference": [1.0, -1.0]}, "preference"),
        ({"preference": [0.0, 0.0]}, "preference"),
        ({"preference": [1.0, float("nan")]}, "preference"),
        ({"preference": []}, "preference"),
        ({"preference": [[1.0, 2.0]]}, "preference"),
        ({"preference": ["a", "b"]}, "preference"),
        ({"preference": [1.0, 2.0], "num_terms": 3}, "num_terms"),
        ({"scale": "max"}, "scale"),
        ({"rtol": -1e-3}, "rtol"),
        ({"rtol": 1.0}, "rtol"),
    ],
)
def test_bad_arguments(kwargs, name):
    assert_refused(AlignedMTL, kwargs, name)


def test_preference_fixes_the_number_of_terms():
    balancer = AlignedMTL(preference=[1.0, 1.0])
    with pytest.raises(ValueError, match="built for 2 loss terms"):
        balancer.aggregate(np.ones((3, 4)))
