"""IMTL-L: learned loss scales, the loss half of impartial multi-task learning."""

import math

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.inputs import as_loss_vector


@keras.saving.register_keras_serializable(package="keras_balance")
class IMTLL(LossBalancer):
    """IMTL-L: learned loss scales (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021).

    Each term i has a trainable log-scale `s_i` (init 0), trained by the same
    optimizer and in the same step as the model, on the total (the paper's
    "loss balance", IMTL-L, Section 3)

        L = sum_i ( exp(s_i) L_i - s_i )

    `combine(losses)` returns this total, differentiable with respect to both
    the terms and the scales. Its derivative in `s_i`,
    `exp(s_i) L_i - 1`, vanishes when `exp(s_i) L_i = 1`: at the optimum every
    scaled term equals 1, whatever its units (the paper's "impartial" loss
    scales). The model's gradient is `sum_i exp(s_i) grad L_i`.

    IMTL-L is Kendall et al.'s uncertainty weighting with `s_i = -log
    sigma_i^2`, times 2 (`keras_balance.balancers.UncertaintyWeighting`, whose
    weights are `0.5 exp(-s_i)`): the same optima, twice the weights.

    The weights it reports (returned by `__call__` and `combine`, kept in
    `term_weights`) are the scales `exp(s_i)`, without gradient, read before
    the optimizer updates them. They are 1 before the first step.

    Training: the log-scales are Keras variables created with
    `add_weight(trainable=True)`. In a `keras_balance.BalancedModel` the
    balancer is a sub-layer of the model, so `model.trainable_variables` and
    the model's optimizer include them. A Keras `Loss` given to
    `compile(loss=...)` cannot have its variables trained, so the Keras loss
    route refuses this balancer; in a custom loop, apply the gradients of the
    total to `balancer.trainable_variables` as well.

    Numerics: the scale `exp(s_i)` is capped at `1 / epsilon` inside the
    weight (`s_i` is capped at `-log(epsilon)`), so a term that reaches 0,
    which drives its scale up without bound, cannot overflow the weights.

    NaN policy: when a term is NaN or infinite, `nan_policy="skip"` returns
    the weights of the previous step, and the total of `combine` gives an
    exactly zero gradient to the scales: it is `sum_i w_i L_i + R` with the
    previous weights `w_i`, the non-finite terms counted as 0 and the
    regularizer `R = -sum_i s_i` held constant. `"raise"` fails the step.

    Conventions:

    - The losses must be non-negative (the paper's assumption): with a
      negative term the total decreases without bound as its scale grows.
      A negative loss is treated like a non-finite one: under "skip" the step
      returns the previous weights and the total is `sum_i w_i L_i + R` with
      those weights and `R` held constant; under "raise" the step fails.

    Reference: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao
    and W. Zhang, "Towards Impartial Multi-task Learning", ICLR 2021
    (Section 3, loss balance; IMTL-G, the gradient half, is
    `keras_balance.balancers.IMTLG`).

    Args:
        epsilon: > 0. Inverse cap of the scales inside the weights (the weights
            are at most `1 / epsilon`). Default 1e-12.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = IMTLL()
    >>> balancer([0.5, 2.0]).numpy().tolist()       # exp(0)
    [1.0, 1.0]
    >>> [v.name for v in balancer.trainable_variables]
    ['log_scale']
    >>> total, _ = balancer.combine([0.5, 2.0])      # sum_i exp(0) L_i - 0
    >>> float(total)
    2.5
    """

    summary = "Learned loss scales: sum exp(s_i) L_i - s_i, trained with the model (IMTL-L, Liu et al. 2021)."
    needs_non_negative_losses = True

    def __init__(self, epsilon=1e-12, num_terms=None, nan_policy="skip", name="imtl_l", **kwargs):
        self.epsilon = check_positive("epsilon", epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    # -- state ---------------------------------------------------------------

    def build_state(self, num_terms):
        self.log_scale = self.add_weight(shape=(num_terms,), initializer="zeros", trainable=True, name="log_scale")

    # -- formula -------------------------------------------------------------

    def _scales_and_penalty(self):
        """The factors `exp(s_i)` (capped) and the regularizer `-s_i`, differentiable."""
        s = tf.convert_to_tensor(self.log_scale)
        cap = tf.constant(-math.log(self.epsilon), s.dtype)
        return tf.exp(tf.minimum(s, cap)), -s

    def compute_weights(self, losses):
        scales, _ = self._scales_and_penalty()
        return tf.stop_gradient(scales)

    def combine(self, losses):
        """Return `(total, weights)`: the total above and the reported weights.

        The total carries gradient to the terms and to the log-scales.
        """
        losses = as_loss_vector(losses)
        reported = self(losses)
        finite = tf.math.is_finite(losses)
        usable = tf.reduce_all(tf.logical_and(finite, losses >= 0.0))
        # Replace bad terms first: every product below sees finite numbers.
        safe = tf.where(finite, losses, tf.zeros_like(losses))
        scales, penalty = self._scales_and_penalty()
        total = tf.reduce_sum(scales * safe) + tf.reduce_sum(penalty)
        # Skip step: previous weights, constant regularizer, no gradient to the scales.
        skipped = tf.reduce_sum(tf.stop_gradient(reported) * safe) + tf.stop_gradient(tf.reduce_sum(penalty))
        return tf.where(usable, total, skipped), reported

    def evaluate(self, losses):
        """Return `(total, weights)` with the current scales, changing nothing."""
        losses = as_loss_vector(losses)
        self._check_num_terms(losses, "losses")
        if not self.built:
            self.build_for(int(losses.shape[0]))
        scales, penalty = self._scales_and_penalty()
        scales = tf.stop_gradient(scales)
        return tf.reduce_sum(scales * losses) + tf.stop_gradient(tf.reduce_sum(penalty)), scales

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config
