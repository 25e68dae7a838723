"""GradNorm: trainable loss weights that equalize the terms' gradient norms."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range
from keras_balance.balancers.base import GradientBalancer

OPTIMIZERS = ("adam", "sgd")
#: Largest magnitude of the gradient of the weights, `sqrt(float32 max) / 10`.
GRADIENT_CAP = float(np.sqrt(np.finfo(np.float32).max)) / 10.0
_FLOAT64_MAX = float(np.finfo(np.float64).max)


@keras.saving.register_keras_serializable(package="keras_balance")
class GradNorm(GradientBalancer):
    """Learns loss weights whose gradient norms follow the terms' training rates.

    With the task weights `w_i` (initially 1) and `g_i` the gradient of term i
    with respect to the chosen shared weights W:

        G_i = ||grad_W (w_i L_i)|| = w_i ||g_i||,     G_bar = mean_i G_i,
        L~_i = L_i / L_i(0),     r_i = L~_i / mean_j L~_j,
        L_grad = sum_i | G_i - stopgrad(G_bar r_i^alpha) |.

    Each step trains the model on `sum_i w_i L_i` (the direction is `J^T w`,
    and the weights multiply every gradient of their term), then takes one
    optimizer step on `w` along `dL_grad/dw_i = sign(G_i - G_bar r_i^alpha) ||g_i||`,
    floors the weights at `min_weight`, and renormalizes them to `sum_i w_i = K`.

    Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee and A. Rabinovich,
    "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018 (Algorithm 1). The paper uses alpha = 1.5
    on NYUv2 and 0.12 on its toy regression problem.

    Conventions:

    - The target `G_bar r_i^alpha` is a constant for the update of w, as in the
      paper; the derivative above is exact for `w_i >= 0`.
    - The weights have their own optimizer, whose state (Adam moments) is
      kept in the balancer's variables, so `model.save` and checkpoints carry
      it with the weights and the initial losses.
    - `BalancedModel` computes the per-term gradients with respect to W only
      (`layer`, default: the kernel of the last layer that every term
      touches). Called on a plain K x P Jacobian, `aggregate` uses all of it.
    - The weights and L_i(0) are recorded on the first finite step.
    - Numerics: the training rates are computed in float64 (a loss over a
      tiny L_i(0) overflows float32), and the gradient of the weights is
      capped at `sqrt(float32 max) / 10`, about 1.8e18, in magnitude, so
      Adam's second moment stays finite; below the cap the update is exact.
    - The losses must be non-negative: the training rates `r_i^alpha` are
      powers of loss ratios, which have no real value for a negative ratio.
      A negative loss is treated like a non-finite one: under
      `nan_policy="skip"` the step leaves the weights, L(0) and the optimizer
      state as they were, `weigh` returns the previous weights and
      `aggregate` a zero direction; under `"raise"` it fails.

    Args:
        alpha: >= 0. Strength of the restoring force towards equal training rates.
        learning_rate: > 0. Step size of the weights' optimizer.
        layer: name of the layer whose kernel is W (None: the last layer that
            every term touches). Used by `BalancedModel`.
        optimizer: `"adam"` (default, beta1 0.9, beta2 0.999, epsilon 1e-7) or
            `"sgd"`, the update rule of the weights.
        min_weight: > 0. Floor applied before renormalization, so no weight
            becomes zero or negative.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = GradNorm(alpha=1.5, learning_rate=0.1, optimizer="sgd")
    >>> jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])
    >>> balancer.weigh(jacobian, losses=[1.0, 1.0]).numpy().tolist()   # step 0 uses w = 1
    [1.0, 1.0]
    >>> [round(v, 3) for v in balancer.task_weights.numpy().tolist()]  # term 0's norm was too large
    [0.778, 1.222]
    """

    summary = "Trainable weights that equalize gradient norms at rates r_i^alpha (Chen et al. 2018)."
    weights_all_parameters = True
    jacobian_scope = "kernel"
    needs_non_negative_losses = True

    def __init__(self, alpha=1.5, learning_rate=0.025, layer=None, optimizer="adam", min_weight=1e-3,
                 num_terms=None, nan_policy="skip", name="gradnorm", **kwargs):
        self.alpha = check_range("alpha", alpha, 0.0, float("inf"), high_open=True)
        try:
            self.learning_rate = check_positive("learning_rate", learning_rate)
        except ValueError:
            raise ValueError(
                "Argument `learning_rate` (the step size of GradNorm's weights) must be a positive "
                f"finite number; received learning_rate={learning_rate!r}."
            ) from None
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"Argument `layer` must be a layer name or None; received layer={layer!r}.")
        self.layer = layer
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Argument `optimizer` must be one of {OPTIMIZERS}; received optimizer={optimizer!r}.")
        self.optimizer = optimizer
        self.min_weight = check_positive("min_weight", min_weight)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        def variable(name, init="zeros"):
            return self.add_weight(shape=(num_terms,), initializer=init, trainable=False, name=name)

        self.task_weights = variable("task_weights", "ones")
        self.initial_losses = variable("initial_losses", "ones")
        self.first_moment = variable("first_moment")
        self.second_moment = variable("second_moment")

    def compute_weights(self, jacobian, losses):
        if losses is None:
            raise ValueError("GradNorm needs the loss values: call `aggregate(jacobian, losses)`.")
        losses = tf.cast(losses, tf.float32)
        first = tf.equal(self.step, 0)
        initial = tf.where(first, losses, self.initial_losses.value)
        self.initial_losses.assign(initial)
        weights = tf.identity(self.task_weights.value)
        norms = tf.norm(tf.cast(jacobian, tf.float64), axis=1)

        # In float64: the ratio of a loss to a tiny initial loss overflows
        # float32, and the rates would then be inf / inf = NaN.
        ratios = tf.cast(losses, tf.float64) / tf.cast(tf.where(initial > 0.0, initial, 1.0), tf.float64)
        mean_ratio = tf.reduce_mean(ratios)
        rates = ratios / tf.where(mean_ratio > 0.0, mean_ratio, 1.0)
        scaled = tf.cast(weights, tf.float64) * norms
        target = tf.reduce_mean(scaled) * tf.minimum(tf.pow(rates, self.alpha), _FLOAT64_MAX)
        gradient = tf.sign(scaled - target) * norms
        # Capped so that its square, Adam's second moment, stays a finite float32.
        gradient = tf.cast(tf.clip_by_value(gradient, -GRADIENT_CAP, GRADIENT_CAP), tf.float32)

        if self.optimizer == "adam":
            beta1, beta2, eps = 0.9, 0.999, 1e-7
            t = tf.cast(self.step // self.update_every + 1, tf.float32)  # updates so far
            m = beta1 * self.first_moment.value + (1.0 - beta1) * gradient
            v = beta2 * self.second_moment.value + (1.0 - beta2) * tf.square(gradient)
            self.first_moment.assign(m)
            self.second_moment.assign(v)
            update = (m / (1.0 - beta1**t)) / (tf.sqrt(v / (1.0 - beta2**t)) + eps)
        else:
            update = gradient
        updated = tf.maximum(weights - self.learning_rate * update, self.min_weight)
        self.task_weights.assign(self.num_terms * updated / tf.reduce_sum(updated))
        return weights

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "learning_rate": self.learning_rate, "layer": self.layer,
                       "optimizer": self.optimizer, "min_weight": self.min_weight})
        return config
