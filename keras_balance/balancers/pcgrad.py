"""PCGrad: project each gradient off the gradients it conflicts with."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_seed
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.seeds import add_seed_weight, visiting_orders

REDUCTIONS = ("sum", "mean")


@keras.saving.register_keras_serializable(package="keras_balance")
class PCGrad(GradientBalancer):
    """Projecting Conflicting Gradients (Yu et al., 2020).

    For every term i, start from `g_i^PC = g_i` and visit the other terms j
    in a random order; whenever the running vector conflicts with `g_j`,
    remove its component along `g_j`:

        if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j
        d = sum_i g_i^PC        (reduction="sum";  "mean": d / K)

    Each projection is onto an original gradient `g_j`, never onto a
    projected one. Everything runs on the K x K Gramian `G = J J^T`: the
    balancer keeps the coefficients `C` with `g_i^PC = sum_j C_ij g_j`, so
    every dot product is an entry of `C G`, and the weights are the column
    sums of `C` (divided by K for "mean").

    With two terms the result does not depend on the order:
    `d = g_1 + g_2 - (g_1.g_2 / ||g_2||^2) g_2 - (g_1.g_2 / ||g_1||^2) g_1`
    when `g_1 . g_2 < 0`, and `g_1 + g_2` otherwise. From three terms on, the
    order matters, and it is drawn afresh for every term at every step: a
    seeded random permutation per term, a stateless function of the seed and
    of the balancer's `step`. A term with a zero gradient projects nothing.
    The coefficient of a projection onto a far shorter row is the ratio of
    the norms; for rows some 40 orders of magnitude apart it exceeds float32,
    and the weights are clipped to its finite range (see `GradientBalancer`).

    Reference: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman and C. Finn,
    "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 (Algorithm 1).
    The default reduction is the paper's sum. Parameters that only some terms
    touch (task heads) receive the plain sum of their gradients, as the
    paper prescribes; `BalancedModel` does that.

    Args:
        reduction: `"sum"` (default, the paper) or `"mean"` (the projected
            gradients averaged, as in some published ports).
        seed: optional int seed of the random orders. Equal seeds give equal
            sequences of orders (with or without `tf.function`; XLA's random
            numbers differ from TensorFlow's kernels, so a `jit_compile=True`
            run draws a different, equally reproducible, sequence). The seed
            and the step counter are saved with the balancer's variables, so a
            restored run continues the same sequence. `None` draws a seed when
            the state is built, from Python's `random` module, which
            `keras.utils.set_random_seed` seeds: a globally seeded program
            draws the same seeds in every process.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = PCGrad()
    >>> jacobian = np.array([[1.0, 0.0], [-1.0, 1.0]])   # g1 . g2 = -1 < 0
    >>> balancer.aggregate(jacobian).numpy().tolist()
    [0.5, 1.5]
    """

    summary = "Projects each gradient off the ones it conflicts with, random order (Yu et al. 2020)."
    holds_weights = False
    holds_weights_reason = ("PCGrad projects each of the current gradients off the others it conflicts with; its "
                            "weights describe those projections and mean nothing for other gradients.")

    def __init__(self, reduction="sum", seed=None, num_terms=None, nan_policy="skip", name="pcgrad",
                 **kwargs):
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"Argument `reduction` must be one of {REDUCTIONS}; received reduction={reduction!r}."
            )
        self.reduction = reduction
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        # The orders of step t are a stateless function of (order_seed, t).
        self.order_seed = add_seed_weight(self, self.seed, "order_seed")

    def orders(self, num_terms):
        """The K visiting orders of this step: row i is a random permutation of 0..K-1.

        Term i skips itself when it visits its row. Calling this does not
        advance the balancer; the next `aggregate` uses these orders.
        """
        if not self.built:
            self.build_for(num_terms)
        return visiting_orders(self.order_seed.value, self.step.value, num_terms)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        # The coefficients only involve ratios of entries of G: normalize for range.
        scale = tf.reduce_max(tf.linalg.diag_part(gramian))
        gramian = gramian / tf.where(scale > 0.0, scale, tf.ones_like(scale))
        squared_norms = tf.linalg.diag_part(gramian)
        inverse_norms = tf.where(
            squared_norms > 0.0, 1.0 / tf.where(squared_norms > 0.0, squared_norms, 1.0), 0.0
        )
        orders = self.orders(num_terms)
        rows = tf.range(num_terms, dtype=orders.dtype)
        coefficients = tf.eye(num_terms, dtype=gramian.dtype)
        # All K projected gradients advance together, one visited term per round.
        for position in range(num_terms):
            visited = orders[:, position]
            dots = tf.reduce_sum(coefficients * tf.gather(gramian, visited), axis=1)
            conflict = tf.logical_and(tf.not_equal(visited, rows), dots < 0.0)
            factors = tf.where(conflict, dots * tf.gather(inverse_norms, visited), 0.0)
            coefficients -= factors[:, None] * tf.one_hot(visited, num_terms, dtype=gramian.dtype)
        weights = tf.reduce_sum(coefficients, axis=0)
        if self.reduction == "mean":
            weights = weights / num_terms
        return weights

    def get_config(self):
        config = super().get_config()
        config.update({"reduction": self.reduction, "seed": self.seed})
        return config
