"""Small quadratic programs on the K x K Gramian, solved inside TensorFlow.

MGDA, UPGrad and DualProj all reduce to one family of K-dimensional problems,

    minimize  1/2 x^T H x - c^T x    subject to  x >= l    (elementwise),

with H symmetric positive semi-definite:

- the projection of `J^T u` onto the dual cone `{y : J y >= 0}` of the rows
  of J is `J^T v*` with `v* = argmin_{v >= u} v^T G v` (Quinton & Rey 2024,
  Proposition 1): H = G, c = 0, l = u;
- the min-norm point of the convex hull of the rows (MGDA) is
  `alpha* = argmin_{alpha in simplex} alpha^T G alpha`. With H = G + 1 1^T,
  c = 1 and l = 0 the solution b* of the problem above is
  `alpha* / (1 + ||J^T alpha*||^2)`: for b = t alpha (alpha in the simplex)
  the objective is `t^2 alpha^T G alpha / 2 + (1 - t)^2 / 2 - 1/2`, whose
  minimum over t is increasing in `alpha^T G alpha`. So `alpha* = b* / sum(b*)`.

Why these solvers. K is small and static, so each problem is solved exactly,
inside TensorFlow, in one of two graph-safe ways (no per-step Python, no
data-dependent Python control flow; both run eagerly, inside `tf.function`
and under `jit_compile=True`). Both solve the reduced linear systems by
iterated Tikhonov regularization: a Cholesky factorization of `M + rho I`
(rho = 1e-10 of the largest diagonal entry) and four refinement steps
against M itself. This needs no eigendecomposition (XLA's is iterative and
only accurate to about 1e-9), handles a singular H (a rank-1 or all-zero
Gramian, MGDA without regularization) without biasing the answer, and gives
the minimum-norm solution of each consistent system, so identical rows get
equal weights.

- K <= `MAX_ENUMERATION_TERMS` (6): enumeration. A convex QP is solved by
  the point that satisfies its KKT conditions, and that point minimizes the
  objective on one of the 2^K faces `{x_i = l_i for i in A}`. All 2^K faces
  are solved as one batched computation, the KKT residuals of every
  candidate are measured, and the feasible KKT point with the smallest
  objective is kept (ties: the largest free set). No iteration count and no
  convergence test.
- larger K: the primal active-set method for convex QPs (Nocedal & Wright,
  "Numerical Optimization", 2nd ed., Algorithm 16.3) in a `tf.while_loop` of
  at most `10 K + 10` iterations. It starts at x = l with every variable
  free, steps to the minimizer of the current face until a bound blocks, and
  releases the bound with the most negative multiplier; it ends at the exact
  KKT point after finitely many steps, typically K to 2K. Enumerating costs
  more than these iterations from K of about 8 on.

Both agree with an independent float64 reference to about 1e-12 (relative)
in the tests, for ranks from 1 to K.

Gramians are first divided by their trace (the squared Frobenius norm of J),
so the solvers see entries in [-1, 1] whatever the scale of the gradients;
the solutions of both problems are invariant under that scaling.
"""

import numpy as np
import tensorflow as tf

#: Largest number of terms solved by enumerating the 2^K active sets; above
#: it the active-set iteration is used.
MAX_ENUMERATION_TERMS = 6

# A candidate of the enumeration is a KKT point when its scaled residuals are
# below this.
_KKT_TOLERANCE = 1e-9
# Ridge (relative) and number of steps of the iterated Tikhonov solves.
_RIDGE = 1e-10
_REFINEMENTS = 4
# Candidates whose objective is this close (relative) to the best count as ties.
_TIE_TOLERANCE = 1e-12

METHODS = ("auto", "enumeration", "active_set")


# -- Gramian helpers -------------------------------------------------------------


def normalize_gramian(gramian, norm_eps=0.0):
    """Return `(G / trace(G), nonzero)`; an all-zero matrix when the trace is tiny.

    `nonzero` is a boolean scalar, False when `trace(G) <= norm_eps` (or below
    the smallest normal float64), in which case the rows of J count as zero.
    The matrix is symmetrized first.
    """
    gramian = tf.convert_to_tensor(gramian, tf.float64)
    gramian = 0.5 * (gramian + tf.transpose(gramian))
    trace = tf.linalg.trace(gramian)
    threshold = max(float(norm_eps), float(np.finfo(np.float64).tiny))
    nonzero = trace > threshold
    safe_trace = tf.where(nonzero, trace, tf.ones_like(trace))
    normalized = tf.where(nonzero, gramian / safe_trace, tf.zeros_like(gramian))
    return normalized, nonzero


# -- the lower-bounded QP ----------------------------------------------------------


def solve_lower_bounded_qp(hessian, linear, lower, method="auto"):
    """Minimize `x^T H x / 2 - c^T x` subject to `x >= l`, for several (c, l) at once.

    Args:
        hessian: (K, K) symmetric positive semi-definite float64 tensor H.
        linear: (B, K) float64 tensor; row b is the linear term c of problem b.
        lower: (B, K) float64 tensor; row b is the lower bound l of problem b.
        method: `"auto"` (enumeration for K <= `MAX_ENUMERATION_TERMS`, the
            active-set method above), `"enumeration"` or `"active_set"`.

    Returns:
        (B, K) float64 tensor, row b the solution of problem b (feasible:
        every entry is >= its bound).
    """
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {METHODS}; received method={method!r}.")
    hessian = tf.convert_to_tensor(hessian, tf.float64)
    linear = tf.convert_to_tensor(linear, tf.float64)
    lower = tf.convert_to_tensor(lower, tf.float64)
    num = hessian.shape[0]
    if num is None:
        raise ValueError("The number of terms K must be static.")
    if method == "auto":
        method = "enumeration" if num <= MAX_ENUMERATION_TERMS else "active_set"
    if method == "enumeration":
        return _solve_by_enumeration(hessian, linear, lower)
    return _solve_by_active_set(hessian, linear, lower)


def _subset_masks(num):
    """(2^K, K) array of 0/1: row s is the binary expansion of s (1 = free)."""
    codes = np.arange(2**num)[:, None]
    return ((codes >> np.arange(num)[None, :]) & 1).astype(np.float64)


def _scales(hessian, linear, lower):
    """Per-problem units of x and of the gradient, for scale-free tolerances."""
    x_scale = 1.0 + tf.reduce_max(tf.abs(lower), axis=-1)
    grad_scale = tf.reduce_max(tf.abs(hessian)) * x_scale + tf.reduce_max(tf.abs(linear), axis=-1)
    return x_scale, grad_scale + 1e-300


def _reduced_systems(hessian, free):
    """Masked systems: H on the free block, the identity on the fixed one."""
    block = free[..., :, None] * hessian * free[..., None, :]
    return block + tf.linalg.diag(1.0 - free)


def _reduced_rhs(hessian, linear, fixed_values, free):
    """Right-hand side giving the minimizer on the free block, the bounds elsewhere."""
    coupling = tf.linalg.matvec(hessian, fixed_values)  # H is symmetric
    return free * (linear - coupling) + fixed_values


def _pseudo_inverse_solve(systems, rhs):
    """Minimum-norm solution of consistent symmetric PSD systems `M x = r`.

    M: (..., K, K); r: (..., B, K). Iterated Tikhonov regularization: with
    `R = M + rho I` (rho = `_RIDGE` times the largest diagonal entry),
    `x_0 = 0` and `x_{k+1} = x_k + R^{-1} (r - M x_k)`. Each step shrinks the
    error along an eigenvector of M with eigenvalue lambda by
    `rho / (lambda + rho)` and never leaves the range of M, so the iterates
    converge to the minimum-norm solution without the bias of a plain ridge;
    `R` is positive definite, so a Cholesky factorization (exact under XLA
    too, unlike its iterative eigendecomposition) is enough.
    """
    scale = tf.reduce_max(tf.linalg.diag_part(systems), axis=-1)[..., None, None]
    ridge = _RIDGE * tf.maximum(scale, 1e-300)
    factor = tf.linalg.cholesky(systems + ridge * tf.eye(systems.shape[-1], dtype=systems.dtype))
    rhs_t = tf.linalg.matrix_transpose(rhs)  # (..., K, B)
    solution = tf.zeros_like(rhs_t)
    for _ in range(_REFINEMENTS):
        residual = rhs_t - tf.matmul(systems, solution)
        solution = solution + tf.linalg.cholesky_solve(factor, residual)
    return tf.linalg.matrix_transpose(solution)


def _solve_by_enumeration(hessian, linear, lower):
    num = hessian.shape[0]
    free = tf.constant(_subset_masks(num))  # (N, K)
    systems = _reduced_systems(hessian, free)  # (N, K, K)
    free_b = free[:, None, :]  # (N, 1, K)
    fixed_values = (1.0 - free_b) * lower[None]  # (N, B, K)
    rhs = _reduced_rhs(hessian, linear[None], fixed_values, free_b)

    # One pseudo-inverse per free set, shared by the B right-hand sides.
    candidates = _pseudo_inverse_solve(systems, rhs)  # (N, B, K)
    # The fixed coordinates are their bounds exactly (the eigenvectors of the
    # block-diagonal systems may mix the blocks by rounding).
    candidates = free_b * candidates + fixed_values

    # KKT residuals of every candidate, in units of its problem.
    x_scale, grad_scale = _scales(hessian, linear, lower)
    grad = tf.linalg.matvec(hessian, candidates) - linear[None]
    primal = tf.reduce_max(free_b * tf.nn.relu(lower[None] - candidates), axis=-1) / x_scale
    stationary = tf.reduce_max(free_b * tf.abs(grad), axis=-1) / grad_scale
    dual = tf.reduce_max((1.0 - free_b) * tf.nn.relu(-grad), axis=-1) / grad_scale
    violation = tf.maximum(primal, tf.maximum(stationary, dual))  # (N, B)
    violation = tf.where(tf.math.is_nan(violation), tf.constant(np.inf, tf.float64), violation)

    objective = tf.reduce_sum(
        candidates * (0.5 * tf.linalg.matvec(hessian, candidates) - linear[None]), axis=-1
    )
    accepted = violation <= _KKT_TOLERANCE
    best = tf.reduce_min(tf.where(accepted, objective, np.inf), axis=0)  # (B,)
    ties = accepted & (objective <= best + _TIE_TOLERANCE * (1.0 + tf.abs(best)))
    support = tf.reduce_sum(free, axis=-1)[:, None]  # (N, 1)
    by_support = tf.argmax(tf.where(ties, support, -1.0), axis=0, output_type=tf.int32)
    by_violation = tf.argmin(violation, axis=0, output_type=tf.int32)
    choice = tf.where(tf.reduce_any(accepted, axis=0), by_support, by_violation)  # (B,)
    rows = tf.range(tf.shape(choice)[0], dtype=tf.int32)
    solution = tf.gather_nd(candidates, tf.stack([choice, rows], axis=1))
    return tf.maximum(solution, lower)


def _solve_by_active_set(hessian, linear, lower):
    num = hessian.shape[0]
    _, grad_scale = _scales(hessian, linear, lower)
    tolerance = 1e-12 * grad_scale[:, None]
    batch = tf.shape(linear)[0]
    max_iterations = 10 * num + 10

    def body(iteration, x, active, at_minimum, done):
        grad = tf.linalg.matvec(hessian, x) - linear
        # (a) At the minimizer of the current face: optimal if every active
        # bound has a non-negative multiplier, else release the most negative.
        multipliers = tf.where(active, grad, np.inf)
        release = tf.one_hot(tf.argmin(multipliers, axis=-1), num, on_value=True, off_value=False)
        optimal = tf.reduce_min(multipliers, axis=-1) >= -tolerance[:, 0]
        released = active & ~(release & ~optimal[:, None])

        # (b) Otherwise: step towards the minimizer of the face, stopping at the
        # first bound hit (which becomes active).
        free = tf.cast(~active, tf.float64)
        fixed_values = (1.0 - free) * x
        systems = _reduced_systems(hessian, free)
        rhs = _reduced_rhs(hessian, linear, fixed_values, free)
        target = _pseudo_inverse_solve(systems, rhs[:, None, :])[:, 0, :]
        step = free * (target - x)
        decreasing = (free > 0) & (step < 0)
        safe_step = tf.where(decreasing, step, -tf.ones_like(step))
        ratios = tf.where(decreasing, tf.nn.relu((lower - x) / safe_step), np.inf)
        blocking = tf.reduce_min(ratios, axis=-1)
        blocked = blocking < 1.0
        length = tf.minimum(blocking, 1.0)[:, None]
        hit = tf.one_hot(tf.argmin(ratios, axis=-1), num, on_value=True, off_value=False)
        hit = hit & blocked[:, None]
        moved = tf.where(hit, lower, x + length * step)
        moved_active = active | hit

        stay = at_minimum[:, None] | done[:, None]
        new_x = tf.where(stay, x, moved)
        new_active = tf.where(
            done[:, None], active, tf.where(at_minimum[:, None], released, moved_active)
        )
        new_at_minimum = tf.where(done, at_minimum, tf.where(at_minimum, optimal, ~blocked))
        new_done = done | (at_minimum & optimal)
        return iteration + 1, new_x, new_active, new_at_minimum, new_done

    def cond(iteration, x, active, at_minimum, done):
        return (iteration < max_iterations) & ~tf.reduce_all(done)

    # Start at x = l with an empty working set: the first steps add the bounds
    # that block; starting free favours the largest free set among equal
    # minimizers (equal weights for equal rows).
    start = (
        tf.constant(0),
        lower,
        tf.zeros_like(lower, dtype=tf.bool),
        tf.zeros([batch], dtype=tf.bool),
        tf.zeros([batch], dtype=tf.bool),
    )
    _, x, _, _, _ = tf.while_loop(cond, body, start, maximum_iterations=max_iterations)
    return tf.maximum(x, lower)


# -- the dual cone (UPGrad, DualProj) ------------------------------------------------


def dual_cone_weights(gramian, preferences, norm_eps=0.0, reg_eps=1e-4, method="auto"):
    """Weights of the projections of `J^T u` onto the dual cone of the rows of J.

    For each row u of `preferences` returns `v* = argmin_{v >= u} v^T G' v`
    with `G' = G / trace(G) + reg_eps I` (TorchJD's normalization and
    regularization), so that `J^T v*` is the projection of `J^T u` onto
    `{y : J y >= 0}` (exactly so for `reg_eps = 0`). When
    `trace(G) <= norm_eps` the Gramian counts as zero and `v* = max(u, 0)`.

    Args:
        gramian: (K, K) Gramian `J J^T`.
        preferences: (B, K) rows u.
        norm_eps, reg_eps: see `UPGrad`.
        method: see `solve_lower_bounded_qp`.

    Returns:
        (B, K) float64 weights.
    """
    normalized, nonzero = normalize_gramian(gramian, norm_eps)
    num = normalized.shape[0]
    preferences = tf.convert_to_tensor(preferences, tf.float64)
    hessian = normalized + float(reg_eps) * tf.eye(num, dtype=tf.float64)
    solution = solve_lower_bounded_qp(hessian, tf.zeros_like(preferences), preferences, method)
    return tf.where(nonzero, solution, tf.nn.relu(preferences))


# -- the min-norm point of the convex hull (MGDA) -----------------------------------------


def two_term_min_norm(gramian):
    """Closed form of the min-norm point for K = 2 (Sener & Koltun 2018, Algorithm 1).

    `gamma = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1)`, `alpha = (gamma, 1 - gamma)`;
    equal rows give (1/2, 1/2).
    """
    gramian, _ = normalize_gramian(gramian)
    g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
    gap = g11 + g22 - 2.0 * g12  # ||g1 - g2||^2
    usable = gap > 0.0
    gamma = (g22 - g12) / tf.where(usable, gap, tf.ones_like(gap))
    gamma = tf.where(usable, tf.clip_by_value(gamma, 0.0, 1.0), tf.constant(0.5, tf.float64))
    return tf.stack([gamma, 1.0 - gamma])


def min_norm_weights(gramian, method="auto"):
    """Exact `argmin_{alpha in simplex} alpha^T G alpha` (the MGDA weights).

    K = 1: [1]; K = 2: the closed form; K >= 3: the lower-bounded QP with
    `H = G / trace(G) + 1 1^T`, `c = 1`, `l = 0`, rescaled onto the simplex
    (see the module docstring). An all-zero Gramian gives uniform weights.
    """
    gramian = tf.convert_to_tensor(gramian, tf.float64)
    num = gramian.shape[0]
    if num == 1:
        return tf.ones([1], tf.float64)
    if num == 2:
        return two_term_min_norm(gramian)
    normalized, nonzero = normalize_gramian(gramian)
    ones = tf.ones([1, num], tf.float64)
    hessian = normalized + tf.ones([num, num], tf.float64)
    scaled = solve_lower_bounded_qp(hessian, ones, tf.zeros_like(ones), method)[0]
    total = tf.reduce_sum(scaled)  # 1 / (1 + ||d||^2) >= 1/2 in exact arithmetic
    alpha = scaled / tf.where(total > 0.0, total, tf.ones_like(total))
    uniform = tf.fill([num], tf.constant(1.0 / num, tf.float64))
    return tf.where(nonzero & (total > 0.0), alpha, uniform)


def frank_wolfe_min_norm_weights(gramian, max_iterations=250, tolerance=1e-8):
    """The min-norm weights by Frank-Wolfe (Sener & Koltun 2018, Algorithm 2).

    Starts from uniform weights; each step moves towards the vertex `e_t`,
    `t = argmin_r (G alpha)_r`, by the exact minimizer of the two-point
    problem (exact line search), and the loop stops after `max_iterations`
    steps or when the weights change by at most `tolerance` in the L1 norm.
    Frank-Wolfe converges at rate O(1/t) in the objective, so the result is
    approximate.
    """
    normalized, _ = normalize_gramian(gramian)
    num = normalized.shape[0]
    alpha = tf.fill([num], tf.constant(1.0 / num, tf.float64))

    def body(iteration, alpha, change):
        product = tf.linalg.matvec(normalized, alpha)
        vertex = tf.argmin(product)
        target = tf.one_hot(vertex, num, dtype=tf.float64)
        current = tf.reduce_sum(alpha * product)  # ||d||^2
        cross = tf.gather(product, vertex)  # g_t . d
        corner = tf.gather(tf.linalg.diag_part(normalized), vertex)  # ||g_t||^2
        gap = current + corner - 2.0 * cross  # ||d - g_t||^2
        # Exact line search on the segment from d to g_t. `cross >= current`
        # means no vertex improves on alpha (zero Frank-Wolfe gap): stay.
        interior = (cross < corner) & (cross < current) & (gap > 0.0)
        gamma = tf.where(
            cross >= current,
            tf.constant(0.0, tf.float64),
            tf.where(
                cross >= corner,
                tf.constant(1.0, tf.float64),
                (current - cross) / tf.where(interior, gap, 1.0),
            ),
        )
        updated = (1.0 - gamma) * alpha + gamma * target
        return iteration + 1, updated, tf.reduce_sum(tf.abs(updated - alpha))

    def cond(iteration, alpha, change):
        return (iteration < max_iterations) & (change > tolerance)

    start = (tf.constant(0), alpha, tf.constant(np.inf, tf.float64))
    _, alpha, _ = tf.while_loop(cond, body, start, maximum_iterations=max(int(max_iterations), 1))
    return alpha
