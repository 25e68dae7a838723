"""ConFIG: the conflict-free direction with equal cosine to every gradient."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_weight_vector
from keras_balance.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_balance")
class ConFIG(GradientBalancer):
    """Conflict-Free Inverse Gradients (Liu et al., 2025).

    With `u_i = g_i / ||g_i||` the unit gradients (the rows of `U`) and `p`
    a preference vector (default all ones), ConFIG takes the direction `x`
    of least norm with `U x = p`, so that its cosines with the gradients are
    in the ratios of `p` (all equal by default, hence positive: no term
    conflicts with it), normalizes it and gives it the length of the sum of
    the projections of the gradients on it:

        x   = U^+ p,       e = x / ||x||,
        d   = (sum_i g_i . e) e.

    On the Gramian, with `C = D^-1 G D^-1` the cosine matrix
    (`D = diag ||g_i||`), `x = J^T v` with `v = D^-1 C^+ p`, and

        d = J^T w,     w = v (1^T G v) / (v^T G v).

    When the rows are linearly dependent, `U x = p` may have no solution and
    `x` is its least-squares solution; the pseudo-inverse then drops the
    eigenvalues of `C` below `rcond` times the largest. Working from the
    Gramian (float64), eigenvalues of `C` are known to about 1e-16, so
    singular values of `U` below about 1e-8 of the largest are not
    resolved; TorchJD's `ConFIG` takes the pseudo-inverse of `U` itself,
    which resolves them down to about 1e-14. A zero gradient gives a zero row
    of `U` (TorchJD's convention); when `x = 0` (the preferences are
    orthogonal to the span of the unit gradients) the direction is zero.

    Reference: Q. Liu, M. Chu and N. Thuerey, "ConFIG: Towards Conflict-free
    Training of Physics Informed Neural Networks", ICLR 2025 (Eq. 2; the
    length is the sum of the projections, and the preference vector is the
    paper's weighting of the terms). TorchJD's `ConFIG` is the reference
    implementation used for the tests.

    Args:
        preference: optional K non-negative numbers, not all zero, the
            right-hand side `p` (None: all ones).
        rcond: in [0, 1). Relative cut-off of the pseudo-inverse of `C`.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = ConFIG()
    >>> jacobian = [[1.0, 0.0], [0.0, 2.0]]   # e = (1, 1) / sqrt(2), length (1 + 2) / sqrt(2)
    >>> [round(float(v), 6) for v in balancer.aggregate(jacobian)]
    [1.5, 1.5]
    """

    summary = "Direction with equal cosine to every gradient, length the sum of projections (Liu et al. 2025)."
    holds_weights = False
    holds_weights_reason = ("ConFIG's weights give equal cosines with the current gradients only; for other "
                            "gradients they describe no conflict-free direction.")

    def __init__(self, preference=None, rcond=1e-10, num_terms=None, nan_policy="skip", name="config", **kwargs):
        if preference is not None:
            preference, count = check_weight_vector("preference", preference, num_terms, allow_all_zero=False)
            num_terms = count if num_terms is None else num_terms
        self.preference = preference
        self.rcond = check_range("rcond", rcond, 0.0, 1.0, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        dtype = gramian.dtype
        if self.preference is None:
            preference = tf.ones([num_terms], dtype)
        else:
            preference = tf.constant(self.preference, dtype)
        diagonal = tf.linalg.diag_part(gramian)
        active = diagonal > 0.0
        norms = tf.sqrt(tf.where(active, diagonal, tf.ones_like(diagonal)))
        inverse_norms = tf.where(active, 1.0 / norms, tf.zeros_like(norms))
        cosines = gramian * inverse_norms[:, None] * inverse_norms[None, :]
        cosines = 0.5 * (cosines + tf.transpose(cosines))
        values, vectors = tf.linalg.eigh(cosines)
        kept = values > self.rcond * tf.reduce_max(values)
        inverse_values = tf.where(kept, 1.0 / tf.where(kept, values, tf.ones_like(values)), tf.zeros_like(values))
        solution = tf.linalg.matvec(vectors, inverse_values * tf.linalg.matvec(vectors, preference, transpose_a=True))
        solution = tf.where(active, solution, tf.zeros_like(solution))
        # x = J^T v with v = D^-1 y; ||x||^2 = y^T C y and sum_i g_i . x = sum_i ||g_i|| (C y)_i.
        spread = tf.linalg.matvec(cosines, solution)
        squared_norm = tf.reduce_sum(solution * spread)
        length = tf.reduce_sum(tf.where(active, norms, tf.zeros_like(norms)) * spread)
        # x = 0 up to rounding: the preferences have no (resolved) component in the span of the units.
        moves = squared_norm > 1e-16 * tf.reduce_sum(preference * preference) / tf.reduce_max(values)
        factor = tf.where(moves, length / tf.where(moves, squared_norm, tf.ones_like(squared_norm)), 0.0)
        return factor * solution * inverse_norms

    def get_config(self):
        config = super().get_config()
        config.update({"preference": self.preference, "rcond": self.rcond})
        return config
