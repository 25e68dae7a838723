"""IMTL-G: the update whose projections onto every unit gradient are equal."""

import keras
import tensorflow as tf

from keras_balance.balancers.base import GradientBalancer

# Eigenvalues of the cosine matrix below this fraction of the largest count as zero.
RANK_TOLERANCE = 1e-10
# With norms relative to the largest one, |sum_i beta_i / n_i| below
# SUM_TOLERANCE * max(sum_i |beta_i / n_i|, 1) means that no combination with
# weights summing to one has equal projections: the weights are then zero.
SUM_TOLERANCE = 1e-12


@keras.saving.register_keras_serializable(package="keras_balance")
class IMTLG(GradientBalancer):
    """Impartial multi-task learning, gradient part (IMTL-G; Liu et al., 2021).

    Finds the combination `d = sum_i alpha_i g_i` with `sum_i alpha_i = 1`
    whose projections onto all the unit gradients `u_i = g_i / ||g_i||` are
    equal, `d . u_1 = ... = d . u_K`. The paper's closed form, with
    `D = [g_1 - g_i]` and `U = [u_1 - u_i]` (i = 2..K), is

        alpha_{2:K} = g_1 U^T (D U^T)^{-1},    alpha_1 = 1 - sum_{i>=2} alpha_i.

    Equivalently, with `n_i = ||g_i||` and the cosine matrix
    `C_ij = u_i . u_j` (both from the Gramian `G = J J^T`):

        beta = C^+ 1,    alpha_i = (beta_i / n_i) / sum_j (beta_j / n_j),

    which is what this balancer computes: `G alpha` is then proportional to
    `(n_1, ..., n_K)`, i.e. `d . u_i` is the same for every i. The solution
    depends only on the directions `u_i` and is exactly invariant to
    rescaling any one gradient.

    Conventions (those of TorchJD's `IMTLG` where the paper is silent):

    - The weights sum to 1, without further rescaling: identical rows `g`
      give `d = g`.
    - A zero gradient gets weight 0 and does not constrain the others.
    - Linearly dependent rows: the pseudo-inverse (eigenvalues below 1e-10 of
      the largest dropped) picks the least-squares solution. For independent
      rows this equals TorchJD's `pinv(G) n / sum(pinv(G) n)`; for dependent
      rows the equal-projection conditions leave a choice, and solving in the
      unit directions gives the limit of the independent case (parallel rows
      `g` and `a g` give `d = 2a / (1 + a) g`, the harmonic mean of the two),
      where a pseudo-inverse of `G` itself would not.
    - When no combination with weights summing to one has equal projections
      (two opposite gradients, for example), the weights are all zero and so
      is the direction, as in TorchJD.

    Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao
    and W. Zhang, "Towards Impartial Multi-task Learning", ICLR 2021
    (Section 3.2, IMTL-G). The loss-scale part of the paper (IMTL-L) is
    `keras_balance.balancers.IMTLL`.

    Args:
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = IMTLG()
    >>> jacobian = np.array([[2.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 2 and 1
    >>> [round(v, 4) for v in balancer.aggregate(jacobian).numpy().tolist()]
    [0.6667, 0.6667]
    """

    summary = "Combination with equal projections onto every unit gradient (Liu et al. 2021)."

    def __init__(self, num_terms=None, nan_policy="skip", name="imtl_g", **kwargs):
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        dtype = gramian.dtype
        zero = tf.zeros((), dtype)
        # Norms relative to the largest one (the weights do not depend on it).
        largest = tf.reduce_max(tf.linalg.diag_part(gramian))
        gramian = gramian / tf.where(largest > 0.0, largest, tf.ones_like(largest))
        norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gramian), zero))
        nonzero = norms > 0.0
        safe_norms = tf.where(nonzero, norms, tf.ones_like(norms))

        # The cosine matrix C of the non-zero rows (zero rows and columns elsewhere).
        cosines = gramian / (safe_norms[:, None] * safe_norms[None, :])
        cosines = tf.where(tf.logical_and(nonzero[:, None], nonzero[None, :]), cosines, zero)
        cosines = tf.linalg.set_diag(cosines, tf.cast(nonzero, dtype))
        cosines = 0.5 * (cosines + tf.transpose(cosines))

        # beta = C^+ 1 through the eigendecomposition of C (rank-revealing).
        values, vectors = tf.linalg.eigh(cosines)
        keep = values > RANK_TOLERANCE * tf.reduce_max(values)
        inverse = tf.where(keep, 1.0 / tf.where(keep, values, tf.ones_like(values)), zero)
        coordinates = tf.linalg.matvec(vectors, tf.ones([num_terms], dtype), transpose_a=True)
        beta = tf.linalg.matvec(vectors, inverse * coordinates)
        beta = tf.where(nonzero, beta, zero)

        # alpha_i proportional to beta_i / n_i, summing to one.
        raw = beta / safe_norms
        total = tf.reduce_sum(raw)
        valid = tf.abs(total) > SUM_TOLERANCE * tf.maximum(tf.reduce_sum(tf.abs(raw)), 1.0)
        return tf.where(valid, raw / tf.where(valid, total, tf.ones_like(total)), zero)
