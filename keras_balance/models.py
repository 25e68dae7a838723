"""BalancedModel: a keras.Model whose training step balances K loss terms."""

import keras
import numpy as np
import tensorflow as tf

# Keras keeps these internal: the class of functional models, the trainer's
# own initializer, and its test for functional constructor arguments. They are
# needed to build functional BalancedModels without Keras rewriting the class
# hierarchy of BalancedModel itself (see `BalancedModel.__new__`).
from keras.src.models.functional import Functional, functional_from_config
from keras.src.models.model import functional_init_arguments
from keras.src.saving import object_registration
from keras.src.trainers.trainer import Trainer

from keras_balance import balancers as balancers_lib

_FUNCTIONAL_VARIANTS = {}


def _builds_a_graph(args, kwargs):
    """Are these constructor arguments `(inputs, outputs)` of a functional model?"""
    if not functional_init_arguments(args, kwargs):
        return False
    inputs = args[0] if args else kwargs.get("inputs")
    flat = keras.tree.flatten(inputs)
    return bool(flat) and all(isinstance(t, keras.KerasTensor) for t in flat)


def _functional_variant(cls):
    """`cls` with `Functional` mixed in, created once per class."""
    variant = _FUNCTIONAL_VARIANTS.get(cls)
    if variant is None:
        variant = type(cls.__name__, (cls, Functional), {"__module__": cls.__module__})
        variant.__qualname__ = cls.__qualname__
        _FUNCTIONAL_VARIANTS[cls] = variant
    # Serialize the variant under the name its class is registered with, so
    # `keras.models.load_model` rebuilds it through `cls.from_config`.
    registered = object_registration.get_registered_name(cls)
    if registered != cls.__name__:
        object_registration.GLOBAL_CUSTOM_NAMES[variant] = registered
    return variant


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


def _as_term_vector(terms, expected, where):
    """Stack the K scalar terms into a float32 (K,) tensor, checking K."""
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


@keras.saving.register_keras_serializable(package="keras_balance")
class BalancedModel(keras.Model):
    """A `keras.Model` whose `train_step` balances several loss terms.

    Each training step runs the forward pass, computes the K loss terms with
    `compute_loss_terms`, asks the balancer how to combine them, applies the
    optimizer, and reports every term and every weight as a metric: a term
    named `L_f` appears as `L_f` in `History` and on the progress bar, its
    weight as `w_L_f`, and the weighted total as `loss`.

    A loss-level balancer (`"sum"`, `"relobralo"`, ...) turns the K loss values
    into K weights and the model is trained on `sum_i w_i L_i`. A
    gradient-level balancer receives the K x P Jacobian of the terms with
    respect to the trainable variables (one `tape.gradient` per term) and
    returns the update direction.

    Works with the functional API (`BalancedModel(inputs, outputs, ...)`) and
    with subclassing. Subclasses define their terms by overriding
    `compute_loss_terms`; `term_names` fixes K and names the metrics.

    Args:
        balancer: a balancer name (`"relobralo"`), config dict, class or
            instance. Default `"sum"`. Can be replaced in `compile`.
        term_names: the names of the K terms, e.g. `("L_f", "L_b")`. Can also
            be given in `compile`, or as a class attribute of a subclass.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    class TwoTerms(keras_balance.BalancedModel):
        term_names = ("fit", "smooth")

        def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
            fit = keras.ops.mean((y - y_pred) ** 2)
            smooth = keras.ops.mean(keras.ops.diff(y_pred, axis=0) ** 2)
            return [fit, smooth]

    model = TwoTerms(inputs, outputs, balancer="relobralo")
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=10)   # logs loss, fit, smooth, w_fit, w_smooth
    ```
    """

    term_names = None

    def __new__(cls, *args, **kwargs):
        # Keras turns a Model subclass called with (inputs, outputs) into a
        # Functional subclass by rewriting the class's bases in place, which
        # would break every later subclassed (non-functional) use of the same
        # class. Build functional models from a separate variant class instead.
        if _builds_a_graph(args, kwargs) and not issubclass(cls, Functional):
            cls = _functional_variant(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, balancer="sum", term_names=None, **kwargs):
        if isinstance(self, Functional):
            Trainer.__init__(self)
            Functional.__init__(self, *args, **kwargs)
        else:
            super().__init__(*args, **kwargs)
        self._attach(balancer, term_names)

    # -- configuration -------------------------------------------------------

    def _attach(self, balancer, term_names):
        """Set the balancer and term names and (re)create the term metrics."""
        if term_names is not None:
            term_names = tuple(str(name) for name in term_names)
            if not term_names or len(set(term_names)) != len(term_names):
                raise ValueError(
                    "Argument `term_names` must be a non-empty sequence of distinct "
                    f"names; received term_names={term_names!r}."
                )
        elif self.term_names is not None:
            term_names = tuple(self.term_names)
        balancer = balancers_lib.get(balancer)
        if balancer.kind not in (balancers_lib.LOSS_LEVEL, balancers_lib.GRADIENT_LEVEL):
            raise TypeError(f"Argument `balancer` has an unknown kind {balancer.kind!r}.")
        # Keras locks the state of a built (e.g. functional) model; the balancer
        # and the term metrics are state the model owns, so add them explicitly.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.balancer = balancer
            self.term_names = term_names
            if term_names is not None:
                balancer.build_for(len(term_names))
                self.term_metrics = [keras.metrics.Mean(name=name) for name in term_names]
                self.weight_metrics = [LatestValue(name=f"w_{name}") for name in term_names]
        finally:
            if locked:
                self._tracker.lock()

    def compile(self, optimizer="rmsprop", loss=None, balancer=None, term_names=None, **kwargs):
        """Configure training. Accepts Keras' `compile` arguments plus:

        Args:
            loss: optional, one loss per output, as Keras takes them: a dict
                `{output_name: loss}`, a list with one entry per output (None
                for outputs without a loss), or a single loss applied to every
                output. Each becomes one term, named after its output (e.g.
                `depth`, weight `w_depth`), computed with the batch's
                `sample_weight`. Without `loss`, the terms come from
                `compute_loss_terms`, which a subclass overrides.
            balancer: replaces the balancer given to the constructor.
            term_names: replaces the term names.
        """
        if loss is not None:
            self._output_losses = self._resolve_output_losses(loss)
            if term_names is None:
                term_names = [name for name, _ in self._output_losses]
        if balancer is not None or term_names is not None:
            self._attach(
                self.balancer if balancer is None else balancer,
                self.term_names if term_names is None else term_names,
            )
        if self.term_names is None:
            raise ValueError(
                "BalancedModel needs the names of its loss terms: pass `term_names` to the "
                "constructor or to `compile`, or set `term_names` on the subclass."
            )
        super().compile(optimizer=optimizer, **kwargs)
        if loss is not None:
            # Keep the per-output losses in the compile config (for load_model).
            self._compile_config.config["loss"] = loss

    def _output_keys(self):
        """The names under which the model's outputs appear in `y` and `y_pred`."""
        struct = getattr(self, "_outputs_struct", None)
        if isinstance(struct, dict):
            return list(struct)
        names = getattr(self, "output_names", None)
        return list(names) if names else None

    def _resolve_output_losses(self, loss):
        keys = self._output_keys()
        if keys is None:
            raise ValueError(
                "Argument `loss` needs a model with known outputs (a functional model); "
                "a subclassed BalancedModel defines its terms in `compute_loss_terms`."
            )
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
        return [(key, _as_loss(item, f"output {key!r}")) for key, item in pairs]

    def _by_output(self, values, what):
        keys = self._output_keys()
        if isinstance(values, dict):
            missing = [key for key, _ in self._output_losses if key not in values]
            if missing:
                raise ValueError(f"`{what}` has no entry for the outputs {missing}; received keys {sorted(values)}.")
            return values
        if isinstance(values, (list, tuple)):
            if len(values) != len(keys):
                raise ValueError(
                    f"`{what}` must have one entry per output ({len(keys)}: {keys}); received {len(values)}."
                )
            return dict(zip(keys, values))
        return {key: values for key in keys}

    def _output_loss_terms(self, y, y_pred, sample_weight):
        """One term per output loss given to `compile`."""
        targets = self._by_output(y, "y")
        preds = self._by_output(y_pred, "y_pred")
        weights = self._by_output(sample_weight, "sample_weight") if sample_weight is not None else {}
        return [
            loss(targets[key], preds[key], sample_weight=weights.get(key))
            for key, loss in self._output_losses
        ]

    def compile_from_config(self, config):
        """Recompile from `get_compile_config()` (used by `keras.models.load_model`).

        The balancer and term names are part of the model's own config; this
        restores the optimizer and the other `compile` arguments.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; calls a per-epoch balancer's `end_epoch()` after each epoch."""
        if getattr(self.balancer, "needs_epoch_end", False):
            from keras_balance.callbacks import BalancerEpochEnd

            callbacks = list(callbacks or [])
            if not any(isinstance(c, BalancerEpochEnd) for c in callbacks):
                callbacks.append(BalancerEpochEnd(self))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    @property
    def num_terms(self):
        return None if self.term_names is None else len(self.term_names)

    # -- the terms -----------------------------------------------------------

    def compute_loss_terms(self, x, y=None, y_pred=None, sample_weight=None, training=True):
        """Return the K scalar loss terms of a batch, in the order of `term_names`.

        With losses given to `compile(loss=...)`, the terms are those losses,
        one per output. Otherwise override this in a subclass: it receives the
        batch (`x`, `y`, `sample_weight`) and the model's prediction
        `y_pred = self(x)`, and returns a list of K scalar tensors (or a (K,)
        tensor). Everything in it must be differentiable with respect to the
        model's variables.
        """
        if getattr(self, "_output_losses", None):
            return self._output_loss_terms(y, y_pred, sample_weight)
        raise TypeError(
            f"{type(self).__name__} has no loss terms: pass one loss per output to "
            "`compile(loss=...)`, or override "
            "`compute_loss_terms(self, x, y, y_pred, sample_weight, training)` to return "
            f"the {self.num_terms or 'K'} scalar terms named by `term_names`."
        )

    def _terms(self, x, y, sample_weight, training):
        y_pred = self(x, training=training)
        terms = self.compute_loss_terms(x, y, y_pred, sample_weight, training=training)
        terms = _as_term_vector(terms, self.num_terms, f"{type(self).__name__}.compute_loss_terms")
        return y_pred, terms

    # -- steps ---------------------------------------------------------------

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        gradient_level = self.balancer.kind == balancers_lib.GRADIENT_LEVEL
        with tf.GradientTape(persistent=gradient_level) as tape:
            y_pred, terms = self._terms(x, y, sample_weight, training=True)
            # Read after the forward pass, which builds a subclassed model's layers.
            variables = self.trainable_variables
            regularization = self._regularization_loss()
            if gradient_level:
                term_list = tf.unstack(terms)  # sliced under the tape
            else:
                total, weights = self.balancer.combine(terms)
                objective = self.optimizer.scale_loss(total + regularization)
        if gradient_level:
            grads, weights = self._aggregate_gradients(tape, term_list, regularization, variables)
            total = tf.reduce_sum(weights * terms)
        else:
            grads = tape.gradient(objective, variables)
        del tape
        self.optimizer.apply(grads, variables)
        return self._record(total + regularization, terms, weights, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, terms = self._terms(x, y, sample_weight, training=False)
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL:
            weights = tf.ones_like(terms)
            total = tf.reduce_sum(terms)
        else:
            total, weights = self.balancer.evaluate(terms)
        total = total + self._regularization_loss()
        return self._record(total, terms, weights, y, y_pred, sample_weight)

    def _regularization_loss(self):
        if not self.losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(loss, "float32") for loss in self.losses])

    def _aggregate_gradients(self, tape, terms, regularization, variables):
        """Per-term gradients -> K x P Jacobian -> the balancer's direction."""
        rows = []
        for term in terms:
            grads = tape.gradient(term, variables)
            grads = [tf.zeros(v.shape, "float32") if g is None else g for g, v in zip(grads, variables)]
            rows.append(tf.concat([tf.reshape(tf.cast(g, "float32"), [-1]) for g in grads], 0))
        jacobian = tf.stack(rows)
        direction = self.balancer.aggregate(jacobian)
        weights = self.balancer.term_weights.value
        grads, offset = [], 0
        for variable in variables:
            size = int(np.prod(variable.shape))
            grads.append(tf.reshape(direction[offset : offset + size], variable.shape))
            offset += size
        if self.losses:
            extra = tape.gradient(regularization, variables)
            grads = [g if e is None else g + tf.cast(e, g.dtype) for g, e in zip(grads, extra)]
        return [tf.cast(g, v.dtype) for g, v in zip(grads, variables)], weights

    def _record(self, total, terms, weights, y, y_pred, sample_weight):
        self._loss_tracker.update_state(total)
        for i, metric in enumerate(self.term_metrics):
            metric.update_state(terms[i])
        for i, metric in enumerate(self.weight_metrics):
            metric.update_state(weights[i])
        if self._compile_metrics is not None and y is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)
        return self.get_metrics_result()

    # -- serialization -------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config["balancer"] = balancers_lib.serialize(self.balancer)
        config["term_names"] = None if self.term_names is None else list(self.term_names)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        balancer = balancers_lib.get(config.pop("balancer", "sum"))
        term_names = config.pop("term_names", None)
        if all(key in config for key in ("layers", "input_layers", "output_layers")):
            model = functional_from_config(cls, config, custom_objects=custom_objects)
        else:
            model = cls(**config)
        model._attach(balancer, term_names)
        return model
