"""Loss terms: the K scalars a `BalancedModel` balances, and where they come from.

`as_term_vector` checks and stacks what `compute_loss_terms` returns.
`OutputLosses` makes one term per model output from the losses given to
`compile(loss=...)`, the way Keras takes per-output losses.
"""

import keras
import tensorflow as tf


def as_term_vector(terms, expected, where):
    """Stack the K scalar terms into a float32 (K,) tensor, checking K.

    Args:
        terms: a list or tuple of K scalar tensors, or a (K,) tensor.
        expected: K, or None when it is not known yet.
        where: what returned the terms, for the error messages.
    """
    if isinstance(terms, dict):
        raise TypeError(f"{where} must return a list or tensor of K scalar losses; received a dict.")
    if isinstance(terms, (list, tuple)):
        count = len(terms)
        if expected is not None and count != expected:
            raise ValueError(
                f"{where} returned {count} loss terms; expected {expected} "
                f"(one per name in `term_names`)."
            )
        for i, term in enumerate(terms):
            shape = tf.convert_to_tensor(term).shape
            if shape.rank is not None and shape.num_elements() != 1:
                raise ValueError(
                    f"{where} returned term {i} of shape {tuple(shape)}; each term must be a "
                    "scalar (reduce per-sample values, e.g. with `keras.ops.mean`)."
                )
        return tf.stack([tf.reshape(tf.cast(t, "float32"), ()) for t in terms])
    terms = tf.cast(tf.convert_to_tensor(terms), "float32")
    if terms.shape.rank != 1 or (expected is not None and terms.shape[0] != expected):
        raise ValueError(
            f"{where} returned loss terms of shape {tuple(terms.shape)}; expected ({expected},) "
            f"(one scalar per name in `term_names`)."
        )
    return terms


def term_list(raw, terms):
    """The terms as K float32 scalars, each differentiable on its own graph.

    Slicing the stacked vector would connect every term to every variable
    (with zero gradients), hiding which parameters a term really touches, so
    the terms are taken as returned when they came as a list.
    """
    if isinstance(raw, (list, tuple)):
        return [tf.reshape(tf.cast(t, "float32"), ()) for t in raw]
    return tf.unstack(terms)


def _metric_name(metric):
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", None)


def check_term_names(term_names, *metric_groups):
    """Each term, its weight (`w_<term>`), `loss` and `skipped_steps` must have a History key of its own."""
    taken = {"loss": "the weighted total", "skipped_steps": "the count of skipped steps"}
    taken.update({f"w_{name}": f"the weight of term {name!r}" for name in term_names})
    for group in metric_groups:
        for metric in keras.tree.flatten(group) if group is not None else []:
            name = _metric_name(metric)
            if name is not None:
                taken.setdefault(str(name), f"the compiled metric {name!r}")
    clashes = [f"{name!r} (also {taken[name]})" for name in term_names if name in taken]
    if clashes:
        raise ValueError(
            f"Argument `term_names` must not reuse a name that History already shows: {', '.join(clashes)}; "
            f"received term_names={tuple(term_names)!r}. Rename the term."
        )


def output_keys(model):
    """The names under which a model's outputs appear in `y` and `y_pred` (None if unknown)."""
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict):
        return list(struct)
    names = getattr(model, "output_names", None)
    return list(names) if names else None


class _PerSampleLoss(keras.losses.Loss):
    """A Keras `Loss` around a per-sample loss function (sample weights, reduction)."""

    def __init__(self, fn, name=None):
        super().__init__(name=name or getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _as_loss(identifier, where):
    loss = keras.losses.get(identifier)
    if loss is None:
        raise ValueError(f"Argument `loss` has no usable loss for {where}; received {identifier!r}.")
    return loss if isinstance(loss, keras.losses.Loss) else _PerSampleLoss(loss)


class OutputLosses:
    """One loss term per model output, from the `loss` argument of `compile`.

    Args:
        loss: as Keras takes it: a dict `{output_name: loss}`, a list with one
            entry per output (None for outputs without a loss), or a single
            loss applied to every output.
        keys: the model's output names (`output_keys(model)`).
    """

    def __init__(self, loss, keys):
        if keys is None:
            raise ValueError(
                "Argument `loss` needs a model with known outputs (a functional model); "
                "a subclassed BalancedModel defines its terms in `compute_loss_terms`."
            )
        self.keys = list(keys)
        if isinstance(loss, dict):
            unknown = sorted(set(loss) - set(keys))
            if unknown:
                raise ValueError(
                    f"Argument `loss` names outputs {unknown} that the model does not have; "
                    f"its outputs are {keys}."
                )
            pairs = [(key, loss[key]) for key in keys if loss.get(key) is not None]
        elif isinstance(loss, (list, tuple)):
            if len(loss) != len(keys):
                raise ValueError(
                    f"Argument `loss` must have one entry per output ({len(keys)}: {keys}); "
                    f"received {len(loss)} entries."
                )
            pairs = [(key, item) for key, item in zip(keys, loss) if item is not None]
        else:
            pairs = [(key, loss) for key in keys]
        if not pairs:
            raise ValueError(f"Argument `loss` gives no loss for any output; received loss={loss!r}.")
        self.pairs = [(key, _as_loss(item, f"output {key!r}")) for key, item in pairs]

    @property
    def names(self):
        """The term names: the outputs that have a loss, in the model's order."""
        return [key for key, _ in self.pairs]

    def _by_output(self, values, what):
        if isinstance(values, dict):
            missing = [key for key, _ in self.pairs if key not in values]
            if missing:
                raise ValueError(f"`{what}` has no entry for the outputs {missing}; received keys {sorted(values)}.")
            return values
        if isinstance(values, (list, tuple)):
            if len(values) != len(self.keys):
                raise ValueError(
                    f"`{what}` must have one entry per output ({len(self.keys)}: {self.keys}); "
                    f"received {len(values)}."
                )
            return dict(zip(self.keys, values))
        return {key: values for key in self.keys}

    def __call__(self, y, y_pred, sample_weight=None):
        """The K terms of a batch: each output's loss with the batch's sample weights."""
        targets = self._by_output(y, "y")
        preds = self._by_output(y_pred, "y_pred")
        weights = self._by_output(sample_weight, "sample_weight") if sample_weight is not None else {}
        return [loss(targets[key], preds[key], sample_weight=weights.get(key)) for key, loss in self.pairs]


@keras.saving.register_keras_serializable(package="keras_balance")
class LatestValue(keras.metrics.Metric):
    """A metric that reports the last value it was given (e.g. a loss weight)."""

    def __init__(self, name="latest_value", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        # "mean": under tf.distribute every replica holds the same value.
        self.value = self.add_variable(shape=(), initializer="zeros", aggregation="mean", name="value")

    def update_state(self, value):
        self.value.assign(tf.cast(value, self.dtype))

    def result(self):
        return keras.ops.convert_to_tensor(self.value)

    def reset_state(self):
        # The latest value stays meaningful across epochs; keep it.
        pass


__all__ = ["LatestValue", "OutputLosses", "as_term_vector", "check_term_names", "output_keys", "term_list"]
