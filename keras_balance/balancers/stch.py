"""STCH: smooth Tchebycheff scalarization of the K losses."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive, check_range, check_weight_vector
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.threads import one_step_at_a_time

STCH_NORMALIZATIONS = ("none", "log_nadir")


def _point(name, values, num_terms, positive):
    """Validate K finite numbers (all > 0 when `positive`); returns `(floats, K)`."""
    try:
        array = np.asarray(values, dtype="float64")
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or array.size == 0:
        raise ValueError(f"Argument `{name}` must be a non-empty 1-D sequence of numbers; received {name}={values!r}.")
    if not np.all(np.isfinite(array)) or (positive and np.any(array <= 0)):
        rule = "finite, positive numbers" if positive else "finite numbers"
        raise ValueError(f"Argument `{name}` must contain {rule}; received {name}={values!r}.")
    if num_terms is not None and num_terms != array.size:
        raise ValueError(f"Argument `num_terms`={num_terms!r} disagrees with the {array.size} entries of `{name}`.")
    return [float(v) for v in array], int(array.size)


@keras.saving.register_keras_serializable(package="keras_balance")
class STCH(LossBalancer):
    """Smooth Tchebycheff scalarization (Lin, Zhang, Yang, Liu, Wang & Zhang, ICML 2024).

    The Tchebycheff scalarization `max_i lambda_i (L_i - z_i)` trains the
    worst (preference-weighted) term only; its smooth version replaces the
    maximum by a log-sum-exp with smoothing `mu` (paper, Section 3):

        S(L) = mu log sum_i exp(lambda_i y_i / mu)

    and the model is trained on `sum_i w_i L_i` with the weights
    `w_i = dS/dL_i` (held constant), whose gradient is that of `S`:

        normalization="none" (default, the paper's):
            y_i = L_i - z_i,                 w_i = lambda_i s_i
        normalization="log_nadir" (LibMTL's multi-task form):
            y_i = log(L_i / n_i + eps),      w_i = lambda_i s_i / (L_i + eps n_i)

    with `s = softmax(lambda y / mu)`, the preference `lambda` (default
    uniform, 1/K: the paper's simplex), the ideal point `z` (default 0) and
    the nadir point `n`. As `mu -> 0` the weights go to the Tchebycheff
    subgradient (all weight on the worst term); as `mu` grows they approach
    `lambda` (with "none"). With "none" the weights sum to
    `sum_i lambda_i s_i <= max_i lambda_i` (1/K by default; Sum's sum to K).

    The nadir point of "log_nadir" is either given (`nadir_point`) or measured
    during a warm-up, as LibMTL does: for the first `warmup_epochs` epochs the
    model is trained on `sum_i log(L_i + eps)` (weights `1 / (L_i + eps)`),
    and `n` becomes the mean of each term over the training steps of the last
    warm-up epoch. The epochs are closed by `end_epoch()`, which
    `BalancedModel.fit` calls after every epoch (`needs_epoch_end` is True
    with a warm-up) and `keras_balance.callbacks.BalancerEpochEnd` calls for
    a Keras loss; an epoch without (finite) steps does not count. LibMTL's
    `STCH_warmup_epoch=e` (e epochs, then one more that records the nadir
    point, all on the log sum) is `warmup_epochs=e + 1` here. LibMTL's
    total is K times `S` with `lambda = 1`: `preference=[1.0] * K` gives its
    direction, with weights K times smaller.

    State (with a warm-up): `epochs_seen`, the current epoch's
    `epoch_loss_sum` and `epoch_steps`, and `nadir`, Keras variables that a
    checkpoint or `model.save` keeps. Without a warm-up the method is
    stateless.

    Numerics: the softmax subtracts its largest logit and the "log_nadir"
    weights are computed in log space, so terms from 1e-12 to 1e12 give
    finite weights; a nadir value of 0 (a warm-up on zero losses) is taken
    as the smallest normal float.

    Conventions:

    - With "log_nadir" the losses must be non-negative (their logarithms are
      taken): a negative loss is then treated like a non-finite one (under
      `nan_policy="skip"` the step changes no state and returns the previous
      weights; under `"raise"` it fails). With "none" any finite loss works.

    Reference: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang and Q. Zhang,
    "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
    ICML 2024 (Section 3, the definition; the multi-task experiments for
    the log-nadir form).

    Args:
        mu: > 0, default 1.0 (LibMTL's; the paper tries 0.01 to 1). The
            smoothing: smaller is closer to the maximum.
        preference: optional K non-negative numbers, not all 0: `lambda`.
            Default uniform 1/K. When given, it fixes the number of terms.
        ideal_point: optional K finite numbers `z` subtracted from the losses
            (normalization "none" only). Default 0.
        normalization: `"none"` (default, the paper's) or `"log_nadir"`
            (LibMTL's), see above.
        nadir_point: optional K positive numbers `n` ("log_nadir" only);
            without it, "log_nadir" needs `warmup_epochs >= 1`.
        warmup_epochs: int >= 0, default 0. Epochs trained on the log sum
            before STCH starts; the last one measures the nadir point
            ("log_nadir" without `nadir_point` only).
        epsilon: > 0, default 1e-20 (LibMTL's). Added inside the logarithms of
            "log_nadir" and of the warm-up.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = STCH(mu=0.5)
    >>> [round(float(w), 4) for w in balancer([1.0, 2.0])]  # (1/2) softmax([1, 2] / (2 * 0.5))
    [0.1345, 0.3655]
    >>> [round(float(w), 4) for w in STCH(mu=0.01)([1.0, 2.0])]  # nearly the max
    [0.0, 0.5]
    """

    summary = "Smooth Tchebycheff: a log-sum-exp of the (preference-weighted) terms, weights its gradient (Lin et al. 2024)."

    def __init__(
        self,
        mu=1.0,
        preference=None,
        ideal_point=None,
        normalization="none",
        nadir_point=None,
        warmup_epochs=0,
        epsilon=1e-20,
        num_terms=None,
        nan_policy="skip",
        name="stch",
        **kwargs,
    ):
        self.mu = check_positive("mu", mu)
        if normalization not in STCH_NORMALIZATIONS:
            raise ValueError(
                f"Argument `normalization` must be one of {STCH_NORMALIZATIONS}; received normalization={normalization!r}."
            )
        self.normalization = normalization
        if preference is not None:
            preference, num_terms = check_weight_vector("preference", preference, num_terms, allow_all_zero=False)
        self.preference = preference
        if ideal_point is not None:
            if normalization != "none":
                raise ValueError(
                    "Argument `ideal_point` is used with normalization='none' only; "
                    f"received ideal_point={ideal_point!r} with normalization={normalization!r}."
                )
            ideal_point, num_terms = _point("ideal_point", ideal_point, num_terms, positive=False)
        self.ideal_point = ideal_point
        if nadir_point is not None:
            if normalization != "log_nadir":
                raise ValueError(
                    "Argument `nadir_point` is used with normalization='log_nadir' only; "
                    f"received nadir_point={nadir_point!r} with normalization={normalization!r}."
                )
            nadir_point, num_terms = _point("nadir_point", nadir_point, num_terms, positive=True)
        self.nadir_point = nadir_point
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, np.integer)) or warmup_epochs < 0:
            raise ValueError(f"Argument `warmup_epochs` must be an int >= 0; received warmup_epochs={warmup_epochs!r}.")
        self.warmup_epochs = int(warmup_epochs)
        if self.warmup_epochs and (normalization != "log_nadir" or nadir_point is not None):
            raise ValueError(
                "Argument `warmup_epochs` measures the nadir point: it needs normalization='log_nadir' and no "
                f"`nadir_point`; received warmup_epochs={warmup_epochs!r} with normalization={normalization!r}"
                f"{' and a nadir_point' if nadir_point is not None else ''}."
            )
        if normalization == "log_nadir" and nadir_point is None and not self.warmup_epochs:
            raise ValueError(
                "Argument `warmup_epochs` must be >= 1 when normalization='log_nadir' has no `nadir_point` "
                f"(the warm-up measures it); received warmup_epochs={warmup_epochs!r}."
            )
        self.epsilon = check_range("epsilon", epsilon, 0.0, math.inf, low_open=True, high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)
        self.needs_epoch_end = self.warmup_epochs > 0
        self.needs_non_negative_losses = normalization == "log_nadir"

    # -- state ---------------------------------------------------------------

    def build_state(self, num_terms):
        if self.normalization != "log_nadir":
            return
        nadir = self.nadir_point if self.nadir_point is not None else [1.0] * num_terms
        self.nadir = self.add_weight(
            shape=(num_terms,), initializer=keras.initializers.Constant(nadir), trainable=False, name="nadir"
        )
        if self.warmup_epochs:
            def counter(name):
                return self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name=name)

            self.epochs_seen = counter("epochs_seen")
            self.epoch_loss_sum = self.add_weight(
                shape=(num_terms,), initializer="zeros", trainable=False, name="epoch_loss_sum"
            )
            self.epoch_steps = counter("epoch_steps")

    def initial_weights(self, num_terms):
        if self.normalization == "log_nadir":
            return [1.0] * num_terms
        preference = self.preference or [1.0 / num_terms] * num_terms
        return [p / num_terms for p in preference]  # lambda_i times the uniform softmax

    # -- formula -------------------------------------------------------------

    def _preference(self, losses):
        if self.preference is None:
            return tf.fill(tf.shape(losses), 1.0 / float(losses.shape[0]))
        return tf.constant(self.preference, losses.dtype)

    def compute_weights(self, losses):
        preference = self._preference(losses)
        if self.normalization == "none":
            shifted = losses if self.ideal_point is None else losses - tf.constant(self.ideal_point, losses.dtype)
            return preference * tf.nn.softmax(preference * shifted / self.mu)
        tiny = float(np.finfo(np.float32).tiny)
        nadir = tf.maximum(self.nadir.value, tiny)
        values = tf.math.log(losses / nadir + self.epsilon)
        log_factor = tf.nn.log_softmax(preference * values / self.mu) - tf.math.log(
            tf.maximum(losses + self.epsilon * nadir, tiny)
        )
        weights = preference * tf.exp(log_factor)
        if not self.warmup_epochs:
            return weights
        self.epoch_loss_sum.assign_add(losses)
        self.epoch_steps.assign_add(1)
        warmup = 1.0 / (losses + self.epsilon)
        return tf.where(self.epochs_seen.value < self.warmup_epochs, warmup, weights)

    def end_epoch(self):
        """Close an epoch of the warm-up; the last one sets the nadir point.

        Does nothing without a warm-up, before the state exists, or after an
        epoch without finite steps. Uses only TensorFlow ops.
        """
        if not self.warmup_epochs or not self.built:
            return
        with one_step_at_a_time(self):
            steps = self.epoch_steps.value
            had_steps = steps > 0
            mean = self.epoch_loss_sum.value / tf.cast(tf.maximum(steps, 1), self.epoch_loss_sum.dtype)
            closes_warmup = tf.logical_and(had_steps, tf.equal(self.epochs_seen.value, self.warmup_epochs - 1))
            self.nadir.assign(tf.where(closes_warmup, mean, self.nadir.value))
            self.epochs_seen.assign_add(tf.cast(had_steps, "int64"))
            self.epoch_loss_sum.assign(tf.zeros_like(self.epoch_loss_sum.value))
            self.epoch_steps.assign(tf.zeros_like(steps))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mu": self.mu,
                "preference": self.preference,
                "ideal_point": self.ideal_point,
                "normalization": self.normalization,
                "nadir_point": self.nadir_point,
                "warmup_epochs": self.warmup_epochs,
                "epsilon": self.epsilon,
            }
        )
        return config
