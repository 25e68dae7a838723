"""The gradient-level balancers against TorchJD, the independent reference implementation.

`tests/fixtures/torchjd_reference.json` holds what TorchJD 0.18.0 (torch
2.13.0) computes on fifteen seeded float64 Jacobians: nine random ones
(K in 2, 3, 5 terms and P in 4, 10, 30 parameters) and six special cases:
(a) two conflicting rows, (b) a rank-2 Jacobian with K = 4, (c) rows of norms
1e-3 and 1e3, (d) three identical rows, (e) a Pareto-stationary pair g, -g,
and (f) case (a) times 1e-3, whose squared Frobenius norm (2.4e-5) is below
TorchJD's absolute threshold `norm_eps=1e-4`. For each Jacobian and each of
MGDA, UPGrad, DualProj, PCGrad, IMTL-G, CAGrad and Aligned-MTL it holds
TorchJD's aggregated direction and its weighting of the Gramian `J J^T`.
The fixture and its generator (`tests/fixtures/generate_torchjd_reference.py`,
which needs PyTorch and TorchJD) are committed; this module needs neither.

Where both libraries compute the same published method, the directions agree
to a cosine similarity of at least 0.9999 and a relative norm within 1e-3,
and, for the methods both solve exactly, to 1e-9 of the Frobenius norm of J.
Where they deliberately differ, the test states and checks the difference:

- MGDA: TorchJD runs Frank-Wolfe (at most 100 steps, stopping at a step of
  1e-3), keras_balance solves the simplex QP exactly. Both points lie in the
  convex hull of the rows; keras_balance's is the shortest, so it is never
  longer than TorchJD's and satisfies the optimality conditions. With K = 2
  Frank-Wolfe's exact line search is exact, and the two agree.
- UPGrad, DualProj: both solve the QP on `G / trace(G) + 1e-4 I`, so they
  agree to rounding. TorchJD also treats a Jacobian with
  `trace(G) < 1e-4` (an absolute threshold) as zero and returns the mean;
  keras_balance defaults to `norm_eps=0` and reproduces TorchJD with
  `norm_eps=1e-4` (case f).
- PCGrad: from K = 3 on the result depends on random visiting orders, drawn
  differently by the two libraries; only K = 2 (order-independent) is compared.
- IMTL-G: for linearly dependent rows TorchJD uses `pinv(G) n`, keras_balance
  `pinv(C) 1` on the cosine matrix C; the two are the least-squares solutions
  of the equal-projection conditions in two different metrics.
- CAGrad: TorchJD returns a zero direction when `||g_w||` of the
  trace-normalized problem is below `norm_eps=1e-4` (case c, where one row
  is 1e6 times shorter than the other) or when `trace(G) < 1e-4` (case f);
  at a Pareto-stationary point (case e) TorchJD's weights are zero and
  keras_balance's are those of the mean gradient.

References: P. Quinton and V. Rey, "Jacobian Descent for Multi-Objective
Optimization", arXiv:2406.16232 (TorchJD); the methods' papers are cited in
the docstrings of the balancers.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from keras_balance import balancers

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "torchjd_reference.json"
REFERENCE = json.loads(FIXTURE.read_text())

METHODS = ("mgda", "upgrad", "dualproj", "pcgrad", "imtl_g", "cagrad", "aligned_mtl")

# Agreement of two implementations of the same method.
COSINE = 0.9999
RELATIVE_NORM = 1e-3
# Agreement of two exact solvers, relative to the Frobenius norm of J.
EXACT = 1e-9
# A direction this small, relative to the Frobenius norm of J, counts as zero.
ZERO = 1e-12

# Options of the keras_balance balancers, chosen to compute TorchJD's method.
# - MGDA: the defaults (normalization="none", as TorchJD; solver="exact",
#   where TorchJD uses Frank-Wolfe: tested as a difference below).
# - UPGrad, DualProj: the defaults. reg_eps=1e-4 is TorchJD's (read from the
#   fixture and checked in test_fixture_records_torchjd); norm_eps=0 differs
#   from TorchJD's 1e-4 only when trace(G) <= 1e-4 (case f, tested below).
# - PCGrad: the default reduction="sum" is TorchJD's (the sum of the
#   projected gradients, the paper's Algorithm 1).
# - CAGrad: TorchJD's c (0.5, the paper's default) and rescale=0, the
#   paper's Algorithm 1 without rescaling, as TorchJD.
# - Aligned-MTL: the defaults: preference 1/K (TorchJD's pref_vector=None)
#   and scale="min" (TorchJD's scale_mode="min").
CAGRAD_C = REFERENCE["aggregators"]["cagrad"]["arguments"]["c"]
TORCHJD_NORM_EPS = REFERENCE["aggregators"]["upgrad"]["arguments"]["projector"]["norm_eps"]
REG_EPS = REFERENCE["aggregators"]["upgrad"]["arguments"]["projector"]["reg_eps"]
OPTIONS = {"cagrad": {"c": CAGRAD_C, "rescale": 0}}


class Case:
    """One Jacobian of the fixture, with TorchJD's results and cached keras_balance results."""

    def __init__(self, record):
        self.name = record["name"]
        self.jacobian = np.asarray(record["jacobian"], np.float64)
        self.num_terms = self.jacobian.shape[0]
        self.gramian = self.jacobian @ self.jacobian.T
        self.trace = float(np.trace(self.gramian))
        self.scale = np.sqrt(self.trace)  # Frobenius norm of J
        self.rank = int(np.linalg.matrix_rank(self.jacobian))
        self.results = record["results"]
        self._cache = {}

    def torchjd(self, method):
        """TorchJD's (direction, weights)."""
        result = self.results[method]
        return np.asarray(result["direction"]), np.asarray(result["weights"])

    def _keras(self, call, method, options):
        options = {**OPTIONS.get(method, {}), **options}
        key = (call, method, tuple(sorted(options.items())))
        if key not in self._cache:
            # A fresh balancer per call: each call advances the balancer's state.
            balancer = balancers.get(method, **options)
            self._cache[key] = getattr(balancer, call)(self.jacobian).numpy()
        return self._cache[key]

    def direction(self, method, **options):
        """keras_balance's direction, `aggregate(J)`."""
        return self._keras("aggregate", method, options)

    def weights(self, method, **options):
        """keras_balance's weights, `weigh(J)`."""
        return self._keras("weigh", method, options)

    def keras(self, method, **options):
        """keras_balance's (direction, weights)."""
        return self.direction(method, **options), self.weights(method, **options)


CASES = {record["name"]: Case(record) for record in REFERENCE["cases"]}


def names(select=lambda case: True, exclude=()):
    return [name for name, case in CASES.items() if select(case) and name not in exclude]


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_same_direction(actual, expected, scale):
    """Cosine >= COSINE and norms within RELATIVE_NORM; two zero directions also agree."""
    actual_norm, expected_norm = np.linalg.norm(actual), np.linalg.norm(expected)
    if expected_norm <= ZERO * scale:
        assert actual_norm <= ZERO * scale, (actual_norm, expected_norm)
        return
    assert cosine(actual, expected) >= COSINE, cosine(actual, expected)
    assert abs(actual_norm - expected_norm) <= RELATIVE_NORM * expected_norm, (
        actual_norm, expected_norm)


def assert_exact_match(case, method):
    """Both solve the same problem exactly: agreement to EXACT of ||J||_F.

    When J has full row rank the direction determines the weights
    (`w = G^-1 J d`), so they are compared only for linearly dependent rows,
    where both libraries must also pick the same combination.
    """
    direction = case.direction(method)
    reference_direction, reference_weights = case.torchjd(method)
    assert_same_direction(direction, reference_direction, case.scale)
    np.testing.assert_allclose(direction, reference_direction, rtol=0, atol=EXACT * case.scale)
    if case.rank < case.num_terms:
        np.testing.assert_allclose(case.weights(method), reference_weights, rtol=0,
                                   atol=EXACT * max(1.0, np.abs(reference_weights).max()))


# -- the fixture ----------------------------------------------------------------------------


def test_fixture_records_torchjd():
    assert REFERENCE["versions"]["torchjd"] == "0.18.0"
    assert REFERENCE["versions"]["torch"].split("+")[0] == "2.13.0"
    assert set(REFERENCE["aggregators"]) == set(METHODS)
    assert REFERENCE["aggregators"]["mgda"]["arguments"] == {"epsilon": 0.001, "max_iters": 100}
    assert CAGRAD_C == 0.5 and REFERENCE["aggregators"]["cagrad"]["arguments"]["norm_eps"] == 1e-4
    assert TORCHJD_NORM_EPS == 1e-4 and REG_EPS == 1e-4
    assert balancers.get("upgrad").reg_eps == REG_EPS == balancers.get("dualproj").reg_eps
    assert len(CASES) == 15 and FIXTURE.stat().st_size < 300_000
    for case in CASES.values():
        assert set(case.results) == set(METHODS)


@pytest.mark.parametrize("name", names())
def test_fixture_directions_are_combinations_of_rows(name):
    # TorchJD's direction is J^T of its weights (PCGrad's two calls were
    # seeded alike, so they drew the same random orders).
    case = CASES[name]
    for method in METHODS:
        direction, weights = case.torchjd(method)
        np.testing.assert_allclose(case.jacobian.T @ weights, direction, rtol=0,
                                   atol=ZERO * case.scale)


# -- methods both libraries solve exactly ---------------------------------------------------


@pytest.mark.parametrize("name", names())
def test_aligned_mtl_matches(name):
    assert_exact_match(CASES[name], "aligned_mtl")


@pytest.mark.parametrize("name", names(exclude=("tiny_scale",)))
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_projections_match(method, name):
    # Both libraries solve the QP on the regularized, normalized Gramian
    # G / trace(G) + 1e-4 I, so the regularization causes no difference: the
    # strictly convex QP has one solution (weights included), found to
    # rounding by both (observed: 2e-13 relative to the direction, on the
    # rank-deficient case). The regularization moves both results away from
    # the exact projection by an amount that depends on the eigenvalues of
    # G / trace(G) relative to 1e-4, not on the scale of J; see
    # test_exact_projection. The only scale at which the two libraries
    # part is an absolute one: trace(G) < 1e-4 (case f, below).
    assert_exact_match(CASES[name], method)


@pytest.mark.parametrize("name", names(lambda case: case.num_terms == 2))
def test_pcgrad_two_terms_matches(name):
    # With K = 2 each gradient has one other to be projected off: no order.
    # From K = 3 on the visiting orders are random (torch.randperm in TorchJD,
    # a seeded stateless draw here), so those cases are not compared.
    assert_exact_match(CASES[name], "pcgrad")


# Linearly dependent rows for which TorchJD's pinv(G) n and keras_balance's
# pinv(C) 1 differ (test_imtl_g_dependent_rows). Identical rows and the pair
# g, -g are dependent too, but symmetric: both formulas give the same answer.
IMTL_G_DIFFERENT = ("random_K5_P4", "rank_deficient")


@pytest.mark.parametrize("name", names(exclude=IMTL_G_DIFFERENT))
def test_imtl_g_matches(name):
    assert_exact_match(CASES[name], "imtl_g")


# -- MGDA: exact solver against Frank-Wolfe -------------------------------------------------


@pytest.mark.parametrize("name", names())
def test_mgda_weights_in_simplex(name):
    # Both libraries return the convex-combination weights themselves (sum 1).
    case = CASES[name]
    for weights in (case.weights("mgda"), case.torchjd("mgda")[1]):
        assert weights.min() >= -1e-12
        assert abs(weights.sum() - 1.0) <= 1e-12


@pytest.mark.parametrize("name", names())
def test_mgda_at_least_as_short(name):
    # The min-norm point d* of a convex set satisfies, for every other point d
    # of the set, ||d||^2 >= ||d*||^2 + ||d - d*||^2. TorchJD's Frank-Wolfe
    # point is in the hull, so it is no shorter than keras_balance's, and the
    # further away it lies the longer it is.
    case = CASES[name]
    direction, weights = case.keras("mgda")
    reference = case.torchjd("mgda")[0]
    np.testing.assert_allclose(case.jacobian.T @ weights, direction, atol=ZERO * case.scale)
    assert np.linalg.norm(direction) <= np.linalg.norm(reference) + ZERO * case.scale
    gap = reference @ reference - direction @ direction
    assert np.sum((reference - direction) ** 2) <= gap + ZERO * case.trace


@pytest.mark.parametrize("name", names())
def test_mgda_optimality(name):
    # KKT conditions of min_{alpha in simplex} ||J^T alpha||^2: g_i . d >= ||d||^2
    # for every i. keras_balance's exact solution satisfies them; TorchJD's
    # Frank-Wolfe point satisfies them only up to its stopping rule.
    case = CASES[name]
    direction = case.direction("mgda")
    assert np.min(case.jacobian @ direction) - direction @ direction >= -ZERO * case.trace


@pytest.mark.parametrize("name", names(lambda case: case.num_terms == 2))
def test_mgda_two_terms_matches(name):
    # Frank-Wolfe from (1/2, 1/2) with the exact line search lands on the
    # minimum of the segment, which for K = 2 is the whole simplex.
    assert_exact_match(CASES[name], "mgda")


@pytest.mark.parametrize("name", names(lambda case: case.num_terms > 2 and case.rank > 1))
def test_mgda_frank_wolfe_is_approximate(name):
    # The documented difference. On these Jacobians TorchJD's Frank-Wolfe stops
    # short of the minimum: its squared norm exceeds the minimum by 4e-8 to
    # 3e-4 of trace(G) (its norm by 0.0004 to 20 percent: 0.1231 against
    # 0.1028 on random_K5_P4; 1.5e-3 against 0 on the rank-deficient case,
    # whose hull contains zero), and it misses the optimality conditions by
    # 3e-5 to 4e-4 of trace(G).
    case = CASES[name]
    direction = case.direction("mgda")
    reference = case.torchjd("mgda")[0]
    assert reference @ reference - direction @ direction > 1e-8 * case.trace
    assert np.min(case.jacobian @ reference) - reference @ reference < -1e-5 * case.trace


# -- UPGrad and DualProj: the absolute threshold, the regularization ------------------------


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_tiny_jacobian(method):
    # Case f: trace(G) = 2.4e-5 < 1e-4. TorchJD's projector counts J as zero
    # and returns the mean gradient, which conflicts with the first term.
    # keras_balance (norm_eps=0) projects as at any other scale: its direction
    # is 1e-3 times TorchJD's on case (a). With TorchJD's norm_eps=1e-4 it
    # returns TorchJD's mean.
    tiny, conflicting = CASES["tiny_scale"], CASES["conflicting"]
    assert tiny.trace < TORCHJD_NORM_EPS
    reference, reference_weights = tiny.torchjd(method)
    np.testing.assert_allclose(reference_weights, [0.5, 0.5], rtol=0, atol=1e-15)
    assert np.min(tiny.jacobian @ reference) < -0.01 * tiny.trace

    direction, weights = tiny.keras(method)
    larger = 1e-3 * conflicting.torchjd(method)[0]
    assert_same_direction(direction, larger, tiny.scale)
    np.testing.assert_allclose(direction, larger, rtol=0, atol=EXACT * tiny.scale)
    assert cosine(direction, reference) < 0.95
    assert np.all(tiny.jacobian @ direction >= -REG_EPS * tiny.trace * weights - ZERO * tiny.trace)

    direction, weights = tiny.keras(method, norm_eps=TORCHJD_NORM_EPS)
    np.testing.assert_allclose(direction, reference, rtol=0, atol=EXACT * tiny.scale)
    np.testing.assert_allclose(weights, reference_weights, rtol=0, atol=EXACT)


@pytest.mark.parametrize("name", names(exclude=("tiny_scale",)))
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_regularization_bound(method, name):
    # The regularized QP gives (J d)_i >= -reg_eps trace(G) w_i instead of
    # J d >= 0: TorchJD's directions may conflict by that much (observed:
    # DualProj on four cases, down to -6.1e-5 trace(G), and both methods on
    # the rank-deficient case, down to -1.35e-4 trace(G)).
    case = CASES[name]
    reference, reference_weights = case.torchjd(method)
    slack = REG_EPS * case.trace * np.maximum(reference_weights, 0.0)
    assert np.all(case.jacobian @ reference >= -slack - ZERO * case.trace)


# The cases where the regularization moves the result most.
REGULARIZED_MOST = ("random_K3_P4", "random_K5_P4", "random_K5_P10", "rank_deficient")


@pytest.mark.parametrize("name", REGULARIZED_MOST)
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_exact_projection(method, name):
    # keras_balance with reg_eps=0 is the exact projection (J d >= 0). It
    # differs from the regularized one (TorchJD's, and keras_balance's
    # default) by at most 5e-3 ||J||_F on these Jacobians: the most where
    # G / trace(G) has an eigenvalue near reg_eps (5e-4 for random_K5_P4:
    # 4.9e-3 ||J||_F) or where the exact projection is zero (rank_deficient:
    # 1e-3 ||J||_F, all of TorchJD's direction). On the other cases the
    # difference is at most 1.3e-4 ||J||_F.
    case = CASES[name]
    reference = case.torchjd(method)[0]
    exact = case.direction(method, reg_eps=0.0)
    assert np.min(case.jacobian @ exact) >= -ZERO * case.trace
    assert np.linalg.norm(exact - reference) <= 1e-2 * case.scale


# -- IMTL-G: linearly dependent rows ---------------------------------------------------------


def least_squares_residual(matrix, x, target):
    """min_s ||s matrix x - target||: how far `x` is, up to scale, from solving it."""
    y = matrix @ x
    return float(np.linalg.norm((y @ target) / (y @ y) * y - target))


@pytest.mark.parametrize("name", IMTL_G_DIFFERENT)
def test_imtl_g_dependent_rows(name):
    # With K > rank(J) the conditions "equal projections onto every unit
    # gradient" have no exact solution, and each library returns a
    # least-squares one. With n the gradient norms and C = G / (n n^T):
    # TorchJD: w proportional to pinv(G) n (G w = n in the least-squares sense);
    # keras_balance: w proportional to pinv(C) 1 / n (C (n w) = 1 in that sense).
    # For independent rows the two coincide (test_imtl_g_matches).
    case = CASES[name]
    assert case.rank < case.num_terms
    norms = np.sqrt(np.diag(case.gramian))
    cosines = case.gramian / np.outer(norms, norms)
    reference_direction, reference = case.torchjd("imtl_g")
    direction, weights = case.keras("imtl_g")

    raw = np.linalg.pinv(case.gramian, rcond=1e-10, hermitian=True) @ norms
    np.testing.assert_allclose(reference, raw / raw.sum(), rtol=0, atol=1e-9)
    raw = np.linalg.pinv(cosines, rcond=1e-10, hermitian=True) @ np.ones(case.num_terms) / norms
    np.testing.assert_allclose(weights, raw / raw.sum(), rtol=0, atol=1e-9)
    assert abs(weights.sum() - 1.0) <= 1e-12 and abs(reference.sum() - 1.0) <= 1e-12

    ones = np.ones(case.num_terms)
    assert least_squares_residual(cosines, norms * weights, ones) < least_squares_residual(
        cosines, norms * reference, ones)
    assert least_squares_residual(case.gramian, reference, norms) < least_squares_residual(
        case.gramian, weights, norms)
    # A real difference: observed cosines of -0.001 (random_K5_P4) and 0.64.
    assert cosine(direction, reference_direction) < 0.9


# -- CAGrad ------------------------------------------------------------------------------------


def cagrad_objective(gramian, weights):
    """The inner objective `w^T G b + c ||g0|| sqrt(w^T G w)` at the w* behind CAGrad weights."""
    num = len(gramian)
    mean = np.full(num, 1.0 / num)
    step = weights - mean  # = (sqrt(phi) / ||g_w*||) w*, and w* sums to 1
    inner = step / step.sum()
    sqrt_phi = CAGRAD_C * np.sqrt(mean @ gramian @ mean)
    return inner, inner @ gramian @ mean + sqrt_phi * np.sqrt(max(inner @ gramian @ inner, 0.0))


CAGRAD_DIFFERENT = ("different_scales", "pareto_stationary", "tiny_scale")


@pytest.mark.parametrize("name", names(exclude=CAGRAD_DIFFERENT))
def test_cagrad_matches(name):
    # Both solve the same convex inner problem, with different solvers (TorchJD:
    # cvxpy with Clarabel; keras_balance: an interior-point method): the
    # directions agree to 1.5e-4 relative at worst (cosine >= 1 - 2e-8), and
    # keras_balance's inner objective is never higher than TorchJD's.
    case = CASES[name]
    direction, weights = case.keras("cagrad")
    reference, reference_weights = case.torchjd("cagrad")
    assert_same_direction(direction, reference, case.scale)
    if case.rank == case.num_terms:  # the minimizer w* is unique
        np.testing.assert_allclose(weights, reference_weights, rtol=0, atol=RELATIVE_NORM)
    assert (cagrad_objective(case.gramian, weights)[1]
            <= cagrad_objective(case.gramian, reference_weights)[1] + ZERO * case.trace)


def test_cagrad_pareto_stationary():
    # Case e, rows g and -g: g_w* = 0. TorchJD returns zero weights; keras_balance
    # those of the mean gradient, 1/K each. Here the mean is zero too.
    case = CASES["pareto_stationary"]
    reference, reference_weights = case.torchjd("cagrad")
    assert np.array_equal(reference_weights, [0.0, 0.0])
    assert np.array_equal(reference, np.zeros_like(reference))
    direction, weights = case.keras("cagrad")
    assert np.array_equal(weights, [0.5, 0.5])
    np.testing.assert_allclose(direction, case.jacobian.mean(axis=0), rtol=0, atol=0)


def test_cagrad_relative_threshold():
    # Case c, norms 1e-3 and 1e3: w* is (nearly) all on the short row, so
    # ||g_w*|| is about 1e-6 ||J||_F, under TorchJD's norm_eps=1e-4 (applied to
    # the trace-normalized problem), and TorchJD returns zero weights as if at
    # a Pareto-stationary point. keras_balance counts g_w* as zero only below
    # 1e-10 of the largest gradient norm and returns the CAGrad direction.
    case = CASES["different_scales"]
    reference, reference_weights = case.torchjd("cagrad")
    assert np.array_equal(reference_weights, [0.0, 0.0]) and not np.any(reference)
    direction, weights = case.keras("cagrad")
    inner = cagrad_objective(case.gramian, weights)[0]
    assert np.all(inner >= -1e-12)
    assert 0.0 < np.sqrt(inner @ case.gramian @ inner) / case.scale < 1e-4
    np.testing.assert_allclose(case.jacobian.T @ weights, direction, rtol=0, atol=ZERO * case.scale)
    assert np.linalg.norm(direction) > 0.5 * case.scale
    # Here the minimizer w* is the vertex of the short row: the objective
    # increases from it towards the other vertex (its derivative there is
    # about 5e5). CAGrad's direction is then g0 + c ||g0|| g_1 / ||g_1||.
    mean = np.full(2, 0.5)
    sqrt_phi = CAGRAD_C * np.sqrt(mean @ case.gramian @ mean)
    towards = np.array([-1.0, 1.0])
    slope = towards @ case.gramian @ mean + sqrt_phi * case.gramian[1, 0] / np.sqrt(
        case.gramian[0, 0]) - sqrt_phi * np.sqrt(case.gramian[0, 0])
    assert slope > 0.1 * case.trace
    short = case.jacobian[0]
    vertex = case.jacobian.mean(axis=0) + sqrt_phi / np.linalg.norm(short) * short
    assert_same_direction(direction, vertex, case.scale)
    # The interior-point solver stops 2.5e-12 from the vertex (its barrier
    # ends at 1e-12 of the largest squared norm): 1.1e-6 relative here.
    assert np.linalg.norm(direction - vertex) <= 1e-5 * np.linalg.norm(vertex)


def test_cagrad_tiny_jacobian():
    # Case f, trace(G) < TorchJD's norm_eps: TorchJD's normalized Gramian is
    # zero and so are its weights. keras_balance is scale-invariant: its
    # direction is 1e-3 times TorchJD's on case (a).
    tiny, conflicting = CASES["tiny_scale"], CASES["conflicting"]
    assert tiny.trace < TORCHJD_NORM_EPS
    reference, reference_weights = tiny.torchjd("cagrad")
    assert np.array_equal(reference_weights, [0.0, 0.0])
    assert not np.any(reference)
    direction = tiny.direction("cagrad")
    assert_same_direction(direction, 1e-3 * conflicting.torchjd("cagrad")[0], tiny.scale)
