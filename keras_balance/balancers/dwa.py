"""DWA: dynamic weight averaging from the ratio of the last two losses."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.threads import one_step_at_a_time

DWA_PERIODS = ("epoch", "step")


def dwa_weights(latest, before, temperature, epsilon):
    """`K * softmax_i(w_i / T)` with `w_i = latest_i / (before_i + eps)`, overflow-safe.

    The ratios are clipped to a finite range before the (max-shifted) softmax,
    so a zero or tiny earlier loss cannot produce an infinity or a NaN; a
    weight that would underflow to 0 is floored at the smallest normal float.
    """
    info = np.finfo(latest.dtype.as_numpy_dtype)
    ratios = latest / (before + epsilon)
    logits = tf.clip_by_value(ratios / temperature, -0.1 * info.max, 0.1 * info.max)
    num_terms = tf.cast(tf.shape(latest)[0], latest.dtype)
    weights = num_terms * tf.nn.softmax(logits - tf.reduce_max(logits))
    return tf.maximum(weights, info.tiny)


@keras.saving.register_keras_serializable(package="keras_balance")
class DWA(LossBalancer):
    """Dynamic Weight Averaging (Liu, Johns & Davison, CVPR 2019).

    Weights each term by how slowly it decreased over the last period: the
    ratio of its two latest losses goes through a softmax over the K terms,

        w_i(t-1) = L_i(t-1) / (L_i(t-2) + eps)
        lambda_i(t) = K * exp(w_i(t-1) / T) / sum_j exp(w_j(t-1) / T)

    so the weights are positive and sum to K; lambda = 1 for the first two
    periods (t = 0, 1). Only ratios of a term to itself enter, so rescaling a
    term by a constant leaves the weights unchanged (up to `eps`).

    `per="epoch"` (default, the paper's form): t counts epochs and `L_i(t)` is
    the mean of term i over the training steps of epoch t. During an epoch
    `compute_weights` adds each step's losses to the accumulators
    `epoch_loss_sum` / `epoch_steps` and returns the current epoch's weights
    (constant within the epoch). `end_epoch()`, called after each training
    epoch by `BalancedModel.fit` or by
    `keras_balance.callbacks.BalancerEpochEnd`, turns the accumulators into
    the epoch means, shifts the two-epoch history (`latest_epoch_losses`,
    `previous_epoch_losses`), computes the weights of the next epoch (1 until
    two epoch means exist), stores them in `epoch_weights` and `term_weights`,
    and resets the accumulators. An epoch without (finite) steps is ignored:
    it adds no mean and changes no weight.

    `per="step"`: t counts the balancer's steps; step t uses the losses of
    steps t-1 and t-2, so steps 0 and 1 get weight 1 and step 2 uses
    L(1)/L(0). `end_epoch()` does nothing.

    Numerics: the ratios are clipped to a finite range and the softmax
    subtracts its largest logit, so a zero earlier loss gives no NaN; a
    weight that would underflow to 0 is floored at the smallest normal float.

    Conventions:

    - The losses must be non-negative: the weights come from the ratio of a
      term to its own earlier value, which says nothing about progress once
      the term changes sign. A negative loss is treated like a non-finite
      one: under `nan_policy="skip"` the step leaves the state as it was
      (it does not enter the epoch accumulators) and returns the previous
      weights; under `"raise"` it fails. A loss of 0 is fine.

    Reference: S. Liu, E. Johns and A. J. Davison, "End-to-End Multi-Task
    Learning with Attention", CVPR 2019.

    Args:
        temperature: > 0, default 2.0 (the paper's value). Softmax temperature
            T; larger values give more uniform weights.
        per: `"epoch"` (default) or `"step"`: the period t counts.
        epsilon: >= 0, default 1e-12. Guard added to the denominator of every
            ratio.
        num_terms, nan_policy, name: see `Balancer`. With the "skip" policy a
            non-finite step does not enter the epoch accumulators.

    Example:

    >>> balancer = DWA(per="step")
    >>> balancer([2.0, 1.0]).numpy().tolist()  # step 0
    [1.0, 1.0]
    >>> balancer([1.0, 1.0]).numpy().tolist()  # step 1
    [1.0, 1.0]
    >>> weights = balancer([0.5, 1.0])          # step 2: ratios [1/2, 1/1]
    >>> bool(weights[1] > weights[0])
    True
    """

    summary = "Softmax of each term's loss ratio over the last two epochs or steps (Liu et al. 2019)."

    #: Per-epoch DWA updates in `end_epoch`; a per-step instance sets it to False.
    needs_epoch_end = True
    needs_non_negative_losses = True

    def __init__(
        self,
        temperature=2.0,
        per="epoch",
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="dwa",
        **kwargs,
    ):
        self.temperature = check_positive("temperature", temperature)
        if per not in DWA_PERIODS:
            raise ValueError(f"Argument `per` must be one of {DWA_PERIODS}; received per={per!r}.")
        self.per = per
        self.epsilon = check_range("epsilon", epsilon, 0.0, math.inf, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)
        self.needs_epoch_end = per == "epoch"

    def build_state(self, num_terms):
        def vector(name, initializer="ones"):
            return self.add_weight(
                shape=(num_terms,), initializer=initializer, trainable=False, name=name
            )

        def counter(name):
            return self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name=name)

        if self.per == "step":
            self.step = counter("step")
            self.latest_losses = vector("latest_losses")  # L(t-1)
            self.previous_losses = vector("previous_losses")  # L(t-2)
        else:
            self.epoch_loss_sum = vector("epoch_loss_sum", "zeros")
            self.epoch_steps = counter("epoch_steps")
            self.epochs_seen = counter("epochs_seen")
            self.latest_epoch_losses = vector("latest_epoch_losses")  # mean of epoch t-1
            self.previous_epoch_losses = vector("previous_epoch_losses")  # mean of epoch t-2
            self.epoch_weights = vector("epoch_weights")

    def compute_weights(self, losses):
        if self.per == "epoch":
            self.epoch_loss_sum.assign_add(losses)
            self.epoch_steps.assign_add(1)
            return self.epoch_weights.value
        step = self.step.value
        ratio_weights = dwa_weights(
            self.latest_losses.value, self.previous_losses.value, self.temperature, self.epsilon
        )
        weights = tf.where(step >= 2, ratio_weights, tf.ones_like(losses))
        self.previous_losses.assign(self.latest_losses.value)
        self.latest_losses.assign(losses)
        self.step.assign_add(1)
        return weights

    def end_epoch(self):
        """Close an epoch: epoch means, history shift, next epoch's weights.

        Does nothing for `per="step"`, before the state exists, or after an
        epoch without finite steps. Uses only TensorFlow ops, so it also works
        inside a `tf.function`.
        """
        if self.per != "epoch" or not self.built:
            return
        with one_step_at_a_time(self):
            self._close_epoch()

    def _close_epoch(self):
        steps = self.epoch_steps.value
        had_steps = steps > 0
        mean = self.epoch_loss_sum.value / tf.cast(tf.maximum(steps, 1), self.epoch_loss_sum.dtype)
        latest = tf.where(had_steps, mean, self.latest_epoch_losses.value)
        previous = tf.where(had_steps, self.latest_epoch_losses.value, self.previous_epoch_losses.value)
        epochs = self.epochs_seen.value + tf.cast(had_steps, "int64")
        ratio_weights = dwa_weights(latest, previous, self.temperature, self.epsilon)
        weights = tf.where(epochs >= 2, ratio_weights, tf.ones_like(latest))
        weights = tf.where(had_steps, weights, self.epoch_weights.value)

        self.latest_epoch_losses.assign(latest)
        self.previous_epoch_losses.assign(previous)
        self.epochs_seen.assign(epochs)
        self.epoch_weights.assign(weights)
        self.term_weights.assign(weights)
        self.epoch_loss_sum.assign(tf.zeros_like(self.epoch_loss_sum.value))
        self.epoch_steps.assign(tf.zeros_like(steps))

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "per": self.per, "epsilon": self.epsilon})
        return config
