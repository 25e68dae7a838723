"""RLW: random loss weighting, the baseline every adaptive method should beat."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_seed
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.seeds import add_seed_weight


@keras.saving.register_keras_serializable(package="keras_balance")
class RLW(LossBalancer):
    """Random Loss Weighting (Lin et al., 2022): fresh random weights each step.

        z(t) ~ N(0, I_K)            (seeded, one draw per step)
        lambda(t) = K * softmax(z(t))

    The weights are positive, sum to K, and each has expectation 1, so on
    average the total equals Sum's. The paper proposes it as a litmus test:
    an adaptive balancing method should beat random weights. The loss values
    do not enter the weights.

    Reference: B. Lin, F. Ye, Y. Zhang and I. W. Tsang, "Reasonable
    Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
    Transactions on Machine Learning Research (TMLR), 2022; arXiv:2111.10603
    (2021).

    Args:
        seed: optional int seed of the draws. The draw of step t is a
            stateless function of (seed, t) (`tf.random.stateless_normal`),
            and both are Keras variables (`draw_seed`, `step`), so equal seeds
            give equal weight sequences (with or without `tf.function`) and a
            restored checkpoint continues the same sequence. XLA generates
            random numbers with its own kernels, so under `jit_compile=True`
            the same seed gives a different, equally reproducible, sequence.
            With `seed=None` a seed is drawn once when the state is created,
            from Python's `random` module, which `keras.utils.set_random_seed`
            seeds: a globally seeded program draws the same seeds in every
            process.
        num_terms, nan_policy, name: see `Balancer`. Under the "skip" policy a
            non-finite step draws nothing: the step counter does not advance.

    Example:

    >>> balancer = RLW(seed=0)
    >>> weights = balancer([0.3, 2.0, 1.0]).numpy()
    >>> bool((weights > 0).all()), round(float(weights.sum()), 4)
    (True, 3.0)
    """

    summary = "Random weights K*softmax(z), z ~ N(0, I) drawn each step (Lin et al. 2022)."

    def __init__(self, seed=None, num_terms=None, nan_policy="skip", name="rlw", **kwargs):
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="step"
        )
        self.draw_seed = add_seed_weight(self, self.seed, "draw_seed")
        # z(t) of the latest step (zeros before the first draw).
        self.last_logits = self.add_weight(
            shape=(num_terms,), initializer="zeros", trainable=False, name="last_logits"
        )

    def compute_weights(self, losses):
        num_terms = losses.shape[0]
        logits = tf.random.stateless_normal(
            (num_terms,), seed=tf.stack([self.draw_seed.value, self.step.value]), dtype=losses.dtype
        )
        self.last_logits.assign(logits)
        self.step.assign_add(1)
        return float(num_terms) * tf.nn.softmax(logits)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
