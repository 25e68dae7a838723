"""Tests of `keras_balance.balancers.imtl.IMTLG` against an independent reference.

The reference is the closed form of Liu et al. (ICLR 2021), on the rows of J,
in float64:

    D = [g_1 - g_i]_{i>=2},  U = [u_1 - u_i]_{i>=2},  u_i = g_i / ||g_i||
    alpha_{2:K} = g_1 U^T (D U^T)^{-1},  alpha_1 = 1 - sum_{i>=2} alpha_i
    d = sum_i alpha_i g_i
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.balancers as kb
from keras_balance.balancers.imtl import IMTLG

# -- independent reference ------------------------------------------------------


def ref_imtl_g(jacobian):
    jacobian = np.asarray(jacobian, dtype=np.float64)
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    d_mat = jacobian[0] - jacobian[1:]
    u_mat = units[0] - units[1:]
    rest = jacobian[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1.0 - rest.sum()], rest])
    return alpha, alpha @ jacobian


def full_rank(k, p, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, p)) * np.exp(spread * rng.normal(size=(k, 1)))


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
        jacobian = full_rank(k, p, seed)
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
    jacobian = full_rank(5, 9, seed=4)
    weights = IMTLG().weigh(jacobian).numpy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(5)
        np.testing.assert_allclose(IMTLG().weigh(jacobian[order]).numpy(), weights[order], rtol=1e-9)


def test_direction_is_invariant_to_rescaling_rows():
    jacobian = full_rank(4, 6, seed=5)
    direction = IMTLG().aggregate(jacobian).numpy()
    scaled = jacobian * np.array([[1e-6], [3.0], [1.0], [1e4]])
    other = IMTLG().aggregate(scaled).numpy()
    cosine = direction @ other / np.linalg.norm(direction) / np.linalg.norm(other)
    assert cosine > 1 - 1e-10
    # Scaling all rows together scales the direction.
    np.testing.assert_allclose(IMTLG().aggregate(1e8 * jacobian).numpy(), 1e8 * direction, rtol=1e-9)


def sample_matrices(p=12):
    """All-zero, rank 1 .. full, and rows scaled from 1e-10 to 1e10."""
    rng = np.random.default_rng(0)
    out = [np.zeros((3, p))]
    for k in (2, 3, 5, 10):
        for rank in sorted({1, min(2, k), k}):
            base = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, p))
            for scale in (1e-10, 1.0, 1e10):
                out.append(scale * base)
        mixed = rng.normal(size=(k, p)) * np.logspace(-10, 10, k)[:, None]
        mixed[0] = 0.0
        out.append(mixed)
    return out


def test_finite_for_zero_rank_deficient_and_scaled_rows():
    for jacobian in sample_matrices():
        for dtype in ("float32", "float64"):
            direction = IMTLG().aggregate(jacobian.astype(dtype)).numpy()
            assert direction.shape == (jacobian.shape[1],)
            assert np.all(np.isfinite(direction)), jacobian
    np.testing.assert_array_equal(IMTLG().aggregate(np.zeros((3, 4))).numpy(), np.zeros(4))


# -- execution modes and dtypes ----------------------------------------------------------


# NumPy input is converted to float64 before any tracing, so its XLA case is float64's.
MODES = [(jit, dtype) for jit in (None, False, True) for dtype in ("float32", "float64", "numpy")]
MODES.remove((True, "numpy"))


@pytest.mark.parametrize("jit_compile, dtype", MODES)
def test_modes_and_dtypes(jit_compile, dtype):
    jacobian = full_rank(3, 5, seed=6)
    expected = ref_imtl_g(jacobian)[1]
    balancer = IMTLG()
    call = balancer.aggregate
    if jit_compile is not None:
        call = tf.function(lambda j: balancer.aggregate(j), jit_compile=jit_compile)
    value = jacobian if dtype == "numpy" else tf.constant(jacobian, dtype)
    direction = call(value)
    assert direction.dtype == (tf.float32 if dtype == "float32" else tf.float64)
    tolerance = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(direction.numpy(), expected, rtol=tolerance, atol=tolerance)


# -- NaN policy ----------------------------------------------------------------------------


def test_nan_gives_zero_direction_and_keeps_state():
    balancer = IMTLG()
    balancer.aggregate(full_rank(3, 4, seed=7))
    before = [v.numpy().copy() for v in balancer.weights]
    bad = full_rank(3, 4, seed=8)
    bad[0, 0] = np.inf
    np.testing.assert_array_equal(balancer.aggregate(bad).numpy(), np.zeros(4))
    for old, var in zip(before, balancer.weights):
        np.testing.assert_array_equal(var.numpy(), old)


# -- configuration and arguments -------------------------------------------------------------


def test_config_round_trip():
    original = IMTLG(num_terms=4, nan_policy="raise", name="my_imtl")
    config = original.get_config()
    assert config["num_terms"] == 4 and config["nan_policy"] == "raise" and config["name"] == "my_imtl"
    rebuilt = IMTLG.from_config(config)
    assert type(rebuilt) is IMTLG and rebuilt.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(again) is IMTLG and again.get_config() == config
    assert kb.deserialize(kb.serialize(original)).get_config() == config


@pytest.mark.parametrize(
    "kwargs, name", [({"num_terms": 0}, "num_terms"), ({"nan_policy": "ignore"}, "nan_policy")]
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError) as info:
        IMTLG(**kwargs)
    assert name in str(info.value) and repr(kwargs[name]) in str(info.value)


def test_wrong_number_of_rows():
    balancer = IMTLG(num_terms=2)
    with pytest.raises(ValueError, match="built for 2 loss terms"):
        balancer.aggregate(np.ones((3, 4)))
