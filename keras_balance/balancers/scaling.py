"""Scaling balancers: each term divided by a reference value of itself.

`InitialLoss`, `PriorLoss` and `RealTime` weight term i by the reciprocal of a
reference loss (its first value, the loss of a model that learned only the
label distribution, or its current value), which makes the weighted terms
dimensionless. `prior_loss` (in `prior_statistics`) computes the reference
of `PriorLoss` from a set of labels.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import LossBalancer

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_epsilon(epsilon):
    return check_range("epsilon", epsilon, 0.0, math.inf, high_open=True)


def reciprocal(values, epsilon):
    """`1 / (|values| + epsilon)`, capped at the largest finite float.

    The magnitude keeps the weight of a negative loss positive (so its term
    is still minimized); for non-negative losses it is the plain reciprocal.
    The cap only matters with `epsilon=0` and a loss of exactly 0.
    """
    top = np.finfo(values.dtype.as_numpy_dtype).max
    return tf.minimum(1.0 / (tf.abs(values) + epsilon), top)


# -- InitialLoss ----------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_balance")
class InitialLoss(LossBalancer):
    """Initial-loss weighting: each term divided by its first value.

        lambda_i = 1 / (L_i(0) + eps)

    Every weighted term `lambda_i L_i(t) = L_i(t) / L_i(0)` starts at 1 and
    measures the progress of term i relative to where it started, so the
    total does not depend on the units or the scale of any term: multiplying
    term i by a constant c divides its weight by c and leaves
    `lambda_i L_i` (and the gradient of the total) unchanged.

    With `n_initial > 1`, `L_i(0)` is estimated as the mean of the first
    `n_initial` values. During those steps the weights use the running mean of
    the values seen so far (step 0 gives `1 / (L_i(0) + eps)`, step 1
    `1 / ((L_i(0) + L_i(1)) / 2 + eps)`, ...); from step `n_initial` on they are
    frozen at the mean of the first `n_initial` values.

    Conventions:

    - Negative losses: the magnitude |L_i(0)| is used in the denominator, so
      a negative initial loss still gets a positive weight and its term is
      still minimized (`lambda_i = 1 / (|L_i(0)| + eps)`); the step is not
      skipped. A weight is capped at the largest finite float (this only
      matters with `epsilon=0` and an initial loss of exactly 0).

    Reference: there is no single canonical paper. The rule (make each loss
    dimensionless by its initial value, estimated from a few batches) is
    discussed by B. Xiao, "Strategies for balancing multiple loss functions in
    deep learning" (2024) and by J. Su, "Multi-task learning notes (1): in the
    name of the loss" (kexue.fm, 2022).

    Args:
        n_initial: int >= 1. Number of first steps whose mean estimates L(0).
        epsilon: >= 0. Guard added to the denominator; a term whose initial
            loss is 0 gets the finite weight `1 / epsilon`.
        num_terms, nan_policy, name: see `Balancer`. Under the "skip" policy a
            non-finite step is not counted among the `n_initial` steps.

    Example:

    >>> balancer = InitialLoss()
    >>> balancer([2.0, 0.5]).numpy().tolist()   # step 0: 1 / L(0)
    [0.5, 2.0]
    >>> balancer([1.0, 0.25]).numpy().tolist()  # frozen afterwards
    [0.5, 2.0]
    """

    summary = "Each term divided by its initial value L_i(0) (mean of the first n steps)."

    def __init__(self, n_initial=1, epsilon=1e-12, num_terms=None, nan_policy="skip", name="initial_loss", **kwargs):
        if isinstance(n_initial, bool) or not isinstance(n_initial, (int, np.integer)):
            raise TypeError(
                "Argument `n_initial` must be an int >= 1; "
                f"received n_initial={n_initial!r} (of type {type(n_initial).__name__})."
            )
        if n_initial < 1:
            raise ValueError(
                f"Argument `n_initial` must be an int >= 1; received n_initial={n_initial!r}."
            )
        self.n_initial = int(n_initial)
        self.epsilon = check_epsilon(epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="step"
        )
        # The running mean of the first values; frozen after n_initial steps.
        self.initial_losses = self.add_weight(
            shape=(num_terms,), initializer="zeros", trainable=False, name="initial_losses"
        )

    def compute_weights(self, losses):
        step = self.step.value
        seen = tf.cast(step, losses.dtype)
        running_mean = (self.initial_losses.value * seen + losses) / (seen + 1.0)
        warming_up = step < self.n_initial
        initial = tf.where(warming_up, running_mean, self.initial_losses.value)
        self.initial_losses.assign(initial)
        self.step.assign_add(1)
        return reciprocal(initial, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update({"n_initial": self.n_initial, "epsilon": self.epsilon})
        return config


# -- PriorLoss ------------------------------------------------------------------------


def _check_positive_sequence(name, values):
    try:
        array = np.asarray(values, dtype="float64")
    except (TypeError, ValueError):
        raise TypeError(
            f"Argument `{name}` must be a sequence of numbers; received {name}={values!r}."
        ) from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"Argument `{name}` must be a non-empty 1-D sequence of numbers; "
            f"received {name}={values!r}."
        )
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(
            f"Argument `{name}` must contain finite, positive numbers; received {name}={values!r}."
        )
    return [float(v) for v in array]


@keras.saving.register_keras_serializable(package="keras_balance")
class PriorLoss(LossBalancer):
    """Prior-loss weighting: each term divided by the loss of a label-only model.

        lambda_i = 1 / (L_i^prior + eps)

    `L_i^prior` is what term i would be for a model that learned nothing but
    the distribution of its labels: the entropy `-sum_c p_c log p_c` of the
    class frequencies for a classification term with cross-entropy, the
    variance `E||y - E[y]||^2` of the targets for a regression term with
    squared error. `prior_loss(labels, kind)` computes both from a dataset of
    labels. The weights are constants fixed at construction.

    Reference: there is no single canonical paper. The rule is discussed, as
    an improvement on initial-loss weighting, by B. Xiao, "Strategies for
    balancing multiple loss functions in deep learning" (2024) and by J. Su,
    "Multi-task learning notes (1): in the name of the loss" (kexue.fm, 2022).

    Args:
        prior_losses: a sequence of K finite, positive numbers, the prior
            loss of each term. It fixes the number of terms.
        epsilon: >= 0. Guard added to the denominator.
        num_terms: optional; must equal `len(prior_losses)`.
        nan_policy, name: see `Balancer`.

    Example:

    >>> labels = [0, 0, 1, 1]                      # two balanced classes
    >>> round(prior_loss(labels, "cross_entropy"), 6)   # log 2
    0.693147
    >>> balancer = PriorLoss([prior_loss(labels, "cross_entropy"), 4.0])
    >>> [round(w, 4) for w in balancer([0.7, 3.0]).numpy().tolist()]
    [1.4427, 0.25]
    """

    summary = "Each term divided by the loss of a label-only model (class entropy, target variance)."

    def __init__(
        self,
        prior_losses,
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="prior_loss",
        **kwargs,
    ):
        self.prior_losses = _check_positive_sequence("prior_losses", prior_losses)
        self.epsilon = check_epsilon(epsilon)
        count = len(self.prior_losses)
        if num_terms is not None and num_terms != count:
            raise ValueError(
                f"Argument `num_terms`={num_terms!r} disagrees with the "
                f"{count} entries of `prior_losses`."
            )
        super().__init__(num_terms=count, nan_policy=nan_policy, name=name, **kwargs)

    @classmethod
    def required_arguments(cls, num_terms):
        return {"prior_losses": [1.0] * num_terms}

    def _prior_weights(self):
        priors = np.asarray(self.prior_losses, dtype="float64")
        return np.minimum(1.0 / (priors + self.epsilon), _FLOAT32_MAX).astype("float32")

    def initial_weights(self, num_terms):
        return [float(w) for w in self._prior_weights()]

    def compute_weights(self, losses):
        return tf.constant(self._prior_weights(), dtype=losses.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"prior_losses": list(self.prior_losses), "epsilon": self.epsilon})
        return config


# -- RealTime -------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_balance")
class RealTime(LossBalancer):
    """Real-time weighting: each term divided by its own current value.

        lambda_i(t) = 1 / (stopgrad(L_i(t)) + eps)

    Every weighted term `lambda_i L_i` equals 1 in value, and its gradient is
    `grad L_i / L_i = grad log L_i`: the total has the gradient of
    `sum_i log L_i`, whose direction is that of the geometric mean of the
    terms. Multiplying a term by a constant changes neither the weighted terms
    nor the gradient, so the method is scale invariant. The weights are held
    constant for the gradient (`combine` applies the stop-gradient).

    Conventions:

    - Negative losses: the magnitude |L_i| is used in the denominator,
      `lambda_i = 1 / (|L_i| + eps)`, so a negative loss still gets a positive
      weight (its weighted term equals -1 and is still minimized); the step
      is not skipped. A weight is capped at the largest finite float (this
      only matters with `epsilon=0` and a loss of exactly 0).

    Reference: there is no single canonical paper. The rule is discussed by
    B. Xiao, "Strategies for balancing multiple loss functions in deep
    learning" (2024) and by J. Su, "Multi-task learning notes (1): in the name
    of the loss" (kexue.fm, 2022).

    Args:
        epsilon: >= 0. Guard added to the denominator; a term of value 0 gets
            the finite weight `1 / epsilon`. Terms far above epsilon are
            weighted `1 / L_i`; a term comparable to epsilon is weighted less.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = RealTime()
    >>> balancer([2.0, 0.5]).numpy().tolist()
    [0.5, 2.0]
    >>> total, weights = balancer.combine([4.0, 0.25])
    >>> round(float(total), 6)                 # every weighted term is 1
    2.0
    """

    summary = "Each term divided by its current value (gradient of sum log L_i)."

    def __init__(self, epsilon=1e-12, num_terms=None, nan_policy="skip", name="real_time", **kwargs):
        self.epsilon = check_epsilon(epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def compute_weights(self, losses):
        return reciprocal(losses, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config
