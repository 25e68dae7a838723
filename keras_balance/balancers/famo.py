"""FAMO: fast adaptive multitask optimization, from the loss values alone."""

import math

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_weight_vector
from keras_balance.balancers.base import LossBalancer

# The moments of the logits' Adam step: PyTorch's defaults, which the paper's
# code, LibMTL and TorchJD all use.
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-8


@keras.saving.register_keras_serializable(package="keras_balance")
class FAMO(LossBalancer):
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023).

    FAMO makes every term fall at about the same relative rate, from the loss
    values only (O(1) per step: no per-term gradients). It keeps K logits
    `xi` (init 0) and trains the model on the gradient of
    `c * sum_i z_i log(L_i - b_i + eps)` with `z = softmax(xi)` and
    `c = 1 / sum_j (z_j / (L_j - b_j + eps))` held constant, that is on
    `sum_i lambda_i L_i` with the weights

        lambda_i = c z_i / (L_i - b_i + eps)        (sum_i lambda_i = 1)

    The weights sum to 1, so the update is a convex combination of the term
    gradients, as in the paper (Sum's weights sum to K).

    The logits learn from how much each log loss fell over a step:

        delta_i = log(L_i(t-1) - b_i + eps) - log(L_i(t) - b_i + eps)
        g = grad_xi (softmax(xi) . delta) + gamma xi,   xi <- Adam(xi, g)

    with Adam's learning rate `learning_rate` and the regularization `gamma`
    (`weight_decay`) added to the gradient, as in Algorithm 2 of the paper's
    appendix, the authors' code, LibMTL and TorchJD (Adam with PyTorch's
    defaults beta = (0.9, 0.999), epsilon 1e-8).

    Which losses the update compares (a deliberate, documented difference):
    the paper recomputes the losses of the same batch after the parameter
    step (a second forward pass) and compares them with the losses before it.
    A loss-level balancer sees one loss vector per step, so here step t first
    updates the logits from the change between the previous step's losses
    `L(t-1)` and the current ones `L(t)` (the next batch, after the update:
    the usual single-forward variant), then computes the weights of step t
    from the updated logits and `L(t)`. Step 0 has no previous losses: it
    uses `xi = 0`, and the first update happens at step 1. Fed with
    `L(t)` as the "after" losses of step t-1, the reference implementations
    give exactly these weights (the package's tests check it); with a second
    forward pass on the same batch they would differ by the batch-to-batch
    noise of `delta`.

    State: the logits (`logits`), Adam's moments (`adam_m`, `adam_v`) and step
    count (`updates`), the previous losses (`previous_losses`) and `step`, all
    Keras variables, so a saved, checkpointed or restored run continues
    exactly. The logits are not trainable by the model's optimizer: FAMO
    updates them itself, which is why it also works as a Keras loss
    (`keras_balance.losses.FAMOLoss`).

    Numerics: the weights are computed in log space (a log-sum-exp over
    `log z_i - log(L_i - b_i + eps)`), so terms from 1e-12 to 1e12 give finite
    weights. A loss below its lower bound `b_i` is taken as `b_i` (its
    logarithm is `log eps`).

    Conventions:

    - The losses must be non-negative (the paper's assumption: their
      logarithms are taken). A negative loss is treated like a non-finite
      one: under `nan_policy="skip"` the step changes no state (the logits
      are not updated, and the next step compares with the last usable
      losses) and returns the previous weights; under `"raise"` it fails.

    Reference: B. Liu, Y. Feng, P. Stone and Q. Liu, "FAMO: Fast Adaptive
    Multitask Optimization", NeurIPS 2023 (Section 3; Algorithm 2 in
    Appendix C).

    Args:
        min_losses: optional K non-negative lower bounds `b_i` of the losses
            (default 0, the paper's). When given, it fixes the number of terms.
        learning_rate: >= 0, default 0.025 (the paper's). Adam's learning rate
            of the logits.
        weight_decay: >= 0, default 1e-3 (the paper's Algorithm 2 and LibMTL;
            the authors' code uses 1e-5). The regularization `gamma` of the
            logits.
        epsilon: > 0, default 1e-8 (the paper's). Added to `L_i - b_i` inside
            every logarithm.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = FAMO()
    >>> [round(float(w), 4) for w in balancer([1.0, 3.0])]   # xi = 0: proportional to 1 / L
    [0.75, 0.25]
    >>> weights = balancer([0.5, 3.0])                   # term 0 fell: its logit drops
    >>> bool(balancer.logits[0] < balancer.logits[1])
    True
    """

    summary = "Logits learned from the fall of each log loss, weights c softmax(xi) / L, O(1) (Liu et al. 2023)."
    needs_non_negative_losses = True

    def __init__(
        self,
        min_losses=None,
        learning_rate=0.025,
        weight_decay=1e-3,
        epsilon=1e-8,
        num_terms=None,
        nan_policy="skip",
        name="famo",
        **kwargs,
    ):
        if min_losses is not None:
            min_losses, num_terms = check_weight_vector("min_losses", min_losses, num_terms)
        self.min_losses = min_losses
        self.learning_rate = check_range("learning_rate", learning_rate, 0.0, math.inf, high_open=True)
        self.weight_decay = check_range("weight_decay", weight_decay, 0.0, math.inf, high_open=True)
        self.epsilon = check_range("epsilon", epsilon, 0.0, math.inf, low_open=True, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    # -- state ---------------------------------------------------------------

    def build_state(self, num_terms):
        def vector(name, initializer="zeros"):
            return self.add_weight(shape=(num_terms,), initializer=initializer, trainable=False, name=name)

        def counter(name):
            return self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name=name)

        self.logits = vector("logits")
        self.adam_m = vector("adam_m")
        self.adam_v = vector("adam_v")
        self.updates = counter("updates")
        self.previous_losses = vector("previous_losses", "ones")
        self.step = counter("step")

    def initial_weights(self, num_terms):
        return [1.0 / num_terms] * num_terms

    # -- formula -------------------------------------------------------------

    def _log_shifted(self, losses):
        """`log(max(L - b, 0) + eps)`."""
        if self.min_losses is not None:
            losses = losses - tf.constant(self.min_losses, losses.dtype)
        return tf.math.log(tf.maximum(losses, 0.0) + tf.constant(self.epsilon, losses.dtype))

    def _adam_step(self, delta):
        """One Adam step of the logits on `grad (softmax(xi) . delta) + gamma xi`; returns the new logits."""
        xi = self.logits.value
        z = tf.nn.softmax(xi)
        gradient = z * (delta - tf.reduce_sum(z * delta)) + self.weight_decay * xi
        count = tf.cast(self.updates.value + 1, xi.dtype)
        m = ADAM_BETA_1 * self.adam_m.value + (1.0 - ADAM_BETA_1) * gradient
        v = ADAM_BETA_2 * self.adam_v.value + (1.0 - ADAM_BETA_2) * tf.square(gradient)
        m_hat = m / (1.0 - tf.pow(tf.constant(ADAM_BETA_1, xi.dtype), count))
        v_hat = v / (1.0 - tf.pow(tf.constant(ADAM_BETA_2, xi.dtype), count))
        return xi - self.learning_rate * m_hat / (tf.sqrt(v_hat) + ADAM_EPSILON), m, v

    def compute_weights(self, losses):
        log_now = self._log_shifted(losses)
        update = self.step.value > 0
        new_logits, m, v = self._adam_step(self._log_shifted(self.previous_losses.value) - log_now)
        self.logits.assign(tf.where(update, new_logits, self.logits.value))
        self.adam_m.assign(tf.where(update, m, self.adam_m.value))
        self.adam_v.assign(tf.where(update, v, self.adam_v.value))
        self.updates.assign_add(tf.cast(update, "int64"))
        self.previous_losses.assign(losses)
        self.step.assign_add(1)
        # lambda_i = z_i / D_i / sum_j (z_j / D_j), in log space.
        scores = tf.nn.log_softmax(self.logits.value) - log_now
        return tf.nn.softmax(scores)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "min_losses": self.min_losses,
                "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay,
                "epsilon": self.epsilon,
            }
        )
        return config
