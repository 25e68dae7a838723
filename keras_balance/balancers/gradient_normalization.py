"""Gradient normalization: the sum of the unit gradients of the terms."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer

SCALES = ("none", "mean_norm")


@keras.saving.register_keras_serializable(package="keras_balance")
class GradientNormalization(GradientBalancer):
    """Sums the normalized gradients of the terms, optionally paced by training rates.

    Every term contributes a gradient of the same length, whatever the scale
    of its loss:

        d = sum_i s * r_i^alpha * g_i / (||g_i|| + eps * max_j ||g_j||)

    which is the gradient of `sum_i L_i / ||grad L_i||` with the norms held
    constant. The guard `eps` is relative to the largest gradient norm, so
    the direction does not depend on a common scale of the gradients (an
    absolute guard would: gradients of norm 1e-10 against eps = 1e-12 are off
    by 1%); a zero gradient gets weight 0. The two options:

    - `scale="mean_norm"` sets `s = mean_j ||g_j||`, so the step keeps the
      size of a typical gradient (identical rows `g` give `K g`, as the plain
      sum does). `scale="none"` (default): `s = 1`, the published form;
      identical rows `g` give `K g / ||g||`.
    - `alpha` (default None: off) multiplies each term by `r_i^alpha`, the
      relative inverse training rate of GradNorm:
      `L~_i = L_i / L_i(0)`, `r_i = L~_i / mean_j L~_j`, so a term that has
      decreased less than the others since the first step gets a longer
      gradient. The losses of the first finite step are recorded as `L_i(0)`
      (in the variable `initial_losses`); a term with `L_i(0) = 0` uses
      `L~_i = L_i`, and `r_i` is floored at 0.
    - `momentum` (default 0: off) makes the weights a moving average,
      starting from 1, of the weights `w^_i` above:
      `w_i <- momentum * w_i + (1 - momentum) * w^_i`, updated on the update
      steps only (every `update_every` steps; held in between). The average
      is kept in `term_weights`, restored with the rest of the state.

    jaxpi's `grad_norm` weighting (the code accompanying S. Wang,
    S. Sankaran, H. Wang and P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468, 2023, Algorithm 1)
    is `GradientNormalization(scale="mean_norm", momentum=0.9,
    update_every=1000)`: `w^_i = mean_j ||g_j|| / ||g_i||`, averaged with
    momentum 0.9 from 1, every 1000 steps in its examples. (The guide's
    Algorithm 1 writes the sum of the norms where jaxpi's code takes their
    mean: a common factor K.)

    The weights multiply every gradient of their term
    (`weights_all_parameters = True`), as the loss `sum_i L_i / ||grad L_i||`
    would; the norms are those of the Jacobian the balancer receives (in
    `BalancedModel`, the parameters every term shares).

    References: the sum of normalized gradients is discussed by J. Su,
    "Multi-task learning (1): in the name of the loss" (kexue.fm, 2022), as
    the scale-invariant limit of loss weighting; the training rates `r_i`
    come from Z. Chen, V. Badrinarayanan, C.-Y. Lee and A. Rabinovich,
    "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018.

    Args:
        scale: `"none"` (default) or `"mean_norm"` (keep the step size).
        alpha: None (default) or a number >= 0, the exponent of the training
            rates. When set, `aggregate` and `weigh` need the losses.
        epsilon: >= 0. Guard added to every norm, relative to the largest
            norm: a gradient more than 1/epsilon times smaller than the
            largest one is not blown up to unit length.
        momentum: in [0, 1). Weight of the previous weights in their moving
            average (0, default: the weights of the latest update; jaxpi: 0.9).
        update_every: steps between two updates (default 1); the weights are
            held in between and the model skips the per-term gradients.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = GradientNormalization()
    >>> jacobian = np.array([[3.0, 4.0], [0.0, 0.5]])   # norms 5 and 0.5
    >>> [round(v, 6) for v in balancer.aggregate(jacobian).numpy().tolist()]
    [0.6, 1.8]
    """

    summary = "Sum of unit gradients, optionally times mean norm and r_i^alpha (Su 2022; Chen et al. 2018)."
    weights_all_parameters = True

    def __init__(self, scale="none", alpha=None, epsilon=1e-12, momentum=0.0, num_terms=None, nan_policy="skip",
                 name="gradient_normalization", **kwargs):
        if scale not in SCALES:
            raise ValueError(f"Argument `scale` must be one of {SCALES}; received scale={scale!r}.")
        self.scale = scale
        if alpha is not None:
            alpha = check_range("alpha", alpha, 0.0, float("inf"), high_open=True)
        self.alpha = alpha
        self.epsilon = check_range("epsilon", epsilon, 0.0, float("inf"), high_open=True)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        if self.alpha is not None:
            self.initial_losses = self.add_weight(
                shape=(num_terms,), initializer="ones", trainable=False, name="initial_losses"
            )

    def compute_weights(self, jacobian, losses):
        dtype_max = jacobian.dtype.max  # the weights must stay finite in the Jacobian's dtype
        jacobian = tf.cast(jacobian, tf.float64)
        norms = tf.sqrt(tf.reduce_sum(tf.square(jacobian), axis=1))
        guarded = norms + self.epsilon * tf.reduce_max(norms)
        # A zero row (with epsilon = 0, or all rows zero): nothing to normalize, weight 0.
        weights = tf.where(guarded > 0.0, 1.0 / tf.where(guarded > 0.0, guarded, 1.0), 0.0)
        if self.scale == "mean_norm":
            weights = weights * tf.reduce_mean(norms)
        if self.alpha is not None:
            if losses is None:
                raise ValueError(
                    f"{type(self).__name__} with `alpha` set needs the loss values: "
                    "call `aggregate(jacobian, losses)` or `weigh(jacobian, losses)`."
                )
            losses = tf.cast(losses, tf.float64)
            initial = tf.where(
                tf.equal(self.step.value, 0), losses, tf.cast(self.initial_losses.value, tf.float64)
            )
            self.initial_losses.assign(tf.cast(initial, self.initial_losses.dtype))
            ratios = losses / tf.where(initial > 0.0, initial, 1.0)
            mean_ratio = tf.reduce_mean(ratios)
            rates = tf.maximum(ratios / tf.where(mean_ratio > 0.0, mean_ratio, 1.0), 0.0)
            weights = weights * tf.pow(rates, self.alpha)
        weights = tf.minimum(weights, dtype_max)
        if self.momentum > 0.0:
            # The moving average from 1 (the initial `term_weights`).
            previous = tf.cast(self.term_weights.value, tf.float64)
            weights = self.momentum * previous + (1.0 - self.momentum) * weights
        return weights

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "alpha": self.alpha, "epsilon": self.epsilon, "momentum": self.momentum})
        return config
