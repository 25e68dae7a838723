"""Scaling balancers: each term divided by a reference value of itself, and random weights.

`InitialLoss`, `PriorLoss` and `RealTime` weight term i by the reciprocal of a
reference loss (its first value, the loss of a model that learned only the
label distribution, or its current value), which makes the weighted terms
dimensionless. `RLW` draws random weights at every step, the baseline that
every adaptive method should beat. `prior_loss` computes the reference of
`PriorLoss` from a set of labels.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.base import LossBalancer, check_range

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


def check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"Argument `seed` must be an int or None; received seed={seed!r}.")
    if not -(2**63) <= int(seed) < 2**63:
        raise ValueError(
            f"Argument `seed` must fit in a signed 64-bit integer; received seed={seed!r}."
        )
    return int(seed)


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

    The losses are expected to be non-negative. The magnitude |L_i(0)| is used
    in the denominator, so a negative initial loss still gets a positive
    weight; a weight is capped at the largest finite float (this only matters
    with `epsilon=0` and an initial loss of exactly 0).

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

    def __init__(
        self,
        n_initial=1,
        epsilon=1e-12,
        num_terms=None,
        nan_policy="skip",
        name="initial_loss",
        **kwargs,
    ):
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


PRIOR_KINDS = ("cross_entropy", "squared_error")


def prior_loss(labels, kind, one_hot=None):
    """The loss of a model that predicts only the label distribution.

    - `kind="cross_entropy"`: the entropy `-sum_c p_c log p_c` (natural log)
      of the class frequencies `p_c`, which is the cross-entropy of the best
      constant prediction. Classes that never occur contribute 0.
    - `kind="squared_error"`: `E||y - E[y]||^2`, the squared error of the best
      constant prediction `E[y]`: the per-dimension population variances
      (divided by N, not N - 1) summed over the trailing dimensions. Axis 0
      indexes the samples; a target of shape (N,) is one scalar per sample.
      `keras.losses.MeanSquaredError` averages over the last axis instead of
      summing, so its prior is this value divided by the size of the last axis.

    How classification labels are read (`one_hot=None`, the default, decides
    from the dtype):

    - integer or boolean labels of any shape are class ids, one per entry
      (`[0, 2, 1]`, or an (N, 1) column);
    - floating-point labels are rows of one-hot vectors or probabilities, the
      last axis indexing the classes (shape (N, C)); each row must be
      non-negative and sum to 1, and the frequencies are the mean row.

    Pass `one_hot=False` for class ids stored as floats (they must be whole
    numbers) and `one_hot=True` for integer one-hot rows.

    Args:
        labels: a NumPy array, a (nested) list or tuple of numbers, or a
            tensor, all converted to one array; or any other iterable of label
            batches, such as a `tf.data.Dataset` of label tensors or a
            generator, which is streamed batch by batch (class counts and sums
            are accumulated, so the dataset need not fit in memory). A dataset
            of `(features, labels)` pairs must be mapped to its labels first:
            `dataset.map(lambda x, y: y)`.
        kind: `"cross_entropy"` or `"squared_error"`.
        one_hot: `None` (infer from the dtype), `True` or `False`; only used
            with `kind="cross_entropy"`.

    Returns:
        The prior loss, a Python float (0 when every label is the same).

    Raises:
        ValueError: for an unknown `kind`, empty labels, non-finite values,
            negative or fractional class ids, rows that are not probability
            vectors, or batches of inconsistent shapes.

    Example:

    >>> round(prior_loss([0, 0, 0, 1], "cross_entropy"), 6)  # -(.75 ln .75 + .25 ln .25)
    0.562335
    >>> prior_loss([[1.0], [3.0]], "squared_error")          # variance of 1 and 3
    1.0
    """
    if kind not in PRIOR_KINDS:
        raise ValueError(f"Argument `kind` must be one of {PRIOR_KINDS}; received kind={kind!r}.")
    if one_hot not in (None, True, False):
        raise ValueError(
            f"Argument `one_hot` must be None, True or False; received one_hot={one_hot!r}."
        )
    if kind == "cross_entropy":
        accumulator = _ClassCounts(one_hot)
    else:
        accumulator = _TargetMoments()
    for batch in _batches(labels):
        accumulator.add(batch)
    return accumulator.result()


def _is_single_array(labels):
    return isinstance(labels, (np.ndarray, np.generic, list, tuple, int, float, bool)) or (
        tf.is_tensor(labels)
    )


def _batches(labels):
    """Yield the labels as NumPy arrays: one array, or one per batch."""
    if _is_single_array(labels):
        yield _to_numpy(labels)
        return
    try:
        iterator = iter(labels)
    except TypeError:
        raise TypeError(
            "Argument `labels` must be an array, a tensor, a list or an iterable of "
            f"label batches; received labels of type {type(labels).__name__}."
        ) from None
    for batch in iterator:
        if isinstance(batch, (tuple, dict)):
            raise ValueError(
                "Argument `labels` yielded a batch of type "
                f"{type(batch).__name__}; expected label arrays. For a dataset of "
                "(features, labels) pairs pass `dataset.map(lambda x, y: y)`."
            )
        yield _to_numpy(batch)


def _to_numpy(values):
    if tf.is_tensor(values):
        values = values.numpy()
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"Argument `labels` could not be read as an array: {error}") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise ValueError(
            f"Argument `labels` must hold numbers; received an array of dtype {array.dtype}."
        )
    return array


def _check_finite(array):
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError("Argument `labels` contains NaN or infinite values.")


class _ClassCounts:
    """Streaming class frequencies for the cross-entropy prior."""

    def __init__(self, one_hot):
        self.one_hot = one_hot
        self.counts = np.zeros(0, dtype="float64")

    def add(self, batch):
        if batch.size == 0:
            return
        _check_finite(batch)
        one_hot = self.one_hot
        if one_hot is None:
            one_hot = bool(np.issubdtype(batch.dtype, np.floating))
            if one_hot and batch.ndim < 2:
                raise ValueError(
                    "Argument `labels`: floating-point labels are read as one-hot or "
                    "probability rows of shape (N, C), but received shape "
                    f"{batch.shape}. Pass `one_hot=False` for class ids stored as floats, "
                    "or `one_hot=True` for a single row."
                )
        if one_hot:
            self._add_rows(batch.astype("float64"))
        else:
            self._add_ids(batch)

    def _add_rows(self, batch):
        if batch.ndim == 0:
            raise ValueError("Argument `labels`: one-hot rows need at least one axis.")
        rows = batch.reshape(-1, batch.shape[-1])
        if np.any(rows < 0) or not np.allclose(rows.sum(axis=1), 1.0, rtol=0.0, atol=1e-3):
            raise ValueError(
                "Argument `labels`: floating-point labels are read as one-hot or "
                "probability rows (last axis = classes), so every row must be "
                "non-negative and sum to 1. Pass `one_hot=False` for class ids stored "
                "as floats."
            )
        counts = rows.sum(axis=0)
        if self.counts.size and self.counts.size != counts.size:
            raise ValueError(
                f"Argument `labels`: batches have {self.counts.size} and {counts.size} "
                "classes on their last axis."
            )
        self.counts = counts if not self.counts.size else self.counts + counts

    def _add_ids(self, batch):
        ids = batch.reshape(-1)
        if np.issubdtype(ids.dtype, np.floating):
            if np.any(ids != np.round(ids)):
                raise ValueError(
                    "Argument `labels`: class ids must be whole numbers; received "
                    "fractional values."
                )
        ids = ids.astype("int64")
        if np.any(ids < 0):
            raise ValueError(
                f"Argument `labels`: class ids must be non-negative; received {ids.min()}."
            )
        counts = np.bincount(ids).astype("float64")
        size = max(counts.size, self.counts.size)
        self.counts = np.pad(self.counts, (0, size - self.counts.size)) + np.pad(
            counts, (0, size - counts.size)
        )

    def result(self):
        total = self.counts.sum()
        if total <= 0:
            raise ValueError("Argument `labels` is empty: there are no labels to count.")
        p = self.counts[self.counts > 0] / total
        return float(max(-np.sum(p * np.log(p)), 0.0))


class _TargetMoments:
    """Streaming per-dimension mean and sum of squared deviations (Chan et al.)."""

    def __init__(self):
        self.count = 0
        self.mean = None
        self.m2 = None

    def add(self, batch):
        if batch.size == 0:
            return
        _check_finite(batch)
        batch = batch.astype("float64")
        if batch.ndim == 0:
            batch = batch.reshape(1)
        n = batch.shape[0]
        mean = batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        if mean.shape != self.mean.shape:
            raise ValueError(
                "Argument `labels`: batches have targets of shapes "
                f"{self.mean.shape} and {mean.shape} after the sample axis."
            )
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.count = total

    def result(self):
        if not self.count:
            raise ValueError("Argument `labels` is empty: there are no targets.")
        return float(np.sum(self.m2) / self.count)


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

    The losses are expected to be non-negative. The magnitude |L_i| is used in
    the denominator, so a negative loss still gets a positive weight (its term
    equals -1 and is still minimized); a weight is capped at the largest
    finite float (this only matters with `epsilon=0` and a loss of exactly 0).

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


# -- RLW ------------------------------------------------------------------------------


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
            With `seed=None` a seed is drawn once when the state is created.
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
        seed = np.random.SeedSequence().entropy % (2**31) if self.seed is None else self.seed
        self.draw_seed = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(int(seed)),
            dtype="int64",
            trainable=False,
            name="draw_seed",
        )
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
