"""GradDrop: keep, per coordinate, only the gradients of one sign, chosen at random by their purity."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_seed
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.seeds import add_seed_weight, counter_uniform


@keras.saving.register_keras_serializable(package="keras_balance")
class GradDrop(GradientBalancer):
    """Gradient Sign Dropout (Chen et al., 2020): a random sign per coordinate, weighted by its purity.

    For each column p of the K x P Jacobian (a parameter, or one entry of a
    shared representation), the gradient positive sign purity

        P_p = 1/2 (1 + sum_i J_ip / sum_i |J_ip|)        (P_p = 1/2 where every J_ip = 0)

    is the share of positive gradient there. A uniform draw U_p ~ U(0, 1)
    picks a sign: positive where P_p > U_p, negative where P_p < U_p; only the
    gradients of that sign pass,

        M_ip = [P_p > U_p] [J_ip > 0] + [P_p < U_p] [J_ip < 0]
        d_p  = sum_i (l_i + (1 - l_i) M_ip) J_ip

    with the leak l_i in [0, 1] of term i (l_i = 1: term i always passes).
    Where all gradients agree in sign, everything passes; where they
    conflict, one side is dropped, with the probability of its purity.

    The direction is not a combination of the rows (`combines_rows = False`).
    `term_weights` holds, for each term, the share of its gradient that passed:
    `w_i = <m_i * g_i, g_i> / ||g_i||^2` with `m_i = l_i + (1 - l_i) M_i`,
    in [0, 1] (1 for a zero gradient). The terms whose gradients mostly
    passed have weights near 1.

    Reference: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai
    and D. Anguelov, "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020 (Algorithm 1, lines 10-15, with the
    identity as f). The paper applies it to the gradients of a shared
    representation: `BalancedModel(...).compile(jacobian_mode="features",
    feature_layer=...)`; it works on parameter gradients too. Its
    batch-separated variant (summing `sign(A) * grad_A L_i` over the batch
    before the purity, as LibMTL does) is not applied: the purity is taken
    per entry of the Jacobian, as in TorchJD.

    Args:
        leak: the leak l in [0, 1], one number for every term or a list of K
            (default 0.0, the paper's main setting: no leak).
        seed: optional int seed of the draws U. The draws of step t are a
            counter-based function of (seed, t) computed with integer
            arithmetic, so eager execution, `tf.function` and XLA draw the
            same numbers; seed and step are Keras variables, so a restored
            run continues the same sequence. `None`: a seed is drawn when the
            state is built, from Python's `random` module (which
            `keras.utils.set_random_seed` seeds).
        num_terms, nan_policy, name: see `Balancer`. Under "skip" a
            non-finite step draws nothing: the step counter does not advance.

    `update_every` must be 1: the mask is drawn for the current gradients.

    Example:

    >>> import numpy as np
    >>> balancer = GradDrop(seed=0)
    >>> jacobian = np.array([[1.0, 2.0], [3.0, -2.0]])   # column 0 agrees, column 1 is pure noise
    >>> direction = balancer.aggregate(jacobian).numpy()
    >>> float(direction[0]), float(abs(direction[1]))
    (4.0, 2.0)
    """

    summary = "Keeps, per coordinate, the gradients of a sign drawn by its purity (Chen et al. 2020)."
    combines_rows = False
    holds_weights = False
    holds_weights_reason = "GradDrop draws a sign mask for the current gradients; there are no weights to hold."

    def __init__(self, leak=0.0, seed=None, num_terms=None, nan_policy="skip", name="graddrop", **kwargs):
        if isinstance(leak, (list, tuple, np.ndarray)):
            values = list(np.asarray(leak, dtype=object).reshape(-1))
            if not values:
                raise ValueError(f"Argument `leak` must be a number in [0, 1] or a list of K of them; received leak={leak!r}.")
            for value in values:
                try:
                    check_range("leak", value, 0.0, 1.0)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"Argument `leak` must be a number in [0, 1] or a list of K of them; received leak={leak!r}."
                    ) from None
            if num_terms is not None and len(values) != num_terms:
                raise ValueError(
                    f"Argument `leak` must have one value per term ({num_terms}); received leak={leak!r}."
                )
            leak = [float(v) for v in values]
        else:
            leak = check_range("leak", leak, 0.0, 1.0)
        self.leak = leak
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        if isinstance(self.leak, list) and len(self.leak) != num_terms:
            raise ValueError(
                f"Argument `leak` must have one value per term ({num_terms}); received leak={self.leak!r}."
            )
        self.mask_seed = add_seed_weight(self, self.seed, "mask_seed")

    def draws(self, num_columns, dtype="float64"):
        """The P uniform draws U of the next step (calling this advances nothing)."""
        return counter_uniform(self.mask_seed.value, self.step.value, num_columns, dtype)

    def compute_direction(self, jacobian, losses):
        dtype = jacobian.dtype
        total = tf.reduce_sum(jacobian, axis=0)
        magnitude = tf.reduce_sum(tf.abs(jacobian), axis=0)
        safe = tf.where(magnitude > 0.0, magnitude, tf.ones_like(magnitude))
        purity = tf.where(magnitude > 0.0, 0.5 * (1.0 + total / safe), tf.fill(tf.shape(total), tf.constant(0.5, dtype)))
        draws = self.draws(tf.shape(jacobian)[1], dtype)
        positive = tf.logical_and((purity > draws)[None, :], jacobian > 0.0)
        negative = tf.logical_and((purity < draws)[None, :], jacobian < 0.0)
        mask = tf.cast(tf.logical_or(positive, negative), dtype)
        leak = tf.reshape(tf.constant(self.leak, dtype), [-1, 1])
        passed = (leak + (1.0 - leak) * mask) * jacobian
        direction = tf.reduce_sum(passed, axis=0)
        # The share of each row's squared norm that passed, computed on rows
        # scaled to a largest entry of 1 (no overflow for rows near float32's top).
        largest = tf.reduce_max(tf.abs(jacobian), axis=1, keepdims=True)
        unit = jacobian / tf.where(largest > 0.0, largest, tf.ones_like(largest))
        squares = tf.reduce_sum(unit * unit, axis=1)
        kept = tf.reduce_sum((leak + (1.0 - leak) * mask) * unit * unit, axis=1)
        weights = tf.where(squares > 0.0, kept / tf.where(squares > 0.0, squares, tf.ones_like(squares)),
                           tf.ones_like(squares))
        return direction, weights

    def get_config(self):
        config = super().get_config()
        config.update({"leak": self.leak, "seed": self.seed})
        return config
