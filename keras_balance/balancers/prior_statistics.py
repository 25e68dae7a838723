"""Label statistics for `PriorLoss`: the loss of a model that knows only the labels.

`prior_loss(labels, kind)` streams a set of labels (an array, a tensor, or an
iterable of label batches such as a `tf.data.Dataset`) and returns the loss of
the best constant prediction: the class entropy for cross-entropy, the target
variance for squared error. `PriorLoss` divides each term by that value.
"""

import numpy as np
import tensorflow as tf

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
