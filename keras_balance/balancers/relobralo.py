"""ReLoBRaLo: relative loss balancing with random lookback."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range, check_seed
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.seeds import add_seed_weight


def balanced_softmax(losses, reference, temperature, epsilon):
    """`K * softmax_i(L_i / (T * ref_i + eps))`, overflow-safe.

    The ratios are clipped to a finite range before the (max-shifted) softmax,
    so a reference of zero cannot produce an infinity or a NaN.
    """
    info = np.finfo(losses.dtype.as_numpy_dtype)
    ratios = losses / (temperature * reference + epsilon)
    ratios = tf.clip_by_value(ratios, -0.1 * info.max, 0.1 * info.max)
    num_terms = tf.cast(tf.shape(losses)[0], losses.dtype)
    # A term lagging far behind the others (a logit gap above ~87 in float32)
    # would underflow to a weight of exactly 0; floor it at the smallest normal
    # number so every weight stays strictly positive (the sum is unaffected).
    weights = num_terms * tf.nn.softmax(ratios - tf.reduce_max(ratios))
    return tf.maximum(weights, info.tiny)


@keras.saving.register_keras_serializable(package="keras_balance")
class ReLoBRaLo(LossBalancer):
    """Relative Loss Balancing with Random Lookback (Bischof & Kraus, 2021).

    Weights each term by how little progress it has made, relative to an
    earlier value of the same term, so the weights do not depend on the scale
    of any term. With the softmax over the K terms:

        bal_i(t, t') = K * softmax_i( L_i(t) / (T * L_i(t') + eps) )
        rho(t) ~ Bernoulli(rho)                      (seeded, one draw per step)
        w_i(t) = alpha * [rho(t) * w_i(t-1) + (1 - rho(t)) * bal_i(t, 0)]
                 + (1 - alpha) * bal_i(t, t-1)

    Step 0 returns w = 1 and records L(0) as the initial losses (alpha = 1,
    rho = 1); step 1 returns `bal(1, 0)` (alpha = 0, rho = 1); the rule above
    applies from step 2 on. The weights are positive and sum to K from step 1
    (a weight that would underflow to 0 in the softmax is floored at the
    smallest normal float, about 1e-38 in float32).

    Conventions:

    - The losses must be non-negative: the rule compares each term with its
      own earlier values through their ratio, which says nothing about
      progress once a term changes sign (and a term falling from -1 to -2
      would look like one that doubled). A negative loss is treated like a
      non-finite one: under `nan_policy="skip"` the step leaves the state as
      it was and returns the previous weights; under `"raise"` it fails. A
      loss of 0 is fine (`epsilon` guards the ratios).

    Defaults are those of the Keras class in Bischof's article (alpha 0.999,
    temperature 0.1, rho 0.99). Other published defaults: NVIDIA Modulus uses
    alpha 0.95, rho 0.99, temperature 1.0; the authors' repository uses
    alpha 0.999, temperature 1.0, rho 1.0.

    Reference: R. Bischof and M. Kraus, "Multi-Objective Loss Balancing for
    Physics-Informed Deep Learning", arXiv:2110.09813, 2021.

    Args:
        alpha: in [0, 1]. Memory of the exponential moving average: 1 keeps
            only the history, 0 uses only the last step's balance.
        temperature: > 0. Softmax temperature T; smaller is sharper.
        rho: in [0, 1]. Expected value of the Bernoulli variable rho(t): the
            probability of keeping the history `w(t-1)` rather than looking
            back to the initial losses. `rho=1` never looks back (deterministic),
            `rho=0` always looks back.
        epsilon: >= 0. Guard added to every denominator.
        seed: optional int seed of the Bernoulli draws; equal seeds give equal
            weight sequences (with or without `tf.function`; XLA's random
            numbers differ from TensorFlow's kernels, so a `jit_compile=True`
            run draws a different, equally reproducible, sequence). The draw of
            step t depends only on the seed and t, and both are saved with the
            balancer's variables, so a restored run continues the same sequence.
            None: the seed is drawn when the state is built, from Python's
            `random` module, which `keras.utils.set_random_seed` seeds, so a
            globally seeded program draws the same seeds in every process.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = ReLoBRaLo(rho=1.0)
    >>> balancer([2.0, 1.0]).numpy().tolist()  # step 0
    [1.0, 1.0]
    >>> weights = balancer([1.0, 1.0])          # term 0 progressed more
    >>> bool(weights[1] > weights[0])
    True
    """

    summary = "Relative progress L_i(t)/L_i(t') through a softmax, with random lookback (Bischof & Kraus 2021)."
    needs_non_negative_losses = True

    def __init__(
        self,
        alpha=0.999,
        temperature=0.1,
        rho=0.99,
        epsilon=1e-12,
        seed=None,
        num_terms=None,
        nan_policy="skip",
        name="relobralo",
        **kwargs,
    ):
        self.alpha = check_range("alpha", alpha, 0.0, 1.0)
        self.temperature = check_positive("temperature", temperature)
        self.rho = check_range("rho", rho, 0.0, 1.0)
        self.epsilon = check_range("epsilon", epsilon, 0.0, float("inf"), high_open=True)
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="step"
        )
        self.initial_losses = self.add_weight(
            shape=(num_terms,), initializer="ones", trainable=False, name="initial_losses"
        )
        self.previous_losses = self.add_weight(
            shape=(num_terms,), initializer="ones", trainable=False, name="previous_losses"
        )
        # The last Bernoulli draw rho(t) (1: history kept, 0: looked back).
        self.last_lookback = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="last_lookback"
        )
        # The draw of step t is a stateless function of (lookback_seed, t), so the
        # random sequence is saved and restored with the step counter.
        self.lookback_seed = add_seed_weight(self, self.seed, "lookback_seed")

    def compute_weights(self, losses):
        step = self.step.value
        previous_weights = self.term_weights.value
        balance_previous = balanced_softmax(
            losses, self.previous_losses.value, self.temperature, self.epsilon
        )
        balance_initial = balanced_softmax(
            losses, self.initial_losses.value, self.temperature, self.epsilon
        )
        draw = tf.random.stateless_uniform(
            (), seed=tf.stack([self.lookback_seed.value, step]), dtype=losses.dtype
        )
        keep_history = tf.where(step >= 2, tf.cast(draw < self.rho, losses.dtype), 1.0)
        history = keep_history * previous_weights + (1.0 - keep_history) * balance_initial
        rule = self.alpha * history + (1.0 - self.alpha) * balance_previous
        weights = tf.where(step == 0, previous_weights, tf.where(step == 1, balance_previous, rule))

        self.initial_losses.assign(tf.where(step == 0, losses, self.initial_losses.value))
        self.previous_losses.assign(losses)
        self.last_lookback.assign(keep_history)
        self.step.assign_add(1)
        return weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "temperature": self.temperature,
                "rho": self.rho,
                "epsilon": self.epsilon,
                "seed": self.seed,
            }
        )
        return config
