"""Aligned-MTL: align the gradients into orthogonal components of equal size."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_weight_vector
from keras_balance.balancers.base import GradientBalancer

SCALES = ("min", "median", "rmse")
#: The default rank tolerance per term, relative to the largest eigenvalue of
#: the float64 Gramian: a hundred times float64's machine epsilon.
RANK_TOLERANCE = 100 * float(np.finfo(np.float64).eps)


@keras.saving.register_keras_serializable(package="keras_balance")
class AlignedMTL(GradientBalancer):
    """Aligned-MTL: independent component alignment (Senushkin et al., 2023).

    With the eigendecomposition of the Gramian `G = J J^T = V Sigma^2 V^T`
    (rank r, keeping the r non-zero eigenvalues), the balance transformation

        B = sigma_min V Sigma^{-1} V^T

    turns the Jacobian into `B J = sigma_min V W^T` (with `J = V Sigma W^T`),
    whose r non-zero singular values all equal `sigma_min`: its rows are
    orthogonal components of equal magnitude, so no term dominates and none
    conflicts with another. The direction is a preference-weighted
    combination of the aligned rows:

        d = (B J)^T p = J^T (B p),    weights = B p.

    `sigma_min` is the square root of the smallest non-zero eigenvalue; an
    eigenvalue counts as zero below `rtol * lambda_max`, so rank-deficient
    Jacobians work. With a zero Jacobian the weights are `p`.

    Conventions:

    - The preference vector `p` defaults to `1/K` for every term, as in
      TorchJD's `AlignedMTL` (identical rows `g` give `d = g`). The authors'
      code sums the aligned rows, `p = 1`, which gives K times this direction;
      pass `preference=[1.0] * K` for that.
    - Rank tolerance: `rtol=None` (default) is `K * 2.2e-14`, a hundred times
      the machine epsilon of float64, in which the Gramian is formed and
      decomposed. The authors' code uses the same rule in the precision it
      computes in, float32 (`K * 1.19e-7`, the convention of NumPy's
      `matrix_rank`, max eigenvalue * K * eps); in float64 that rule would
      drop real directions: `J = diag(1e4, 1)` has the eigenvalue ratio
      1e-8, and its second term would get weight 0. The factor 100 keeps the
      rounding of the Gramian and of its eigendecomposition (zero
      eigenvalues of an exactly rank-deficient Jacobian come out at up to a
      few times `K * eps * lambda_max`) from counting as directions. Pass
      `rtol=K * 1.19e-7` for the authors' coarser threshold, which ignores a
      term whose gradient, orthogonally to the others, is some 1e3 times
      smaller than the largest.
    - `scale="min"` (default, the paper): `sigma_min` as above.
      `"median"` and `"rmse"` are the two other options of the authors' code:
      the (lower) median, or the root mean square, of the non-zero singular
      values in place of `sigma_min`.

    Reference: D. Senushkin, N. Patakin, A. Kuznetsov and A. Konushin,
    "Independent Component Alignment for Multi-Task Learning", CVPR 2023
    (Algorithm 1).

    Args:
        preference: optional sequence of K non-negative numbers, not all zero
            (None: `1/K` each). When given, it fixes the number of terms.
        scale: `"min"`, `"median"` or `"rmse"`, the common magnitude of the
            aligned components.
        rtol: optional relative tolerance on the eigenvalues of the Gramian,
            in [0, 1): an eigenvalue at or below `rtol` times the largest
            counts as zero (None: `K * 2.2e-14`, see above).
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = AlignedMTL()
    >>> jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 3 and 1
    >>> [round(v, 4) for v in balancer.aggregate(jacobian).numpy().tolist()]
    [0.5, 0.5]
    """

    summary = "Aligns the gradients into orthogonal components of equal size (Senushkin et al. 2023)."
    holds_weights = False
    holds_weights_reason = ("Aligned-MTL aligns the current gradients through the eigenvectors of their Gramian; "
                            "its weights mean nothing for other gradients.")

    def __init__(self, preference=None, scale="min", rtol=None, num_terms=None, nan_policy="skip",
                 name="aligned_mtl", **kwargs):
        if preference is not None:
            preference, num_terms = check_weight_vector("preference", preference, num_terms, allow_all_zero=False)
        self.preference = preference
        if scale not in SCALES:
            raise ValueError(f"Argument `scale` must be one of {SCALES}; received scale={scale!r}.")
        self.scale = scale
        self.rtol = None if rtol is None else check_range("rtol", rtol, 0.0, 1.0, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        dtype = gramian.dtype
        if self.preference is None:
            preference = tf.fill([num_terms], tf.constant(1.0 / num_terms, dtype))
        else:
            preference = tf.constant(self.preference, dtype)
        # B is invariant to the scale of G: normalize for range.
        largest = tf.reduce_max(tf.linalg.diag_part(gramian))
        gramian = gramian / tf.where(largest > 0.0, largest, tf.ones_like(largest))
        gramian = 0.5 * (gramian + tf.transpose(gramian))
        values, vectors = tf.linalg.eigh(gramian)
        rtol = num_terms * RANK_TOLERANCE if self.rtol is None else self.rtol
        top = tf.reduce_max(values)
        keep = tf.logical_and(values > rtol * top, top > 0.0)
        safe = tf.where(keep, values, tf.ones_like(values))
        rank = tf.reduce_sum(tf.cast(keep, tf.int32))
        if self.scale == "min":
            target = tf.reduce_min(tf.where(keep, values, top))
        elif self.scale == "rmse":
            target = tf.reduce_sum(tf.where(keep, values, 0.0)) / tf.cast(tf.maximum(rank, 1), dtype)
        else:
            # Lower median of the kept eigenvalues (eigh sorts them ascending,
            # and the kept ones are the largest r).
            index = num_terms - rank + (rank - 1) // 2
            target = tf.gather(values, tf.clip_by_value(index, 0, num_terms - 1))
        factors = tf.where(keep, tf.sqrt(target / safe), 0.0)
        coordinates = tf.linalg.matvec(vectors, preference, transpose_a=True)
        weights = tf.linalg.matvec(vectors, factors * coordinates)
        return tf.where(rank > 0, weights, preference)

    def get_config(self):
        config = super().get_config()
        config.update({"preference": self.preference, "scale": self.scale, "rtol": self.rtol})
        return config

