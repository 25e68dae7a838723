"""Uncertainty weighting: per-term noise parameters learned with the model."""

import math

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.inputs import as_loss_vector

REGULARIZERS = ("kendall", "log1p")


@keras.saving.register_keras_serializable(package="keras_balance")
class UncertaintyWeighting(LossBalancer):
    """Weights learned as homoscedastic task uncertainties (Kendall, Gal & Cipolla, 2018).

    Each term i has a trainable noise parameter, trained by the same optimizer
    and in the same step as the model, on the total

        regularizer="kendall" (default), s_i = log sigma_i^2, init 0:
            L = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i
        regularizer="log1p", sigma_i, init 1:
            L = sum_i L_i / (2 sigma_i^2) + log(1 + sigma_i^2)

    `combine(losses)` returns this total, differentiable with respect to both
    the terms and the noise parameters. A term with a large loss drives its
    variance up and its weight down: for constant terms the optimum is
    `exp(s_i) = L_i` (weight `1 / (2 L_i)`) with "kendall", and
    `sigma_i^2 = (L_i + sqrt(L_i^2 + 8 L_i)) / 4` with "log1p". The "kendall"
    form is the paper's (written with the log-variance for stability); the
    "log1p" form replaces `log sigma_i` by `log(1 + sigma_i^2)` so that the
    regularizer cannot become negative.

    The weights it reports (returned by `__call__` and `combine`, kept in
    `term_weights`) are the factors of the terms, `0.5 exp(-s_i)` or
    `1 / (2 sigma_i^2)`, without gradient, read before the optimizer updates
    the parameters. They are 0.5 before the first step.

    Training: the parameters are Keras variables created with
    `add_weight(trainable=True)`. In a `keras_balance.BalancedModel` the
    balancer is a sub-layer of the model, so `model.trainable_variables` and
    the model's optimizer include them. A Keras `Loss` given to
    `compile(loss=...)` cannot have its variables trained, so the Keras loss
    route refuses this balancer; in a custom loop, apply the gradients of the
    total to `balancer.trainable_variables` as well.

    Numerics: the precision `1 / sigma_i^2` is capped at `1 / epsilon`
    (`s_i` is floored at `log(epsilon)` and `sigma_i^2` at `epsilon` inside
    the weight), so a term that reaches 0, which drives its variance to 0,
    cannot overflow the weights. With the default epsilon this never changes
    a weight below 5e11.

    NaN policy: when a term is NaN or infinite, `nan_policy="skip"` returns
    the weights of the previous step, and the total of `combine` gives an
    exactly zero gradient to the noise parameters: it is
    `sum_i w_i L_i + R` with the previous weights `w_i`, the non-finite terms
    counted as 0 and the regularizer `R` held constant. The terms are replaced
    before they enter any product, so no `NaN * 0` reaches the gradient.
    `"raise"` fails the step.

    Conventions:

    - The losses must be non-negative: with a negative term the total
      decreases without bound as its noise parameter falls (`exp(s_i) = L_i`
      has no solution), so training would drive the weight of that term to
      its cap. A negative loss is treated like a non-finite one: under "skip"
      the step returns the previous weights and the total is `sum_i w_i L_i
      + R` with those weights (the negative term included) and `R` held
      constant, so the noise parameters get a zero gradient; under "raise"
      the step fails.

    Reference: A. Kendall, Y. Gal and R. Cipolla, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
    The "log1p" regularizer is the positive variant described in B. Xiao,
    "Strategies for balancing multiple loss functions in deep learning", 2024.

    Args:
        regularizer: `"kendall"` (default) or `"log1p"`, see above.
        epsilon: > 0. Floor of the variance `sigma_i^2` inside the weights
            (the weights are at most `1 / (2 epsilon)`). Default 1e-12.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = UncertaintyWeighting()
    >>> balancer([0.5, 2.0]).numpy().tolist()       # 0.5 exp(-0)
    [0.5, 0.5]
    >>> [v.name for v in balancer.trainable_variables]
    ['log_variance']

    In a model: `BalancedModel(inputs, outputs, balancer="uncertainty",
    term_names=(...))`, compiled with any optimizer; the log-variances are
    trained with the model's weights.
    """

    summary = "Learned uncertainties: sum 0.5 exp(-s_i) L_i + 0.5 s_i, trained with the model (Kendall et al. 2018)."
    needs_non_negative_losses = True

    def __init__(
        self,
        regularizer="kendall",
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="uncertainty",
        **kwargs,
    ):
        if not isinstance(regularizer, str) or regularizer not in REGULARIZERS:
            raise ValueError(
                f"Argument `regularizer` must be one of {REGULARIZERS}; "
                f"received regularizer={regularizer!r}."
            )
        self.regularizer = regularizer
        self.epsilon = check_positive("epsilon", epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    # -- state ---------------------------------------------------------------

    def build_state(self, num_terms):
        if self.regularizer == "kendall":
            self.log_variance = self.add_weight(
                shape=(num_terms,), initializer="zeros", trainable=True, name="log_variance"
            )
        else:
            self.sigma = self.add_weight(
                shape=(num_terms,), initializer="ones", trainable=True, name="sigma"
            )

    def initial_weights(self, num_terms):
        # 0.5 exp(-0) and 1 / (2 * 1^2).
        return [0.5] * num_terms

    @property
    def noise_parameters(self):
        """The trainable noise parameters: `log_variance` or `sigma`."""
        return self.log_variance if self.regularizer == "kendall" else self.sigma

    # -- formula -------------------------------------------------------------

    def _weights_and_penalty(self):
        """The factors of the terms and the regularizer, differentiable."""
        if self.regularizer == "kendall":
            s = tf.convert_to_tensor(self.log_variance)
            floor = tf.constant(math.log(self.epsilon), s.dtype)
            weights = 0.5 * tf.exp(-tf.maximum(s, floor))
            penalty = 0.5 * s
        else:
            sigma = tf.convert_to_tensor(self.sigma)
            variance = tf.square(sigma)
            weights = 0.5 / tf.maximum(variance, tf.constant(self.epsilon, variance.dtype))
            penalty = tf.math.log1p(variance)
        return weights, penalty

    def compute_weights(self, losses):
        weights, _ = self._weights_and_penalty()
        return tf.stop_gradient(weights)

    def combine(self, losses):
        """Return `(total, weights)`: the total above and the reported weights.

        The total carries gradient to the terms and to the noise parameters.
        """
        losses = as_loss_vector(losses)
        reported = self(losses)
        finite = tf.math.is_finite(losses)
        usable = tf.reduce_all(tf.logical_and(finite, losses >= 0.0))
        # Replace bad terms first: every product below sees finite numbers.
        safe = tf.where(finite, losses, tf.zeros_like(losses))
        weights, penalty = self._weights_and_penalty()
        total = tf.reduce_sum(weights * safe) + tf.reduce_sum(penalty)
        # Skip step: previous weights, constant regularizer, no gradient to
        # the parameters (the select passes an exact 0 to `total`).
        skipped = tf.reduce_sum(tf.stop_gradient(reported) * safe) + tf.stop_gradient(tf.reduce_sum(penalty))
        return tf.where(usable, total, skipped), reported

    def evaluate(self, losses):
        """Return `(total, weights)` with the current parameters, changing nothing."""
        losses = as_loss_vector(losses)
        self._check_num_terms(losses, "losses")
        if not self.built:
            self.build_for(int(losses.shape[0]))
        weights, penalty = self._weights_and_penalty()
        weights = tf.stop_gradient(weights)
        total = tf.reduce_sum(weights * losses) + tf.stop_gradient(tf.reduce_sum(penalty))
        return total, weights

    def get_config(self):
        config = super().get_config()
        config.update({"regularizer": self.regularizer, "epsilon": self.epsilon})
        return config
