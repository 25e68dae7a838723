"""The generalized (power) mean of the loss terms, a differentiable total."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.base import LossBalancer, check_positive, check_range


def _as_loss_vector(losses):
    """A float32 (K,) tensor from a tensor, an array or a list of scalars."""
    if isinstance(losses, (list, tuple)):
        return tf.stack([tf.reshape(tf.cast(v, "float32"), ()) for v in losses])
    return tf.cast(tf.convert_to_tensor(losses), "float32")


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
    gradient) are the partial derivatives `dM/dL_i`, zero outside `mask`.

    - `gamma = 0`: the geometric mean `exp(mean_i log L_i)`, computed as such.
    - `gamma = +inf` / `-inf`: the max / min; the derivative is one-hot at the
      arg-max / arg-min, split evenly among ties.
    - otherwise: each term is first clamped below at `epsilon`, and the mean is
      computed as `r * ((1/n) sum_i (L_i / r)^gamma)^(1/gamma)` with `r` the
      largest term (gamma > 0) or the smallest (gamma < 0). Every ratio then
      lies in (0, 1] after the power, which is the max-shifted log-sum-exp of
      `gamma log L_i` written without logarithms: it cannot overflow, and `r`
      needs no gradient since the mean does not depend on it.

    With `w_i = (1/n) (L_i / M)^(gamma - 1)`, the log of each weight is
    clipped at `log(0.1 * float_max)` so that even `gamma` in (0, 1) with
    terms 50 orders of magnitude apart gives finite weights.
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
        if gamma > 0:
            extreme = tf.reduce_max(tf.where(mask, safe, tf.fill(tf.shape(safe), -info.max)))
        else:
            extreme = tf.reduce_min(tf.where(mask, safe, tf.fill(tf.shape(safe), info.max)))
        # tf.reduce_max/min split their gradient evenly among ties, as the
        # weights below do.
        mean = tf.where(any_term, extreme, tf.zeros_like(extreme))
        hits = tf.cast(tf.logical_and(mask, tf.equal(safe, tf.stop_gradient(extreme))), dtype)
        weights = hits / tf.maximum(tf.reduce_sum(hits), 1.0)
        return mean, tf.stop_gradient(weights)

    clamped = _clamp_below(safe, tf.constant(epsilon, dtype))
    frozen = tf.stop_gradient(clamped)
    if gamma == 0.0:
        log_mean = tf.reduce_sum(present * tf.math.log(clamped)) / count
        mean = tf.where(any_term, tf.exp(log_mean), tf.zeros_like(log_mean))
        # log(L_i / M), from the ratio itself unless it over- or underflows.
        safe_mean = tf.stop_gradient(tf.where(any_term, mean, tf.ones_like(mean)))
        log_ratios = _log_ratio(frozen, safe_mean, tf.math.log(frozen) - tf.stop_gradient(log_mean))
    else:
        if gamma > 0:
            reference = tf.reduce_max(tf.where(mask, clamped, tf.zeros_like(clamped)))
        else:
            reference = tf.reduce_min(tf.where(mask, clamped, tf.fill(tf.shape(clamped), info.max)))
        reference = tf.stop_gradient(tf.where(any_term, reference, tf.ones_like(reference)))
        ratios = tf.where(mask, clamped / reference, tf.ones_like(clamped))
        powers = tf.where(mask, tf.pow(ratios, gamma), tf.zeros_like(ratios))
        total = tf.reduce_sum(powers)  # in [1, n] when a term is present
        total = tf.where(any_term, total, count)
        mean = reference * tf.pow(total / count, 1.0 / gamma)
        mean = tf.where(any_term, mean, tf.zeros_like(mean))
        # log(L_i / M) = log(L_i / r) - log(S / n) / gamma: the first part is
        # exactly 0 for the reference term, which keeps the weights precise
        # for large |gamma|, where (gamma - 1) amplifies any rounding.
        log_shift = tf.stop_gradient(tf.math.log(total / count) / gamma)
        log_ratios = _log_ratio(frozen, reference, tf.math.log(frozen) - tf.math.log(reference)) - log_shift

    # dM/dL_i = (1/n) (L_i / M)^(gamma - 1).
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
    computed with the largest (`gamma > 0`) or smallest (`gamma < 0`) term
    factored out, the max-shifted log-sum-exp of `gamma log L_i`, so terms
    from 0 to 1e30 give a finite total and finite weights.

    NaN policy: when a term is NaN or infinite, `nan_policy="skip"` keeps the
    weights of the previous step in `term_weights` and returns them, and the
    total returned by `combine` is the generalized mean of the finite terms
    only: the bad term gets a zero gradient and the total stays finite (0 if no
    term is finite). `"raise"` fails the step.

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

    def __init__(
        self,
        gamma=0.0,
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="generalized_mean",
        **kwargs,
    ):
        if isinstance(gamma, bool):
            raise TypeError(f"Argument `gamma` must be a number; received gamma={gamma!r}.")
        self.gamma = check_range("gamma", gamma, -math.inf, math.inf)
        self.epsilon = check_positive("epsilon", epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def initial_weights(self, num_terms):
        # The weights at equal terms, for every gamma.
        return [1.0 / num_terms] * num_terms

    def compute_weights(self, losses):
        _, weights = power_mean(losses, self.gamma, self.epsilon)
        return tf.stop_gradient(weights)

    def combine(self, losses):
        """Return `(total, weights)`: the differentiable power mean and `dL/dL_i`.

        The weights follow the NaN policy (previous weights on a non-finite
        step); the total is the power mean of the finite terms.
        """
        losses = _as_loss_vector(losses)
        weights = self(losses)
        total, _ = power_mean(losses, self.gamma, self.epsilon, mask=tf.math.is_finite(losses))
        return total, weights

    def evaluate(self, losses):
        """Return `(total, weights)` for `losses` without touching `term_weights`.

        Computed as `combine` does (the balancer has no other state), so a
        validation total is comparable to the training total.
        """
        losses = _as_loss_vector(losses)
        self._check_num_terms(losses, "losses")
        if not self.built:
            self.build_for(int(losses.shape[0]))
        finite = tf.math.is_finite(losses)
        total, weights = power_mean(losses, self.gamma, self.epsilon, mask=finite)
        weights = tf.where(tf.reduce_all(finite), weights, self.term_weights.value)
        return total, weights

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "epsilon": self.epsilon})
        return config
