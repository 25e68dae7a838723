"""DB-MTL: balance the loss scales with logarithms, and the gradient magnitudes to the largest one."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range
from keras_balance.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_balance")
class DBMTL(GradientBalancer):
    """Dual-Balancing Multi-Task Learning (Lin et al., 2023).

    Loss-scale balancing: each term is replaced by its logarithm, whose
    gradient is `g_i / (L_i + epsilon)`. Gradient-magnitude balancing: an
    exponential moving average of those gradients, rescaled so that every
    term's average has the norm of the largest:

        h_i(t)  = grad log(L_i + epsilon) = g_i / (L_i + epsilon)
        beta_t  = beta / t^sigma                         (t = 1, 2, ...: the step)
        a_i(t)  = beta_t a_i(t-1) + (1 - beta_t) h_i(t)  (a_i(0) = 0)
        alpha_i = max_j ||a_j(t)|| / ||a_i(t)||          (0 where a_i(t) = 0)
        d       = sum_i alpha_i a_i(t)

    The direction combines moving averages, not the current rows
    (`combines_rows = False`); the K x P averages `a` are Keras variables
    (`gradient_average`, float32) created on the first call, when P is known.
    `term_weights` holds the coefficient of each current gradient in d,
    `w_i = alpha_i (1 - beta_t) / (L_i + epsilon)`: d is `J^T w` plus the
    momentum `sum_i alpha_i beta_t a_i(t-1)`.

    Reference: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu
    and J. T. Kwok, "Dual-Balancing for Multi-Task Learning",
    arXiv:2308.12029, 2023 (Algorithm 1; defaults beta = 0.9, sigma = 0 and
    epsilon = 1e-8 as in the authors' LibMTL code).

    Needs the losses (`aggregate(jacobian, losses)`) and needs them
    non-negative (the NaN policy treats a negative loss like a NaN). The
    moving averages follow one set of parameters: it works on parameter
    gradients (`jacobian_mode="loop"` or `"vectorized"`), not on a
    representation, whose columns change with the batch; `update_every`
    must be 1. Parameters that only some terms touch (task heads) receive the
    plain sum of their gradients, as with every gradient-level method (the
    authors' code gives them the gradients of the logarithms).

    Args:
        beta: the averaging factor beta in [0, 1) (default 0.9; 0: no average).
        beta_sigma: the decay sigma >= 0 of beta_t = beta / t^sigma (default 0).
        epsilon: added to each loss inside the logarithm (default 1e-8).
        num_columns: P, when known in advance (as `from_config` passes it);
            otherwise taken from the first Jacobian.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = DBMTL(beta=0.0)
    >>> jacobian = np.array([[2.0, 0.0], [0.0, 0.5]])
    >>> direction = balancer.aggregate(jacobian, [1.0, 0.25])   # log-gradients [2, 0] and [0, 2]
    >>> [round(float(v), 6) for v in direction]
    [2.0, 2.0]
    """

    summary = "Logarithms of the losses, averaged gradients scaled to the largest norm (Lin et al. 2023)."
    combines_rows = False
    column_state = True
    needs_non_negative_losses = True
    jacobian_modes = ("loop", "vectorized")
    jacobian_modes_reason = ("DB-MTL keeps a moving average per parameter; a representation's columns "
                             "change with the batch.")
    holds_weights = False
    holds_weights_reason = "DB-MTL's direction is a moving average of gradients, not weights to hold."

    def __init__(self, beta=0.9, beta_sigma=0.0, epsilon=1e-8, num_terms=None, nan_policy="skip", name="db_mtl",
                 **kwargs):
        self.beta = check_range("beta", beta, 0.0, 1.0, high_open=True)
        self.beta_sigma = check_range("beta_sigma", beta_sigma, 0.0, float("inf"), high_open=True)
        self.epsilon = check_positive("epsilon", epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_column_state(self, num_terms, num_columns):
        self.gradient_average = self.add_weight(
            shape=(num_terms, num_columns), initializer="zeros", trainable=False, name="gradient_average"
        )

    def compute_direction(self, jacobian, losses):
        if losses is None:
            raise ValueError(f"Balancer '{self.name}' needs the losses: call `aggregate(jacobian, losses)`.")
        # In float64 whatever the input: 1 / (L + epsilon) reaches 1e8.
        scales = 1.0 / (tf.cast(losses, tf.float64) + self.epsilon)
        logarithmic = tf.cast(jacobian, tf.float64) * scales[:, None]
        t = tf.cast(self.step.value + 1, tf.float64)
        beta = self.beta / t**self.beta_sigma
        average = beta * tf.cast(self.gradient_average.value, tf.float64) + (1.0 - beta) * logarithmic
        top = float(np.finfo(np.float32).max)
        self.gradient_average.assign(tf.cast(tf.clip_by_value(average, -top, top), self.gradient_average.dtype))
        # Norms and unit rows on rows scaled to a largest entry of 1 (no overflow).
        largest_entry = tf.reduce_max(tf.abs(average), axis=1, keepdims=True)
        scaled = average / tf.where(largest_entry > 0.0, largest_entry, tf.ones_like(largest_entry))
        scaled_norms = tf.norm(scaled, axis=1)
        norms = largest_entry[:, 0] * scaled_norms
        largest = tf.reduce_max(norms)
        units = scaled / tf.where(scaled_norms > 0.0, scaled_norms, tf.ones_like(scaled_norms))[:, None]
        direction = largest * tf.reduce_sum(units, axis=0)  # sum_i alpha_i a_i, alpha_i = largest / ||a_i||
        alpha = tf.where(norms > 0.0, largest / tf.where(norms > 0.0, norms, tf.ones_like(norms)), tf.zeros_like(norms))
        return tf.cast(direction, jacobian.dtype), alpha * (1.0 - beta) * scales

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "beta_sigma": self.beta_sigma, "epsilon": self.epsilon})
        return config
