"""The generalized (power) mean of the loss terms, a differentiable total."""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.inputs import as_loss_vector


def _clamp_below(values, floor):
    """`max(values, floor)` in value, with the gradient of the identity.

    A term below `floor` (e.g. exactly 0) is treated as `floor`, and its
    derivative is the derivative of the mean at `floor`, which is what the
    reported weights say. `tf.maximum` alone would cut the gradient of such a
    term to zero.
    """
    return tf.stop_gradient(tf.maximum(values, floor)) + (values - tf.stop_gradient(values))


def _log_ratio(numerator, denominator, fallback):
    """`log(numerator / denominator)`, or `fallback` where the ratio over- or underflows."""
    info = np.finfo(numerator.dtype.as_numpy_dtype)
    ratios = numerator / denominator
    direct = tf.logical_and(tf.math.is_finite(ratios), ratios >= info.tiny)
    return tf.where(direct, tf.math.log(tf.where(direct, ratios, tf.ones_like(ratios))), fallback)


def power_mean(losses, gamma, epsilon, mask=None):
    """The power mean `M = ((1/n) sum_i L_i^gamma)^(1/gamma)` and `dM/dL_i`.

    Only the terms where `mask` is True take part (all of them by default);
    `n` is their number. Returns `(mean, weights)`: `mean` is a scalar,
    differentiable with respect to `losses`; `weights` (shape (K,), no
    gradient) are the partial derivatives `w_i = dM/dL_i =
    (1/n) (L_i / M)^(gamma - 1)`, zero outside `mask`.

    - `gamma = +inf` / `-inf`: the max / min; the derivative is one-hot at the
      arg-max / arg-min, split evenly among ties.
    - finite `gamma`: each term is first clamped below at `epsilon`, and the
      mean is computed in log space around a reference term `r` (the largest
      term for gamma >= 0, the smallest for gamma < 0), from
      `d_i = log(L_i / r)`:

          gamma = 0:   log(M / r) = (1/n) sum_i d_i
          otherwise:   log(M / r) = (log sum_i exp(gamma d_i) - log n) / gamma

      which is the max-shifted log-sum-exp of `gamma log L_i`: every
      exponential lies in (0, 1], so nothing overflows, and the geometric mean
      is computed exactly as such. `r` carries no gradient (M does not depend
      on it), and `log(M / r)` gives `log(L_i / M) = d_i - log(M / r)`, from
      which the weights follow; their logarithm is clipped at
      `log(0.1 * float_max)`, so they stay finite even for `gamma` in (0, 1)
      with terms 50 orders of magnitude apart.
    """
    dtype = losses.dtype
    info = np.finfo(dtype.as_numpy_dtype)
    if mask is None:
        mask = tf.ones_like(losses, dtype=tf.bool)
    present = tf.cast(mask, dtype)
    count = tf.reduce_sum(present)
    any_term = count > 0
    count = tf.maximum(count, 1.0)
    # Masked-out entries (non-finite values) never reach an arithmetic op:
    # select before computing, so neither the value nor the gradient sees them.
    safe = tf.where(mask, losses, tf.ones_like(losses))

    if math.isinf(gamma):
        fill = -info.max if gamma > 0 else info.max
        candidates = tf.where(mask, safe, tf.fill(tf.shape(safe), fill))
        # tf.reduce_max/min split their gradient evenly among ties, as the
        # weights below do.
        extreme = tf.reduce_max(candidates) if gamma > 0 else tf.reduce_min(candidates)
        mean = tf.where(any_term, extreme, tf.zeros_like(extreme))
        hits = tf.cast(tf.logical_and(mask, tf.equal(safe, tf.stop_gradient(extreme))), dtype)
        weights = hits / tf.maximum(tf.reduce_sum(hits), 1.0)
        return mean, tf.stop_gradient(weights)

    clamped = _clamp_below(safe, tf.constant(epsilon, dtype))
    if gamma >= 0:
        reference = tf.reduce_max(tf.where(mask, clamped, tf.zeros_like(clamped)))
    else:
        reference = tf.reduce_min(tf.where(mask, clamped, tf.fill(tf.shape(clamped), info.max)))
    reference = tf.stop_gradient(tf.where(any_term, reference, tf.ones_like(reference)))
    log_reference = tf.math.log(reference)
    # d_i = log(L_i / r): from the ratio itself (exact for the reference term,
    # precise for close terms), or from the difference of logs where the
    # ratio over- or underflows.
    logs = _log_ratio(clamped, reference, tf.math.log(clamped) - log_reference)
    logs = tf.where(mask, logs, tf.zeros_like(logs))
    if gamma == 0.0:
        log_scale = tf.reduce_sum(present * logs) / count
    else:
        total = tf.reduce_sum(present * tf.exp(gamma * logs))  # in [1, n] when a term is present
        total = tf.where(any_term, total, count)
        log_scale = (tf.math.log(total) - tf.math.log(count)) / gamma
    # M = r * (M / r); where M / r would underflow, exp(log r + log(M / r)).
    scale = tf.exp(log_scale)
    mean = tf.where(scale >= info.tiny, reference * scale, tf.exp(log_reference + log_scale))
    mean = tf.where(any_term, mean, tf.zeros_like(mean))

    # dM/dL_i = (1/n) (L_i / M)^(gamma - 1), with log(L_i / M) = d_i - log(M / r).
    log_ratios = tf.stop_gradient(logs - log_scale)
    log_weights = tf.minimum((gamma - 1.0) * log_ratios, math.log(0.1 * float(info.max)))
    weights = tf.where(mask, tf.exp(log_weights) / count, tf.zeros_like(log_weights))
    return mean, weights


@keras.saving.register_keras_serializable(package="keras_balance")
class GeneralizedMean(LossBalancer):
    """The generalized (power) mean of the loss terms (Su, 2022).

    The model is trained on the power mean of the K terms,

        L = ((1/K) sum_i L_i^gamma)^(1/gamma),

    which is differentiable: there is no stop-gradient, and `combine(losses)`
    returns this total. One hyper-parameter replaces K weights: `gamma = 1` is
    the arithmetic mean (Sum divided by K), `gamma = 0` the geometric mean
    `exp((1/K) sum_i log L_i)` (computed exactly, not as a limit), and the mean
    moves monotonically from the smallest term (`gamma = -inf`) to the largest
    (`gamma = +inf`): a larger `gamma` makes training care more about the
    worst term.

    The weights it reports (returned by `__call__` and `combine`, kept in
    `term_weights`) are the effective weights of the total, its partial
    derivatives

        w_i = dL/dL_i = (1/K) (L_i / L)^(gamma - 1),

    so that `grad L = sum_i w_i grad L_i`. For `gamma = 0` this is
    `L / (K L_i)`; for `gamma = +inf` (`-inf`) it is 1 on the largest
    (smallest) term, split evenly among ties. Since the mean is homogeneous of
    degree 1, `sum_i w_i L_i = L`.

    Scale: multiplying every term by `c` multiplies the total by `c` and leaves
    the weights unchanged. Multiplying one term by `c` is not neutral in
    general; for the geometric mean it multiplies the total by `c^(1/K)` and
    leaves the direction of its gradient unchanged, because
    `d log L / d log L_i = 1/K` for every term (the gradient of the geometric
    mean points where that of `sum_i log L_i` does).

    Numerics: for finite `gamma` every term is clamped below at `epsilon`
    (in value; its gradient is the derivative at `epsilon`), and the mean is
    computed in log space around the largest (`gamma >= 0`) or smallest
    (`gamma < 0`) term, the max-shifted log-sum-exp of `gamma log L_i`, so
    terms anywhere from 0 to the largest float give a finite total and finite
    weights (the log of a weight is capped at `log(0.1 * float_max)`). The
    gradient of the total is that of automatic differentiation; it equals the
    weights, and overflows only where the exact derivative exceeds the float32
    range (0 < gamma < 1 with terms some 50 orders of magnitude apart).

    NaN policy: when a term is NaN or infinite, `nan_policy="skip"` keeps the
    weights of the previous step in `term_weights` and returns them, and the
    total returned by `combine` is the generalized mean of the finite terms
    only: the bad term gets a zero gradient and the total stays finite (0 if no
    term is finite). `"raise"` fails the step.

    Conventions:

    - Negative losses: for finite `gamma` the power mean is defined for
      non-negative terms only (a negative term to a fractional power, or its
      logarithm, has no real value), so a negative term is treated like a
      non-finite one: under "skip" the previous weights, and a total that is
      the mean of the other terms (the negative term gets a zero gradient);
      under "raise" the step fails. For `gamma = +inf` / `-inf` (the max / the
      min) any finite term is accepted, negative or not.

    Reference: J. Su, "Multi-task learning musings (1): in the name of the
    loss" (多任务学习漫谈（一）：以损失之名), Scientific Spaces, 2022,
    section "generalized mean".

    Args:
        gamma: the exponent, any real number or `float("inf")` /
            `float("-inf")`. Default 0 (the geometric mean).
        epsilon: > 0. Floor of every term for finite `gamma`, which guards the
            logarithm, the negative powers and the divisions. Default 1e-12.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = GeneralizedMean(gamma=0.0)
    >>> total, weights = balancer.combine([1.0, 4.0])
    >>> float(total)                    # sqrt(1 * 4)
    2.0
    >>> weights.numpy().tolist()        # L / (K L_i) = [2 / 2, 2 / 8]
    [1.0, 0.25]
    """

    summary = "Differentiable power mean ((1/K) sum L_i^gamma)^(1/gamma): 1 mean, 0 geometric, inf max (Su 2022)."

    def __init__(self, gamma=0.0, epsilon=1e-12, num_terms=None, nan_policy="skip", name="generalized_mean", **kwargs):
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise TypeError(
                f"Argument `gamma` must be a real number or +/-inf; received gamma={gamma!r} "
                f"(of type {type(gamma).__name__})."
            )
        self.gamma = check_range("gamma", gamma, -math.inf, math.inf)
        self.epsilon = check_positive("epsilon", epsilon)
        # The max and the min are defined for any real terms; the power means are not.
        self.needs_non_negative_losses = not math.isinf(self.gamma)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def _usable(self, losses):
        """Elementwise: the terms the mean takes (finite, and >= 0 for finite gamma)."""
        usable = tf.math.is_finite(losses)
        return tf.logical_and(usable, losses >= 0.0) if self.needs_non_negative_losses else usable

    def initial_weights(self, num_terms):
        # The weights at equal terms, for every gamma.
        return [1.0 / num_terms] * num_terms

    def compute_weights(self, losses):
        _, weights = power_mean(losses, self.gamma, self.epsilon)
        return tf.stop_gradient(weights)

    def combine(self, losses):
        """Return `(total, weights)`: the differentiable power mean and `dL/dL_i`.

        The weights follow the NaN policy (previous weights on a non-finite
        step); the total is the power mean of the terms it can take (finite,
        and non-negative for finite gamma).
        """
        losses = as_loss_vector(losses)
        weights = self(losses)
        total, _ = power_mean(losses, self.gamma, self.epsilon, mask=self._usable(losses))
        return total, weights

    def evaluate(self, losses):
        """Return `(total, weights)` for `losses` without touching `term_weights`.

        Computed as `combine` does (the balancer has no other state), so a
        validation total is comparable to the training total.
        """
        losses = as_loss_vector(losses)
        self._check_num_terms(losses, "losses")
        if not self.built:
            self.build_for(int(losses.shape[0]))
        usable = self._usable(losses)
        total, weights = power_mean(losses, self.gamma, self.epsilon, mask=usable)
        weights = tf.where(tf.reduce_all(usable), weights, self.term_weights.value)
        return total, weights

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "epsilon": self.epsilon})
        return config
