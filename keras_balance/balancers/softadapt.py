"""SoftAdapt: weights from a softmax of each term's recent rate of change."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import LossBalancer

SOFTADAPT_VARIANTS = ("original", "normalized", "loss_weighted")


def _finite_logits(logits):
    """Clip softmax logits to a finite range (an overflowed slope cannot give NaN)."""
    info = np.finfo(logits.dtype.as_numpy_dtype)
    return tf.clip_by_value(logits, -0.1 * info.max, 0.1 * info.max)


def normalize_rates(rates, epsilon):
    """`s / (sum_j |s_j| + eps)`, computed without overflow.

    The rates are first divided by their largest magnitude `m` (so the sum of
    magnitudes cannot overflow) and the guard is divided by the same `m`,
    which leaves the quotient unchanged: `(s/m) / (sum_j |s_j|/m + eps/m)`.
    """
    info = np.finfo(rates.dtype.as_numpy_dtype)
    scale = tf.maximum(tf.reduce_max(tf.abs(rates)), info.tiny)
    unit = rates / scale
    return unit / (tf.reduce_sum(tf.abs(unit)) + epsilon / scale)


@keras.saving.register_keras_serializable(package="keras_balance")
class SoftAdapt(LossBalancer):
    """SoftAdapt (Heydari, Thompson & Mehmood, 2019): a softmax of the loss slopes.

    Each term gets a weight that grows with its recent rate of change: a term
    whose loss has stopped decreasing (or increases) gets more weight than one
    that is falling fast. With `s_i` the rate of change of term i at step t:

        original:       alpha_i = exp(beta s_i) / sum_j exp(beta s_j)
        normalized:     s <- s / (sum_j |s_j| + eps), then as original
        loss_weighted:  alpha_i = L_i exp(beta s_i) / sum_j L_j exp(beta s_j)

        lambda_i(t) = K * alpha_i     (sum_to_k=True, the default)
        lambda_i(t) = alpha_i         (sum_to_k=False, the paper's convention)

    Rate of change. With `window=2` (default), `s_i = L_i(t) - L_i(t-1)`. With
    `window=n > 2` it is the finite-difference slope over the last n values,
    `s_i = (L_i(t) - L_i(t-n+1)) / (n - 1)`; while fewer than n values have
    been seen, the slope over the values available,
    `(L_i(t) - L_i(oldest)) / (count - 1)`. The last n losses are kept in the
    variable `loss_history` (rows from oldest to newest).

    Until two values exist (step 0, and every step before the first finite
    one) the weights are 1 for every term, the Sum baseline, whatever
    `sum_to_k`. The paper's weights sum to 1; by default they are multiplied by
    K so the total stays on the scale of Sum (the weights sum to K).

    Numerics: the softmax subtracts its largest logit; logits are clipped to a
    finite range. The loss-weighted variant is computed in log space,
    `softmax_i(beta s_i + log L_i)`, so a term with `L_i = 0` gets weight 0
    (not NaN), and when every loss is 0 it returns the original variant's
    weights (the limit of equal losses shrinking to 0). A weight that would underflow to 0 in the
    original and normalized variants is floored at the smallest normal float.

    Scale: the normalized variant is invariant to multiplying *every* term by
    the same constant (up to `epsilon`). No variant is invariant to rescaling
    a single term: its slope, and so its weight, changes.

    Conventions:

    - Negative losses: the original and normalized variants use only
      differences of the losses, so they accept losses of any sign. The
      loss-weighted variant multiplies by `L_i`, which must be non-negative
      (a negative factor would give a negative weight, or a zero one after
      clipping): there a negative loss is treated like a non-finite one,
      under `nan_policy="skip"` the step leaves the state as it was and
      returns the previous weights, under `"raise"` it fails.

    Reference: A. A. Heydari, C. A. Thompson and A. Mehmood, "SoftAdapt:
    Techniques for Adaptive Loss Weighting of Neural Networks with Multi-Part
    Loss Functions", arXiv:1912.12355, 2019.

    Args:
        beta: finite float, default 0.1. Softmax sharpness on the rates; 0
            gives equal weights, larger values favour the slowest terms more.
            Negative values favour the fastest-falling terms instead.
        variant: `"original"` (default), `"normalized"` or `"loss_weighted"`.
        window: int >= 2, default 2. Number of recent loss values the rate of
            change is taken over (2: the last difference).
        sum_to_k: bool, default True. Multiply the paper's weights (which sum
            to 1) by K.
        epsilon: >= 0, default 1e-12. Guard added to the denominator of the
            normalized variant.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = SoftAdapt(beta=1.0)
    >>> balancer([2.0, 1.0]).numpy().tolist()  # step 0: no rate yet
    [1.0, 1.0]
    >>> weights = balancer([1.0, 1.0])         # term 0 fell by 1, term 1 stayed
    >>> bool(weights[1] > weights[0])
    True
    """

    summary = "Softmax of each term's recent rate of change; original, normalized, loss-weighted (Heydari et al. 2019)."

    def __init__(
        self,
        beta=0.1,
        variant="original",
        window=2,
        sum_to_k=True,
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="softadapt",
        **kwargs,
    ):
        self.beta = check_range("beta", beta, -math.inf, math.inf, low_open=True, high_open=True)
        if variant not in SOFTADAPT_VARIANTS:
            raise ValueError(
                f"Argument `variant` must be one of {SOFTADAPT_VARIANTS}; received variant={variant!r}."
            )
        self.variant = variant
        self.needs_non_negative_losses = variant == "loss_weighted"
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise TypeError(
                f"Argument `window` must be an int >= 2; received window={window!r} "
                f"(of type {type(window).__name__})."
            )
        if window < 2:
            raise ValueError(f"Argument `window` must be an int >= 2; received window={window!r}.")
        self.window = int(window)
        if not isinstance(sum_to_k, (bool, np.bool_)):
            raise TypeError(
                f"Argument `sum_to_k` must be a bool; received sum_to_k={sum_to_k!r} "
                f"(of type {type(sum_to_k).__name__})."
            )
        self.sum_to_k = bool(sum_to_k)
        self.epsilon = check_range("epsilon", epsilon, 0.0, math.inf, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        # The last `window` losses, oldest first; the newest is the last row.
        self.loss_history = self.add_weight(
            shape=(self.window, num_terms), initializer="zeros", trainable=False, name="loss_history"
        )
        # How many rows of `loss_history` hold real values (at most `window`).
        self.history_count = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="history_count"
        )
        self.last_rates = self.add_weight(
            shape=(num_terms,), initializer="zeros", trainable=False, name="last_rates"
        )

    def rates(self, history, count):
        """Slope of each term over the `count` newest rows of `history` (count >= 2)."""
        newest = history[-1]
        oldest = tf.gather(history, self.window - count)
        span = tf.cast(count - 1, history.dtype)
        return (newest - oldest) / span

    def compute_weights(self, losses):
        history = tf.concat([self.loss_history.value[1:], losses[tf.newaxis]], axis=0)
        count = tf.minimum(self.history_count.value + 1, self.window)
        rates = self.rates(history, tf.maximum(count, 2))
        rates = tf.where(count >= 2, rates, tf.zeros_like(rates))
        info = np.finfo(losses.dtype.as_numpy_dtype)

        if self.variant == "normalized":
            logits = self.beta * normalize_rates(rates, self.epsilon)
        else:
            logits = self.beta * rates
        logits = _finite_logits(logits)
        shares = tf.nn.softmax(logits - tf.reduce_max(logits))
        if self.variant == "loss_weighted":
            # softmax_i(beta s_i + log L_i); log 0 = -inf gives a weight of 0.
            log_losses = tf.math.log(tf.maximum(losses, 0.0))
            any_positive = tf.reduce_any(losses > 0.0)
            weighted = tf.where(losses > 0.0, logits + log_losses, -np.inf)
            top = tf.reduce_max(tf.where(losses > 0.0, weighted, -info.max))
            exps = tf.where(losses > 0.0, tf.exp(weighted - top), 0.0)
            weighted_shares = exps / tf.maximum(tf.reduce_sum(exps), info.tiny)
            shares = tf.where(any_positive, weighted_shares, shares)
        else:
            shares = tf.maximum(shares, info.tiny)

        scale = float(self.num_terms) if self.sum_to_k else 1.0
        weights = tf.where(count >= 2, scale * shares, tf.ones_like(losses))

        self.loss_history.assign(history)
        self.history_count.assign(count)
        self.last_rates.assign(rates)
        return weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "variant": self.variant,
                "window": self.window,
                "sum_to_k": self.sum_to_k,
                "epsilon": self.epsilon,
            }
        )
        return config
