"""Properties every gradient-level balancer is tested against (in the style of TorchJD).

Runs over every registered gradient-level balancer, on random K x P matrices
with K = 2..10, ranks from 1 to full, rows scaled from 1e-10 to 1e10, and the
all-zero matrix. Each property is checked where the method guarantees it:

- finite output of shape (P,) in float32 and float64, and `aggregate(J) == J^T term_weights`;
- the all-zero matrix gives the zero direction;
- positive homogeneity: d(sJ) = s d(J) (degree 0 for plain gradient normalization);
- non-conflicting (J d >= 0) for MGDA, UPGrad and DualProj;
- invariance to permuting the rows (not PCGrad, whose order is random, nor LR
  annealing, whose reference term is row 0);
- identical rows: a positive multiple of the row, with the known factor;
- MGDA's KKT conditions; PCGrad on two rows equals its closed form;
- eager, `tf.function` and XLA agree, for float32, float64, NumPy and list input;
- the NaN policy: a non-finite Jacobian or loss gives the zero direction and
  changes nothing ("skip"), or fails the step and changes nothing ("raise").

The NaN-policy test also runs each method with the non-default options of
`helpers.OPTIONS`.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_balance import balancers
from helpers import (
    GRADIENT_LEVEL,
    assert_same_state,
    full_rank,
    make,
    random_sequence,
    sample_matrices,
    state_of,
    variants,
)

NAMES = GRADIENT_LEVEL
K = 3
NAN, INF = float("nan"), float("inf")
NON_CONFLICTING = {"mgda", "upgrad", "dualproj"}
NOT_PERMUTATION_INVARIANT = {"pcgrad", "lr_annealing", "gradvac"}
DEGREE = {"gradient_normalization": 0, "fairgrad": 0, "nash_mtl": 0}
# Direction for K identical rows g, as a multiple of g (None: only "positive multiple").
IDENTICAL_FACTOR = {
    "mgda": lambda k: 1.0,
    "upgrad": lambda k: 1.0,
    "dualproj": lambda k: 1.0,
    "pcgrad": lambda k: float(k),
    "config": lambda k: float(k),
    "gradvac": lambda k: float(k),  # no cosine falls below its target
    "imtl_g": lambda k: 1.0,
    "gradnorm": lambda k: float(k),
    "cagrad": lambda k: 1.5,  # (1 + c) g at c = 0.5, no rescaling
    "aligned_mtl": lambda k: 1.0,
    "graddrop": lambda k: float(k),  # every sign agrees: nothing is dropped
    "db_mtl": lambda k: 0.1 * k,  # (1 - beta) g / (L + epsilon) per term at L = 1
    "excess_mtl": lambda k: 1.0,  # uniform weights 1/K on the first step
}


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
    # PCGrad draws its projection order at random: `make` seeds it so repeated calls agree.
    balancer = make(name, jacobian.shape[0])
    losses = np.ones(jacobian.shape[0]) if losses is None else losses
    d = balancer.aggregate(jacobian, losses).numpy()
    return d, balancer


@pytest.mark.parametrize(
    "name, options",
    [pytest.param(name, {}, id=name) for name in NAMES]
    + [
        pytest.param("gradient_normalization", dict(scale="mean_norm"), id="gradient_normalization-mean"),
        pytest.param("gradient_normalization", dict(epsilon=0.0), id="gradient_normalization-epsilon0"),
    ],
)
def test_finite_right_shape_and_weights_explain_direction(name, options):
    for jacobian in sample_matrices():
        k = jacobian.shape[0]
        for dtype in ("float32", "float64"):
            balancer = make(name, k, **options)
            d = balancer.aggregate(jacobian.astype(dtype), np.ones(k)).numpy()
            assert d.shape == (jacobian.shape[1],)
            assert np.all(np.isfinite(d)), (name, dtype, jacobian)
            w = balancer.term_weights.numpy().astype(np.float64)
            assert np.all(np.isfinite(w)), (name, dtype, w)
            if not balancer.combines_rows:  # GradDrop, DB-MTL: the weights are documented per method
                continue
            scale = np.abs(jacobian).max() * max(1.0, np.abs(w).max()) * k
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
        d = make(name, len(jacobian), reg_eps=0.0).aggregate(jacobian).numpy()
        assert np.all(jacobian @ d >= -1e-9 * scale), (name, jacobian @ d)
        # ... and with TorchJD's default reg_eps = 1e-4 up to its bound
        # (J d)_i >= -reg_eps * trace(G) * w_i.
        balancer = make(name, len(jacobian))
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


# Eager: every kind of input; a tf.function (float64 input: `test_raise_policy`) and XLA
# (NumPy input is converted to float64 before any tracing, so its case is float64's).
MODES = [(None, "float32"), (None, "float64"), (None, "numpy"), (None, "list")]
MODES += [(False, "float32"), (True, "float32"), (True, "float64")]
# Options under which a method runs code its defaults leave out.
MODE_OPTIONS = {"gradient_normalization": dict(scale="mean_norm", alpha=1.5)}
# Methods built on `tf.linalg.eigh`, which XLA computes by Jacobi sweeps to about
# 1e-6 even in float64.
XLA_EIGH = {"aligned_mtl", "imtl_g", "config"}


@pytest.mark.parametrize("jit_compile, dtype", MODES, ids=[f"{j}-{d}" for j, d in MODES])
@pytest.mark.parametrize("name", NAMES)
def test_modes_and_dtypes(name, jit_compile, dtype):
    # XLA draws PCGrad's random order from another stream than eager
    # execution; with two rows the order does not matter.
    k = 2 if name in ("pcgrad", "gradvac") else K
    jacobian = full_rank(k, 5, seed=5)
    sequence = np.array([[1.0, 2.0, 3.0], [0.5, 1.8, 3.3]])[:, :k]
    options = MODE_OPTIONS.get(name, {})
    reference = make(name, k, **options)  # eager, float64: the last step's direction
    expected = [reference.aggregate(jacobian, losses).numpy() for losses in sequence][-1]
    balancer = make(name, k, **options)
    call = balancer.aggregate
    if jit_compile is not None:
        call = tf.function(lambda j, l: balancer.aggregate(j, l), jit_compile=jit_compile)
    value = {"numpy": jacobian, "list": jacobian.tolist()}.get(dtype)
    for losses in sequence:
        d = call(tf.constant(jacobian, dtype) if value is None else value, tf.constant(losses, "float32"))
    assert d.dtype == (tf.float64 if dtype in ("float64", "numpy") else tf.float32)
    tolerance = 1e-5 if d.dtype == tf.float32 or (jit_compile and name in XLA_EIGH) else 1e-9
    np.testing.assert_allclose(d.numpy(), expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())
    assert int(balancer.step.numpy()) == len(sequence)


# (value, where, step, built beforehand)
BAD_STEPS = [
    pytest.param(NAN, "jacobian", 0, False, id="nan-jacobian-first-step"),
    pytest.param(INF, "losses", 0, True, id="inf-loss-first-step-built"),
    pytest.param(-INF, "jacobian", 2, False, id="-inf-jacobian-third-step"),
    pytest.param(NAN, "losses", 3, True, id="nan-loss-fourth-step"),
]


@pytest.mark.parametrize("bad, where, bad_step, built", BAD_STEPS)
@pytest.mark.parametrize("name, options", variants(NAMES))
def test_a_non_finite_step_changes_nothing(name, options, bad, where, bad_step, built):
    """Skip policy: the zero direction, the previous weights, every variable as it was; the run
    then goes on exactly as a run that never saw the step."""
    jacobians = [full_rank(K, 4, seed=7 + t) for t in range(5)]
    losses = random_sequence(5, K, seed=3)
    # Per-column state (DB-MTL, ExcessMTL) is created with P known: at once when built beforehand.
    columns = {"num_columns": 4} if balancers.available()[name].column_state else {}
    extra = {"num_terms": K, **columns} if built else {}
    clean, dirty = make(name, K, **options, **extra), make(name, K, **options, **extra)
    expected, got = [], []
    for t, (jacobian, loss) in enumerate(zip(jacobians, losses)):
        if t == bad_step:
            # Before the first step, the state is that of a new balancer.
            reference = dirty if dirty.built else make(name, K, num_terms=K, **columns, **options)
            before, previous = state_of(reference), reference.term_weights.numpy()
            broken = {"jacobian": jacobian.copy(), "losses": loss.copy()}
            broken[where][(1, 2) if where == "jacobian" else 1] = bad
            d = dirty.aggregate(broken["jacobian"], broken["losses"]).numpy()
            np.testing.assert_array_equal(d, np.zeros(4))
            np.testing.assert_array_equal(dirty.term_weights.numpy(), previous)
            assert_same_state(state_of(dirty), before)
        expected.append(clean.aggregate(jacobian, loss).numpy())
        got.append(dirty.aggregate(jacobian, loss).numpy())
    np.testing.assert_array_equal(np.array(got), np.array(expected))
    assert_same_state(state_of(dirty), state_of(clean))


@pytest.mark.parametrize(
    "graph, where",
    [(False, "jacobian"), (False, "losses"), (True, "jacobian")],
    ids=["eager", "eager-loss", "graph"],
)
@pytest.mark.parametrize("name", NAMES)
def test_raise_policy(name, graph, where):
    """Raise policy: the step fails and changes nothing; finite steps go on as if it never came."""
    jacobians = [full_rank(K, 4, seed=7 + t) for t in range(4)]
    losses = random_sequence(4, K, seed=3)
    clean = make(name, K, num_terms=K)
    balancer = make(name, K, nan_policy="raise", num_terms=K)
    fn = tf.function(lambda j, l: balancer.aggregate(j, l)) if graph else balancer.aggregate
    got = []
    for t, (jacobian, loss) in enumerate(zip(jacobians, losses)):
        if t == 2:
            before = state_of(balancer)
            broken = {"jacobian": jacobian.copy(), "losses": loss.copy()}
            broken[where][(1, 2) if where == "jacobian" else 1] = NAN
            with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite"):
                fn(tf.constant(broken["jacobian"]), tf.constant(broken["losses"]))
            assert_same_state(state_of(balancer), before)
        got.append(fn(tf.constant(jacobian), tf.constant(loss)).numpy())
    assert got[-1].dtype == np.float64
    expected = [clean.aggregate(jacobian, loss).numpy() for jacobian, loss in zip(jacobians, losses)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_mgda_kkt_conditions():
    for jacobian in CASES:
        balancer = make("mgda", len(jacobian))
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
