"""Gradient Vaccine: move the pairwise cosines of the gradients towards moving-average targets."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_seed
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.seeds import add_seed_weight, visiting_orders


@keras.saving.register_keras_serializable(package="keras_balance")
class GradVac(GradientBalancer):
    """Gradient Vaccine (Wang et al., 2021): align each gradient with the others to a learned target.

    Keeps a K x K matrix of targets `phi_hat_ij` (cosines, initially 0).
    For every term i, start from `g_i' = g_i` and visit the other terms j in
    a random order. With `phi_ij = cos(g_i', g_j)`:

        if phi_ij < phi_hat_ij:
            g_i' <- g_i' + ||g_i'|| (phi_hat_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi_hat_ij^2))
                           / (||g_j|| sqrt(1 - phi_hat_ij^2)) g_j
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij
        d = sum_i g_i'

    The correction sets the cosine of `g_i'` with `g_j` to exactly the target
    (the closed form of the paper's Section 3); the moving average uses the cosine measured before
    the correction. With targets 0 the correction is PCGrad's projection:
    the first step equals `PCGrad` with the same seed. Each correction adds
    a multiple of an original gradient, so the balancer keeps the
    coefficients `C` with `g_i' = sum_j C_ij g_j` and works on the Gramian
    (TorchJD's `GradVacWeighting` does the same); the weights are the column
    sums of `C`.

    The order of the visits is a seeded random permutation per term and per
    step, a stateless function of the seed and of the balancer's `step` (as
    in `PCGrad`). The targets live in the variable `targets`, so saving,
    restoring and the NaN policy keep them.

    Conventions:

    - The paper applies the rule per layer (or per group of parameters),
      with one target per layer. keras_balance implements the whole-model
      version (LibMTL's default `group_type=0`, TorchJD's `GradVac`): one
      direction `J^T w` for all the shared parameters. A per-layer version is
      not a combination `J^T w` of the rows and is not provided.
    - `epsilon` (default 0): added to the denominators, as LibMTL and TorchJD
      do with 1e-8. keras_balance guards the divisions instead (a zero
      gradient has cosine 0 and is never added), so the result does not
      depend on the scale of the gradients; `epsilon=1e-8` reproduces the
      references, whose cosines shrink for gradients of norm below about
      1e-4.
    - A target of exactly 1 cannot be reached by adding a finite multiple of
      `g_j`; no correction is made then.

    Reference: Z. Wang, Y. Tsvetkov, O. Firat and Y. Cao, "Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively
    Multilingual Models", ICLR 2021 (Section 3, Algorithm 1).
    The default beta = 0.5 is that of LibMTL and TorchJD.

    Args:
        beta: in [0, 1]. Weight of the new cosine in the moving average of
            the targets.
        epsilon: >= 0. Added to the denominators (see above).
        seed: optional int seed of the random orders (see `PCGrad`).
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> import numpy as np
    >>> balancer = GradVac()
    >>> jacobian = np.array([[1.0, 0.0], [-1.0, 1.0]])   # first step: PCGrad's projections
    >>> balancer.aggregate(jacobian).numpy().tolist()
    [0.5, 1.5]
    >>> [[round(float(v), 4) for v in row] for row in balancer.targets.numpy()]   # half the cosine -1/sqrt(2)
    [[0.0, -0.3536], [-0.3536, 0.0]]
    """

    summary = "Moves each pair's gradient cosine up to a moving-average target, random order (Wang et al. 2021)."
    holds_weights = False
    holds_weights_reason = ("GradVac adds multiples of the current gradients to each other to reach target "
                            "cosines; its weights mean nothing for other gradients.")

    def __init__(self, beta=0.5, epsilon=0.0, seed=None, num_terms=None, nan_policy="skip", name="gradvac",
                 **kwargs):
        self.beta = check_range("beta", beta, 0.0, 1.0)
        self.epsilon = check_range("epsilon", epsilon, 0.0, float("inf"), high_open=True)
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        self.targets = self.add_weight(
            shape=(num_terms, num_terms), initializer="zeros", trainable=False, name="targets"
        )
        self.order_seed = add_seed_weight(self, self.seed, "order_seed")

    def orders(self, num_terms):
        """The K visiting orders of this step: row i is a random permutation of 0..K-1 (i skips itself)."""
        if not self.built:
            self.build_for(num_terms)
        return visiting_orders(self.order_seed.value, self.step.value, num_terms)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        dtype = gramian.dtype
        zero = tf.constant(0.0, dtype)
        epsilon = tf.constant(self.epsilon, dtype)
        targets = tf.cast(self.targets.value, dtype)
        norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gramian), zero))
        orders = self.orders(num_terms)
        rows = tf.range(num_terms, dtype=orders.dtype)
        coefficients = tf.eye(num_terms, dtype=dtype)
        measured = targets
        # All K adjusted gradients advance together, one visited term per round.
        for position in range(num_terms):
            visited = orders[:, position]
            other = tf.not_equal(visited, rows)
            products = tf.matmul(coefficients, gramian)  # row i: g_i' . g_k for every k
            dots = tf.gather(products, visited, axis=1, batch_dims=1)
            own = tf.sqrt(tf.maximum(tf.reduce_sum(products * coefficients, axis=1), zero))
            theirs = tf.gather(norms, visited)
            denominator = own * theirs + epsilon
            defined = denominator > 0.0
            cosine = tf.where(defined, dots / tf.where(defined, denominator, tf.ones_like(denominator)), zero)
            cosine = tf.clip_by_value(cosine, -1.0, 1.0)
            index = tf.stack([rows, visited], axis=1)
            target = tf.gather_nd(targets, index)
            room = tf.sqrt(tf.maximum(1.0 - target * target, zero))
            scale = theirs * room + epsilon
            adjust = tf.logical_and(tf.logical_and(other, cosine < target), scale > 0.0)
            amount = own * (target * tf.sqrt(tf.maximum(1.0 - cosine * cosine, zero)) - cosine * room)
            amount = tf.where(adjust, amount / tf.where(adjust, scale, tf.ones_like(scale)), zero)
            coefficients += amount[:, None] * tf.one_hot(visited, num_terms, dtype=dtype)
            measured = tf.tensor_scatter_nd_update(
                measured, index, tf.where(other, (1.0 - self.beta) * target + self.beta * cosine, target)
            )
        self.targets.assign(tf.cast(measured, self.targets.dtype))
        return tf.reduce_sum(coefficients, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "epsilon": self.epsilon, "seed": self.seed})
        return config
