"""CAGrad: the best worst-case improvement near the mean gradient."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer

RESCALES = (0, 1, 2)

# Interior-point schedule of the inner problem: the barrier weight falls from
# 1 to 1e-12 (in units where the largest squared gradient norm is 1) over
# NEWTON_STEPS damped Newton steps; each step tries LINE_SEARCH step lengths.
NEWTON_STEPS = 80
BARRIER_DECADES = 12.0
LINE_SEARCH = 30
# g_w counts as zero (and the mean gradient is returned) when its norm is below
# ZERO_NORM times the largest gradient norm, or below CANCELLATION times
# sum_i w_i ||g_i|| (the rows cancel to within the precision of the Gramian).
ZERO_NORM = 1e-10
CANCELLATION = 1e-6


def cagrad_inner_weights(gramian, c):
    """Solve `min_{w in simplex} w^T G b + c sqrt(b^T G b) sqrt(w^T G w)` with `b = 1/K`.

    `gramian` is a float64 (K, K) Gramian normalized to a largest diagonal of 1
    (or all zero) and `c` a float64 scalar. Returns `(w, sqrt_phi, norm_gw)`,
    with `norm_gw` set to 0 when `g_w` is zero to within the precision of the
    Gramian.

    A primal log-barrier method: damped Newton steps on
    `F(w) - mu sum_i log w_i` under `sum_i w_i = 1`, in the scaled variables
    `dw_i = w_i dz_i` (so the barrier's Hessian is `mu I`) and in the
    subspace of the constraint, with `mu` decreasing geometrically. Each step
    keeps the best of a fixed set of step lengths that keep `w > 0`. The
    number of steps is fixed, so it runs under `jit_compile=True`.
    """
    num_terms = gramian.shape[0]
    dtype = gramian.dtype
    one = tf.constant(1.0, dtype)
    zero = tf.constant(0.0, dtype)
    uniform = tf.fill([num_terms], tf.constant(1.0 / num_terms, dtype))
    linear = tf.linalg.matvec(gramian, uniform)  # J g0 in the Gramian's units
    sqrt_phi = c * tf.sqrt(tf.maximum(tf.reduce_sum(linear * uniform), zero))
    lengths = tf.concat([0.5 ** tf.range(LINE_SEARCH, dtype=dtype), tf.zeros([1], dtype)], 0)
    tiny = tf.constant(1e-300, dtype)
    if num_terms == 1:
        norm = tf.sqrt(tf.maximum(gramian[0, 0], zero))
        return uniform, sqrt_phi, norm

    def barrier_objective(candidates, mu):
        # The norm is smoothed at g_w = 0 on the scale of mu, a homotopy that
        # vanishes with the barrier.
        quadratic = tf.reduce_sum(tf.matmul(candidates, gramian) * candidates, axis=1)
        return (
            tf.linalg.matvec(candidates, linear)
            + sqrt_phi * tf.sqrt(tf.maximum(quadratic, zero) + mu * mu)
            - mu * tf.reduce_sum(tf.math.log(candidates), axis=1)
        )

    def newton_step(step, w):
        mu = tf.pow(tf.constant(10.0, dtype), -BARRIER_DECADES * tf.cast(step, dtype) / NEWTON_STEPS)
        gw = tf.linalg.matvec(gramian, w)
        norm = tf.sqrt(tf.maximum(tf.reduce_sum(gw * w), zero) + mu * mu)
        gradient = linear + sqrt_phi * gw / norm - mu / w
        hessian = sqrt_phi * (gramian / norm - gw[:, None] * gw[None, :] / norm**3)
        # Newton step in the scaled variables dw = w * dz, restricted to the
        # constraint w . dz = 0 through an orthonormal basis Q of w's complement
        # (the last K - 1 columns of a Householder reflection that maps w to an
        # axis), so the near-null direction of the barrier never enters a solve.
        unit = w / tf.norm(w)
        reflector = unit + tf.one_hot(0, num_terms, dtype=dtype)
        householder = tf.eye(num_terms, dtype=dtype) - 2.0 * (
            reflector[:, None] * reflector[None, :] / tf.reduce_sum(reflector * reflector)
        )
        basis = householder[:, 1:]
        scaled = w[:, None] * hessian * w[None, :]
        reduced = tf.matmul(basis, tf.matmul(scaled, basis), transpose_a=True)
        reduced = 0.5 * (reduced + tf.transpose(reduced)) + mu * tf.eye(num_terms - 1, dtype=dtype)
        values, vectors = tf.linalg.eigh(reduced)
        values = tf.maximum(values, mu)
        rhs = tf.linalg.matvec(basis, w * gradient, transpose_a=True)
        solved = tf.linalg.matvec(vectors, tf.linalg.matvec(vectors, rhs, transpose_a=True) / values)
        dz = -tf.linalg.matvec(basis, solved)
        # Longest step that keeps w > 0 (fraction to the boundary 0.99), at most 1.
        limits = tf.where(dz < 0.0, -1.0 / tf.minimum(dz, -tiny), tf.fill([num_terms], one / tiny))
        longest = tf.minimum(one, 0.99 * tf.reduce_min(limits))
        candidates = w[None, :] * (1.0 + (longest * lengths)[:, None] * dz[None, :])
        candidates = tf.maximum(candidates, tiny)
        values = barrier_objective(candidates, mu)
        values = tf.where(tf.math.is_finite(values), values, tf.fill(tf.shape(values), one / tiny))
        best = tf.gather(candidates, tf.argmin(values))
        return step + 1, best / tf.reduce_sum(best)

    _, w = tf.while_loop(
        lambda step, w: step < NEWTON_STEPS,
        newton_step,
        (tf.constant(0), uniform),
        maximum_iterations=NEWTON_STEPS,
    )
    norm_gw = tf.sqrt(tf.maximum(tf.reduce_sum(tf.linalg.matvec(gramian, w) * w), zero))
    spread = tf.reduce_sum(w * tf.sqrt(tf.maximum(tf.linalg.diag_part(gramian), zero)))
    is_zero = tf.logical_or(norm_gw <= ZERO_NORM, norm_gw <= CANCELLATION * spread)
    return w, sqrt_phi, tf.where(is_zero, zero, norm_gw)


_compiled_inner_weights = tf.function(cagrad_inner_weights, autograph=False)


@keras.saving.register_keras_serializable(package="keras_balance")
class CAGrad(GradientBalancer):
    """Conflict-Averse Gradient descent (Liu et al., 2021).

    Looks, within a ball around the mean gradient `g0`, for the update that
    most improves the worst term. With `g_w = sum_i w_i g_i`:

        phi = c^2 ||g0||^2
        w*  = argmin_{w in simplex}  g_w^T g0 + sqrt(phi) ||g_w||
        d   = (g0 + sqrt(phi) / ||g_w*|| g_w*) / s

    so the weights are `(1/K + sqrt(phi) / ||g_w*|| w*_i) / s`, with `s` the
    rescaling below. `c = 0` gives the mean gradient exactly; a larger `c`
    moves further from it, towards the update that maximizes
    `min_i g_i . d`.

    The inner problem is K-dimensional and convex; it is solved in float64 on
    the Gramian `G = J J^T` (normalized to a largest diagonal of 1) by a
    primal interior-point method with a fixed number (80) of damped Newton
    steps, which runs under `tf.function` and `jit_compile=True` and is
    accurate to about 1e-8 relative on the direction.

    Conventions:

    - `rescale=0` (default): no rescaling, `s = 1`. This is Algorithm 1 of
      the paper and TorchJD's `CAGrad`.
    - `rescale=1`: `s = 1 + c^2`, and `rescale=2`: `s = 1 + c`; the two
      options of the authors' code (their NYUv2 and Cityscapes runs use 1, as
      does LibMTL by default). With `rescale=2` identical rows `g` give
      exactly `d = g`; with `rescale=0` they give `(1 + c) g`.
    - When `g_w* = 0` (possible only when zero is in the convex hull of the
      gradients: a Pareto-stationary point, or a zero gradient), the
      correction is undefined and the direction is the mean gradient
      `g0 / s`, the limit of the authors' code. TorchJD returns zero there,
      which would stop every term as soon as one gradient vanishes. `g_w`
      counts as zero below 1e-10 of the largest gradient norm, or when the
      rows cancel to within the precision of the Gramian.

    Reference: B. Liu, X. Liu, X. Jin, P. Stone and Q. Liu, "Conflict-Averse
    Gradient Descent for Multi-task Learning", NeurIPS 2021 (Algorithm 1).
    The paper's default is c = 0.5 (0.4 on some benchmarks).

    Args:
        c: >= 0. Radius of the ball around `g0`, relative to `||g0||`.
        rescale: 0, 1 or 2, the output scaling (see above).
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = CAGrad(c=0.5)
    >>> jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> [round(v, 4) for v in balancer.aggregate(jacobian).numpy().tolist()]
    [0.1835, 1.2041, 1.2041]
    """

    summary = "Best worst-case improvement within a ball around the mean gradient (Liu et al. 2021)."

    def __init__(self, c=0.5, rescale=0, num_terms=None, nan_policy="skip", name="cagrad", **kwargs):
        self.c = check_range("c", c, 0.0, float("inf"), high_open=True)
        if isinstance(rescale, bool) or rescale not in RESCALES:
            raise ValueError(f"Argument `rescale` must be one of {RESCALES}; received rescale={rescale!r}.")
        self.rescale = int(rescale)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    @property
    def rescale_factor(self):
        """The factor `1 / s` applied to the direction."""
        return {0: 1.0, 1: 1.0 / (1.0 + self.c**2), 2: 1.0 / (1.0 + self.c)}[self.rescale]

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        uniform = tf.fill([num_terms], tf.constant(1.0 / num_terms, gramian.dtype))
        if self.c == 0.0:
            return uniform
        largest = tf.reduce_max(tf.linalg.diag_part(gramian))
        normalized = gramian / tf.where(largest > 0.0, largest, tf.ones_like(largest))
        w, sqrt_phi, norm_gw = _compiled_inner_weights(
            normalized, tf.constant(self.c, gramian.dtype)
        )
        moves = tf.logical_and(sqrt_phi > 0.0, norm_gw > 0.0)
        step = tf.where(moves, sqrt_phi / tf.where(moves, norm_gw, tf.ones_like(norm_gw)), 0.0)
        return (uniform + step * w) * self.rescale_factor

    def get_config(self):
        config = super().get_config()
        config.update({"c": self.c, "rescale": self.rescale})
        return config
