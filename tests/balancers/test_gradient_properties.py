"""Properties every gradient-level balancer is tested against (in the style of TorchJD).

Runs over every registered gradient-level balancer, on random K x P matrices
with K = 2..10, ranks from 1 to full, rows scaled from 1e-10 to 1e10, and the
all-zero matrix. Each property is checked where the method guarantees it:

- finite output of shape (P,), and `aggregate(J) == J^T term_weights`;
- the all-zero matrix gives the zero direction;
- positive homogeneity: d(sJ) = s d(J) (degree 0 for plain gradient normalization);
- non-conflicting (J d >= 0) for MGDA, UPGrad and DualProj;
- invariance to permuting the rows (not PCGrad, whose order is random, nor LR
  annealing, whose reference term is row 0);
- identical rows: a positive multiple of the row, with the known factor;
- MGDA's KKT conditions; PCGrad on two rows equals its closed form.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_balance import balancers

NAMES = sorted(n for n, cls in balancers.available().items() if cls.kind == balancers.GRADIENT_LEVEL)
NON_CONFLICTING = {"mgda", "upgrad", "dualproj"}
NOT_PERMUTATION_INVARIANT = {"pcgrad", "lr_annealing"}
DEGREE = {"gradient_normalization": 0}
# Direction for K identical rows g, as a multiple of g (None: only "positive multiple").
IDENTICAL_FACTOR = {
    "mgda": lambda k: 1.0,
    "upgrad": lambda k: 1.0,
    "dualproj": lambda k: 1.0,
    "pcgrad": lambda k: float(k),
    "imtl_g": lambda k: 1.0,
    "gradnorm": lambda k: float(k),
    "cagrad": lambda k: 1.5,  # (1 + c) g at c = 0.5, no rescaling
    "aligned_mtl": lambda k: 1.0,
}


def make(name):
    # PCGrad draws its projection order at random: seed it so repeated calls agree.
    return balancers.get(name, seed=0) if name == "pcgrad" else balancers.get(name)


def random_jacobian(rng, k, p, rank, scale):
    left = rng.normal(size=(k, rank))
    right = rng.normal(size=(rank, p))
    rows = left @ right
    return rows * scale


def cases(count=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        k = int(rng.integers(2, 11))
        rank = int(rng.integers(1, k + 1))
        scale = 10.0 ** float(rng.choice([-10, -5, 0, 5, 10]))
        out.append(random_jacobian(rng, k, 12, rank, scale))
    return out


CASES = cases()
LOSS_RNG = np.random.default_rng(1)


def losses_for(jacobian):
    return LOSS_RNG.uniform(0.5, 2.0, size=jacobian.shape[0])


def direction(name, jacobian, losses=None):
    balancer = make(name)
    losses = np.ones(jacobian.shape[0]) if losses is None else losses
    d = balancer.aggregate(jacobian, losses).numpy()
    return d, balancer


@pytest.mark.parametrize("name", NAMES)
def test_finite_right_shape_and_weights_explain_direction(name):
    for jacobian in CASES:
        d, balancer = direction(name, jacobian)
        assert d.shape == (jacobian.shape[1],)
        assert np.all(np.isfinite(d)), (name, jacobian.shape)
        w = balancer.term_weights.numpy().astype(np.float64)
        scale = np.abs(jacobian).max() * max(1.0, np.abs(w).max()) * jacobian.shape[0]
        np.testing.assert_allclose(d, jacobian.T @ w, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [2, 5, 10])
def test_zero_matrix_gives_zero_direction(name, k):
    d, balancer = direction(name, np.zeros((k, 7)))
    np.testing.assert_array_equal(d, 0.0)
    assert np.all(np.isfinite(balancer.term_weights.numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_positive_homogeneity(name):
    degree = DEGREE.get(name, 1)
    for jacobian in CASES[:6]:
        base = jacobian / np.abs(jacobian).max()
        reference, _ = direction(name, base)
        for scale in (1e-10, 1e-3, 1e4, 1e10):
            d, _ = direction(name, base * scale)
            np.testing.assert_allclose(
                d / scale**degree, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max() + 1e-12
            )


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING & set(NAMES)))
def test_non_conflicting(name):
    rng = np.random.default_rng(3)
    for jacobian in CASES + [random_jacobian(rng, 6, 4, 4, 1.0), np.array([[1.0, 0.0], [-1.0, 0.1]])]:
        scale = np.linalg.norm(jacobian, axis=1).max() ** 2
        if name == "mgda":
            d, _ = direction(name, jacobian)
            assert np.all(jacobian @ d >= -1e-9 * scale), (name, jacobian @ d)
            continue
        # Exactly non-conflicting without the regularization of the Gramian ...
        d = make(name).__class__(reg_eps=0.0).aggregate(jacobian).numpy()
        assert np.all(jacobian @ d >= -1e-9 * scale), (name, jacobian @ d)
        # ... and with TorchJD's default reg_eps = 1e-4 up to its bound
        # (J d)_i >= -reg_eps * trace(G) * w_i.
        balancer = make(name)
        d = balancer.aggregate(jacobian).numpy()
        bound = 1e-4 * np.trace(jacobian @ jacobian.T) * np.abs(balancer.term_weights.numpy())
        assert np.all(jacobian @ d >= -bound - 1e-9 * scale), (name, jacobian @ d, bound)


@pytest.mark.parametrize("name", sorted(set(NAMES) - NOT_PERMUTATION_INVARIANT))
def test_permutation_invariance(name):
    rng = np.random.default_rng(4)
    for jacobian in CASES[:8]:
        losses = losses_for(jacobian)
        order = rng.permutation(jacobian.shape[0])
        d, _ = direction(name, jacobian, losses)
        d_perm, _ = direction(name, jacobian[order], losses[order])
        np.testing.assert_allclose(d_perm, d, rtol=1e-4, atol=1e-5 * np.abs(d).max() + 1e-9 * np.abs(jacobian).max())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [2, 3, 7])
def test_identical_rows(name, k):
    row = np.random.default_rng(k).normal(size=9)
    d, _ = direction(name, np.tile(row, (k, 1)))
    factor = float(d @ row / (row @ row))
    assert factor > 0
    np.testing.assert_allclose(d, factor * row, rtol=1e-5, atol=1e-7)
    if name in IDENTICAL_FACTOR:
        np.testing.assert_allclose(factor, IDENTICAL_FACTOR[name](k), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_graph_xla_float32_and_numpy(name):
    # XLA draws PCGrad's random order from another stream than eager
    # execution; with two rows the order does not matter.
    jacobian = CASES[1][:2] if name == "pcgrad" else CASES[1]
    losses = np.ones(jacobian.shape[0])
    eager, _ = direction(name, jacobian, losses)
    balancer = make(name)
    compiled = tf.function(lambda j, l: balancer.aggregate(j, l), jit_compile=True)
    out = compiled(tf.constant(jacobian, tf.float32), tf.constant(losses, tf.float32)).numpy()
    assert out.dtype == np.float32
    scale = np.abs(eager).max()
    np.testing.assert_allclose(out, eager, rtol=2e-3, atol=2e-3 * scale)


def test_mgda_kkt_conditions():
    for jacobian in CASES:
        balancer = make("mgda")
        d = balancer.aggregate(jacobian).numpy()
        alpha = balancer.term_weights.numpy().astype(np.float64)
        scale = np.linalg.norm(jacobian, axis=1).max() ** 2
        assert np.all(alpha >= -1e-6) and abs(alpha.sum() - 1.0) < 1e-5
        products = jacobian @ d
        norm2 = d @ d
        # Min-norm point of the convex hull: g_i . d >= ||d||^2, with equality on the support.
        assert np.all(products >= norm2 - 1e-4 * scale)
        support = alpha > 1e-3
        np.testing.assert_allclose(products[support], norm2, atol=1e-4 * scale)


def test_pcgrad_two_rows_closed_form():
    rng = np.random.default_rng(5)
    for _ in range(5):
        g1, g2 = rng.normal(size=(2, 6))
        if g1 @ g2 >= 0:
            g2 = -g2
        expected = g1 + g2 - (g1 @ g2) / (g2 @ g2) * g2 - (g1 @ g2) / (g1 @ g1) * g1
        for _ in range(3):  # every order gives the same result for K = 2
            d, _ = direction("pcgrad", np.stack([g1, g2]))
            np.testing.assert_allclose(d, expected, rtol=1e-6)
        g2 = -g2  # no conflict: the plain sum
        d, _ = direction("pcgrad", np.stack([g1, g2]))
        np.testing.assert_allclose(d, g1 + g2, rtol=1e-6)
