"""Linear scalarization with constant weights: the baseline of every benchmark."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_weight_vector
from keras_balance.balancers.base import LossBalancer


@keras.saving.register_keras_serializable(package="keras_balance")
class Sum(LossBalancer):
    """Constant weights: `L = sum_i w_i L_i` (linear scalarization).

    The baseline that every benchmark of keras_balance reports against. With
    the default `weights=None` every term has weight 1.

    Args:
        weights: optional sequence of K non-negative, finite constants. When
            given, it fixes the number of terms.
        nan_policy: see `Balancer`.
        name: layer name.

    Example:

    >>> balancer = Sum(weights=[1.0, 10.0])
    >>> balancer([0.5, 0.01]).numpy().tolist()
    [1.0, 10.0]
    """

    summary = "Constant weights (default all 1): plain linear scalarization."

    def __init__(self, weights=None, num_terms=None, nan_policy="skip", name="sum", **kwargs):
        if weights is not None:
            weights, num_terms = check_weight_vector("weights", weights, num_terms)
        self.fixed_weights = weights
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def initial_weights(self, num_terms):
        return list(self.fixed_weights) if self.fixed_weights is not None else [1.0] * num_terms

    def compute_weights(self, losses):
        if self.fixed_weights is None:
            return tf.ones_like(losses)
        return tf.constant(self.fixed_weights, dtype=losses.dtype)

    def get_config(self):
        config = super().get_config()
        config["weights"] = self.fixed_weights
        return config
