"""The alpha-fair weights of Nash-MTL and FairGrad: solve `(G w)_i = w_i^(-1/alpha)`, `w > 0`.

Both methods look for a direction `d = J^T w` whose improvement of each term,
`g_i . d = (G w)_i`, is a fixed decreasing function of the term's weight:

    (G w)_i = w_i^(-1/alpha)        for every i, with w > 0.

`alpha = 1` is Nash-MTL's bargaining condition `w_i (G w)_i = 1`. The system
is the stationarity condition of the convex problem

    minimize_{w > 0}  1/2 w^T G w - sum_i u(w_i),     u'(w) = w^(-1/alpha)

(`u = log` for alpha = 1, `u(w) = w^(1 - 1/alpha) / (1 - 1/alpha)` otherwise),
so a solution is its minimizer. This module solves that problem inside
TensorFlow, graph- and XLA-safe, with a bounded number of damped Newton steps.
"""

import tensorflow as tf

#: Most Newton steps of one solve; the loop stops earlier when the squared
#: Newton decrement falls below `TOLERANCE`.
ITERATIONS = 100
TOLERANCE = 1e-22
#: Ridge added to the cosine matrix: `(G w)_i` becomes `(G w)_i + RIDGE G_ii w_i`.
#: It gives the problem a minimizer when none exists (zero is a non-negative
#: combination of the gradients: a Pareto-stationary point) and changes a
#: well-posed solution by a relative amount of order RIDGE.
RIDGE = 1e-10
#: Step lengths tried by the line search: 1, 1/2, ..., 2^-(LINE_SEARCH - 1).
LINE_SEARCH = 40
#: Below this squared Newton decrement the full step is taken without a line search.
FULL_STEP = 1e-6


def _utility(beta, reach, alpha):
    """`sum_i reach_i u(beta_i)` for a batch of points `beta` (rows)."""
    if alpha == 1.0:
        return tf.reduce_sum(reach * tf.math.log(beta), axis=-1)
    power = 1.0 - 1.0 / alpha
    return tf.reduce_sum(reach * tf.pow(beta, power) / power, axis=-1)


def solve_scaled(cosines, reach, alpha, start):
    """Minimize `F(b) = 1/2 b^T C b - sum_i reach_i u(b_i)` over `b > 0`.

    `cosines` is a float64 (K, K) positive semi-definite matrix with a unit
    diagonal (the ridge is added here), `reach` K positive numbers and `start`
    a positive starting point. Returns the minimizer and the number of Newton
    steps taken.

    Damped Newton: each step solves with the Hessian
    `C + diag(reach_i / alpha * b_i^(-1/alpha - 1))` (positive definite), cuts
    the step to stay inside `b > 0` (at most 0.99 of the way to the boundary)
    and takes the longest of the lengths 1, 1/2, 1/4, ... that decreases `F`
    by a sufficient amount (Armijo); in the quadratic phase it takes the full
    step. The number of steps is bounded, so it runs under `jit_compile=True`.
    """
    num_terms = cosines.shape[0]
    dtype = cosines.dtype
    matrix = cosines + RIDGE * tf.eye(num_terms, dtype=dtype)
    lengths = 0.5 ** tf.range(LINE_SEARCH, dtype=dtype)
    exponent = -1.0 / alpha

    def objective(points):
        quadratic = 0.5 * tf.reduce_sum(tf.matmul(points, matrix) * points, axis=-1)
        return quadratic - _utility(points, reach, alpha)

    def newton_step(step, beta, decrement):
        gradient = tf.linalg.matvec(matrix, beta) - reach * tf.pow(beta, exponent)
        curvature = reach / alpha * tf.pow(beta, exponent - 1.0)
        hessian = matrix + tf.linalg.diag(curvature)
        delta = tf.linalg.solve(hessian, gradient[:, None])[:, 0]
        decrement = tf.reduce_sum(gradient * delta)
        # Longest step that keeps beta > 0 (fraction to the boundary 0.99), at most 1.
        limits = tf.where(delta > 0.0, beta / tf.where(delta > 0.0, delta, 1.0), tf.fill([num_terms], tf.constant(2.0, dtype)))
        longest = tf.minimum(tf.constant(1.0, dtype), 0.99 * tf.reduce_min(limits))
        candidates = beta[None, :] - (longest * lengths)[:, None] * delta[None, :]
        candidates = tf.maximum(candidates, tf.constant(1e-300, dtype))
        values = objective(candidates)
        target = objective(beta[None, :])[0] - 1e-4 * longest * lengths * decrement
        sufficient = tf.logical_and(tf.math.is_finite(values), values <= target)
        chosen = tf.where(
            tf.reduce_any(sufficient),
            tf.argmax(tf.cast(sufficient, tf.int32), output_type=tf.int32),
            tf.argmin(tf.where(tf.math.is_finite(values), values, tf.fill(tf.shape(values), tf.constant(1e300, dtype))),
                      output_type=tf.int32),
        )
        chosen = tf.where(decrement < FULL_STEP, tf.constant(0, tf.int32), chosen)
        return step + 1, candidates[chosen], decrement

    steps, beta, _ = tf.while_loop(
        lambda step, beta, decrement: tf.logical_and(step < ITERATIONS, decrement > TOLERANCE),
        newton_step,
        (tf.constant(0), start, tf.constant(1.0, dtype)),
        maximum_iterations=ITERATIONS,
    )
    return beta, steps


def fair_weights(gramian, alpha, previous=None):
    """The solution `w > 0` of `(G w)_i = w_i^(-1/alpha)` for a float64 (K, K) Gramian.

    The problem is solved in the scaled variables `b_i = sqrt(G_ii) w_i`, in
    which the matrix is the cosine matrix of the gradients (unit diagonal):
    rows of very different norms then cost nothing in accuracy. Terms whose
    gradient is exactly zero cannot satisfy their equation; they are left out
    and get the weight 0 (their row adds nothing to `J^T w` anyway).

    Args:
        gramian: float64 (K, K) Gramian.
        alpha: float > 0.
        previous: optional (K,) scaled solution `b` of an earlier call, a warm
            start; used when it gives a lower objective than the default start.

    Returns:
        `(w, b)`: the weights, and the scaled solution to keep for a warm start.
    """
    num_terms = gramian.shape[0]
    dtype = gramian.dtype
    diagonal = tf.linalg.diag_part(gramian)
    largest = tf.reduce_max(diagonal)
    active = diagonal > 0.0
    # Normalized to a largest diagonal of 1; the solution scales back in closed form.
    unit = tf.where(largest > 0.0, largest, tf.ones_like(largest))
    normalized = tf.where(active, diagonal / unit, tf.ones_like(diagonal))
    root = tf.sqrt(normalized)
    cosines = gramian / unit / (root[:, None] * root[None, :])
    both = tf.logical_and(active[:, None], active[None, :])
    identity = tf.eye(num_terms, dtype=dtype)
    cosines = tf.where(both, cosines, identity)
    cosines = 0.5 * (cosines + tf.transpose(cosines))
    # u'(w) = w^(-1/alpha) in the scaled variables: reach_i = (1/root_i)^(1 - 1/alpha).
    reach = tf.where(active, tf.pow(root, 1.0 / alpha - 1.0), tf.ones_like(root))
    # Default start: the best point on the ray t * (1, ..., 1).
    spread = tf.reduce_sum(cosines) + RIDGE * num_terms
    scale = tf.pow(tf.reduce_sum(reach) / spread, alpha / (1.0 + alpha))
    start = tf.fill([num_terms], scale)
    if previous is not None:
        previous = tf.cast(previous, dtype)
        usable = tf.reduce_all(tf.logical_and(tf.math.is_finite(previous), previous > 0.0))
        safe = tf.where(usable, previous, start)
        matrix = cosines + RIDGE * identity

        def objective(point):
            return 0.5 * tf.reduce_sum(tf.linalg.matvec(matrix, point) * point) - _utility(point, reach, alpha)

        better = tf.logical_and(usable, objective(safe) < objective(start))
        start = tf.where(better, safe, start)
    beta, _ = solve_scaled(cosines, reach, alpha, start)
    # Back to w for the normalized Gramian, then for G: w(G) = w(G / unit) * unit^(-alpha / (1 + alpha)).
    weights = beta / root * tf.pow(unit, -alpha / (1.0 + alpha))
    weights = tf.where(tf.logical_and(active, largest > 0.0), weights, tf.zeros_like(weights))
    return weights, beta


__all__ = ["fair_weights", "solve_scaled"]
