"""BalancedModel: a keras.Model whose training step balances K loss terms."""

import functools
import weakref

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
from keras_balance import distribute

_FUNCTIONAL_VARIANTS = {}

#: How `BalancedModel` obtains the per-term gradients of a gradient-level balancer.
JACOBIAN_MODES = ("loop", "vectorized", "features")


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
    jacobian_mode = "loop"
    feature_layer = None

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
        owner = balancer.__dict__.get("_owner")
        owner = owner() if owner is not None else None
        if owner is not None and owner is not self:
            # Two models would advance one state (initial losses, running
            # weights, step counts) with each other's losses.
            raise ValueError(
                f"Argument `balancer`: the balancer {balancer.name!r} already balances the model "
                f"{owner.name!r}; a balancer holds the state of one training run. Give this model its "
                "own: the balancer's name (`balancer=\"relobralo\"`) or a copy, "
                "`type(balancer).from_config(balancer.get_config())`."
            )
        balancer.__dict__["_owner"] = weakref.ref(self)
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

    def compile(self, optimizer="rmsprop", loss=None, balancer=None, term_names=None,
                jacobian_mode=None, feature_layer=None, **kwargs):
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
            jacobian_mode: how a gradient-level balancer gets the per-term
                gradients. `"loop"` (default): one `tape.gradient` per term
                on a persistent tape, the exact K x P Jacobian.
                `"vectorized"`: `tape.jacobian` with pfor, the same Jacobian.
                `"features"`: gradients with respect to a shared
                representation (LibMTL's `rep_grad`, TorchJD's features):
                the balancer's weights come from the K x (N*F) Jacobian of
                the representation, then one backward pass through the trunk
                carries the combined gradient. Cheaper, but the method then
                balances representation gradients, not parameter gradients
                (for MGDA this is the paper's MGDA-UB).
            feature_layer: with `jacobian_mode="features"`, the name of the
                layer whose output is the shared representation (a
                functional model). None: the model's outputs (for a PINN,
                the field and its derivatives at every point).
        """
        if jacobian_mode is not None:
            if jacobian_mode not in JACOBIAN_MODES:
                raise ValueError(
                    f"Argument `jacobian_mode` must be one of {JACOBIAN_MODES}; "
                    f"received jacobian_mode={jacobian_mode!r}."
                )
            self.__dict__["jacobian_mode"] = jacobian_mode
        if feature_layer is not None:
            if not isinstance(feature_layer, str):
                raise TypeError(
                    f"Argument `feature_layer` must be a layer name; received feature_layer={feature_layer!r}."
                )
            self.get_layer(feature_layer)  # raises a clear error for an unknown name
            self.__dict__["feature_layer"] = feature_layer
            self.__dict__.pop("_features_and_outputs", None)
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
        self._compile_config.config["jacobian_mode"] = self.jacobian_mode
        self._compile_config.config["feature_layer"] = self.feature_layer

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) reduces the first batch of a distributed dataset with
        # one `strategy.reduce` over the whole (x, y) structure, which
        # MultiWorkerMirroredStrategy rejects (it reduces single values only).
        # Reduce each tensor on its own there; every other case is Keras'.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None)
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`; calls a per-epoch balancer's `end_epoch()` after each epoch."""
        if getattr(self.balancer, "needs_epoch_end", False):
            from keras_balance.callbacks import BalancerEpochEnd

            callbacks = list(callbacks or [])
            if not any(isinstance(c, BalancerEpochEnd) for c in callbacks):
                # First, so that checkpoints written at the epoch's end
                # (BackupAndRestore, ModelCheckpoint) hold the updated state.
                callbacks.insert(0, BalancerEpochEnd(self))
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

    def forward_terms(self, x, y=None, sample_weight=None, training=True):
        """Return `(y_pred, terms)`: the prediction and the K loss terms of a batch.

        The default runs `y_pred = self(x)` and `compute_loss_terms`. A subclass
        may override it to compute the terms from intermediate tensors rather
        than from `y_pred` (a PINN takes them from its separate derivative
        fields), so that each term's gradient follows only the graph it
        depends on.
        """
        y_pred = self(x, training=training)
        return y_pred, self.compute_loss_terms(x, y, y_pred, sample_weight, training=training)

    def _terms(self, x, y, sample_weight, training):
        y_pred, terms = self.forward_terms(x, y, sample_weight, training=training)
        terms = _as_term_vector(terms, self.num_terms, f"{type(self).__name__}.compute_loss_terms")
        return y_pred, terms

    # -- steps ---------------------------------------------------------------

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL:
            return self._gradient_level_step(x, y, sample_weight)
        with tf.GradientTape() as tape:
            y_pred, terms = self._terms(x, y, sample_weight, training=True)
            # Under tf.distribute: the values of the global batch (the same
            # weights on every replica), the gradients of this replica's terms.
            terms = distribute.globalize(terms)
            # Read after the forward pass, which builds a subclassed model's layers.
            variables = self.trainable_variables
            regularization = self._regularization_loss()
            total, weights = self.balancer.combine(terms)
            # The optimizer sums the replicas' gradients: each holds 1/replicas.
            objective = self.optimizer.scale_loss(distribute.scale(total + regularization))
        grads = tape.gradient(objective, variables)
        self._apply_if_finite(grads, variables, tf.stop_gradient(terms))
        return self._record(total + regularization, tf.stop_gradient(terms), weights, y, y_pred, sample_weight)

    def _apply_if_finite(self, grads, variables, terms):
        """Apply the update, or skip it when a loss term is NaN or infinite.

        A skipped step leaves the parameters, the optimizer's state and its
        `iterations` as they were (applying zero gradients instead would
        still move the parameters through Adam's momentum); the balancer has
        kept its own state under its NaN policy. Every replica sees the same
        (global) terms, so all replicas skip together.
        """
        finite = tf.reduce_all(tf.math.is_finite(terms))
        # Decide once the gradients exist. A predicate that is ready before
        # them (it needs only the forward pass) lets XLA on CPU start the
        # conditional early, and the backward pass then runs about half as
        # fast: on the Kirchhoff plate a Sum step took 2x as long.
        computed = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        with tf.control_dependencies(computed):
            finite = tf.identity(finite)
        grads = [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in grads]

        def apply():
            self.optimizer.apply(grads, variables)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, apply, lambda: None)
            return

        def cross_replica(distribution, finite, grads):
            # The optimizer's update calls `merge_call`, which a `tf.cond`
            # in a replica context cannot hold: decide in the cross-replica
            # context, as Keras' LossScaleOptimizer does.
            def apply_on_replicas():
                distribution.extended.call_for_each_replica(self.optimizer.apply, args=(grads, variables))

            tf.cond(distribution.experimental_local_results(finite)[0], apply_on_replicas, lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, terms = self._terms(x, y, sample_weight, training=False)
        terms = distribute.replica_mean(terms)
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL:
            # The weights of the latest training step, as for a loss-level balancer.
            weights = tf.identity(self.balancer.term_weights.value)
            total = tf.reduce_sum(weights * terms)
        else:
            total, weights = self.balancer.evaluate(terms)
        total = total + self._regularization_loss()
        return self._record(total, terms, weights, y, y_pred, sample_weight)

    def _regularization_loss(self):
        if not self.losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(loss, "float32") for loss in self.losses])

    # -- gradient-level steps --------------------------------------------------

    # -- steps of methods that update every n steps ---------------------------

    def _update_period(self):
        """`update_every` when two compiled steps can replace the `tf.cond`, else None.

        A gradient-level balancer that needs its per-term gradients only every
        n steps (LR annealing) gets two compiled train functions, one with the
        per-term gradients and one with the held weights, and Python picks one
        per step. Inside one compiled step the choice is a `tf.cond`, which
        costs a few percent under XLA; that path remains for several steps
        per execution, eager runs and distribution strategies.
        """
        every = getattr(self.balancer, "update_every", 1)
        if self.balancer.kind != balancers_lib.GRADIENT_LEVEL or every <= 1:
            return None
        if self.run_eagerly or self.steps_per_execution != 1:
            return None
        if type(self.distribute_strategy).__name__ != "_DefaultDistributionStrategy":
            return None
        return every

    def _make_function(self, step_function):
        # Under MultiWorkerMirroredStrategy Keras (3.15) reduces each logged
        # value with `strategy.reduce("MEAN", value, axis=0)`, which fails on
        # a scalar. Log (1,) tensors there: the reduction then gives back
        # the scalar mean over replicas (equal values: the global terms).
        if not isinstance(getattr(self, "_distribute_strategy", None), tf.distribute.MultiWorkerMirroredStrategy):
            return super()._make_function(step_function)

        def step_with_vector_logs(data):
            return keras.tree.map_structure(
                lambda value: tf.reshape(value, [1]) if value.shape.rank == 0 else value, step_function(data)
            )

        return super()._make_function(step_with_vector_logs)

    def make_train_function(self, force=False):
        every = self._update_period()
        if every is None:
            return super().make_train_function(force)
        if self.train_function is None or force:
            with_jacobian = self._make_function(functools.partial(self._scheduled_step, True))
            held = self._make_function(functools.partial(self._scheduled_step, False))

            def train_function(iterator):
                position = self.__dict__["_schedule_position"]
                self.__dict__["_schedule_position"] = position + 1
                return (with_jacobian if position % every == 0 else held)(iterator)

            self.train_function = train_function
        # The schedule follows the balancer's step counter (also after a restore).
        self.__dict__["_schedule_position"] = int(self.balancer.step.numpy())
        return self.train_function

    def _scheduled_step(self, per_term, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return self._gradient_level_step(x, y, sample_weight, per_term=per_term)

    def _gradient_level_step(self, x, y, sample_weight, per_term=None):
        # Methods that update every n steps (LR annealing) skip the per-term
        # gradients in between: a weighted sum costs what Sum costs. Each
        # branch runs its own forward pass, since a tape cannot be read from
        # inside a `tf.cond` branch. `per_term` fixes the branch (see
        # `make_train_function`).
        if per_term is not None:
            grads, weights, terms, y_pred, regularization = self._gradient_pass(
                x, y, sample_weight, per_term=per_term
            )
        elif getattr(self.balancer, "update_every", 1) > 1 and distribute.num_replicas() > 1:
            # A cross-replica reduction cannot sit inside a `tf.cond` branch:
            # every step takes the per-term gradients and the balancer holds
            # its weights between updates.
            grads, weights, terms, y_pred, regularization = self._gradient_pass(
                x, y, sample_weight, per_term=True, scheduled=True
            )
        elif getattr(self.balancer, "update_every", 1) > 1:
            grads, weights, terms, y_pred, regularization = tf.cond(
                self.balancer.needs_jacobian(),
                lambda: self._gradient_pass(x, y, sample_weight, per_term=True),
                lambda: self._gradient_pass(x, y, sample_weight, per_term=False),
            )
        else:
            grads, weights, terms, y_pred, regularization = self._gradient_pass(
                x, y, sample_weight, per_term=True
            )
        variables = self.trainable_variables
        # Every replica holds the same combined gradient (the per-term
        # gradients were averaged over replicas) or its share of it (held
        # weights, features); the optimizer sums them: each holds 1/replicas.
        grads = [distribute.scale(tf.cast(g, v.dtype)) for g, v in zip(grads, variables)]
        self._apply_if_finite(grads, variables, terms)
        self.balancer.record_losses(terms)
        total = tf.reduce_sum(weights * terms)
        return self._record(total + regularization, terms, weights, y, y_pred, sample_weight)

    def _gradient_pass(self, x, y, sample_weight, per_term, scheduled=False):
        """Forward pass, then the gradients: combined by the balancer, or with held weights.

        `scheduled`: the per-term gradients are there, but the balancer
        updates its weights only when `needs_jacobian()` (else it holds them).
        """
        mode = self.jacobian_mode
        self.__dict__["_scheduled_weights"] = scheduled
        with tf.GradientTape(persistent=per_term) as tape:
            if per_term and mode == "features":
                # The terms must be computed from the representation.
                if self.feature_layer is not None:
                    features, y_pred = self._feature_model()(x, training=True)
                else:
                    y_pred = features = self(x, training=True)
                raw = self.compute_loss_terms(x, y, y_pred, sample_weight, training=True)
            else:
                y_pred, raw = self.forward_terms(x, y, sample_weight, training=True)
            terms = _as_term_vector(raw, self.num_terms, f"{type(self).__name__}.compute_loss_terms")
            # Differentiate the terms as returned: slicing a stacked vector
            # would connect every term to every variable (with zero
            # gradients), hiding which parameters a term really touches.
            if isinstance(raw, (list, tuple)):
                term_list = [tf.reshape(tf.cast(t, "float32"), ()) for t in raw]
            else:
                term_list = tf.unstack(terms)
            # Mixed precision: differentiate the loss-scaled terms (the
            # LossScaleOptimizer unscales the combined gradient); the balancer
            # sees the unscaled Jacobian.
            term_list = [self.optimizer.scale_loss(t) for t in term_list]
            variables = self.trainable_variables
            regularization = self._regularization_loss()
            if not per_term:
                weights = tf.stop_gradient(self.balancer.hold(tf.stop_gradient(terms)))
                objective = self.optimizer.scale_loss(tf.reduce_sum(weights * terms) + regularization)
        # The balancer's losses and the logged terms: the global batch's.
        losses = distribute.replica_mean(tf.stop_gradient(terms))
        if not per_term:
            grads = tape.gradient(objective, variables)
        else:
            if mode == "features":
                grads, weights = self._feature_gradients(tape, term_list, losses, features, variables)
            else:
                grads, weights = self._parameter_gradients(
                    tape, term_list, terms, losses, variables, mode == "vectorized"
                )
            if self.losses:
                extra = tape.gradient(self.optimizer.scale_loss(regularization), variables)
                grads = [g if e is None else g + tf.cast(e, g.dtype) for g, e in zip(grads, extra)]
        del tape
        grads = self._zeros_for_none(grads, variables)
        return grads, tf.cast(weights, "float32"), losses, y_pred, regularization

    def _weigh(self, jacobian, losses):
        """The balancer's weights for a Jacobian (held between updates in a scheduled step)."""
        if not self.__dict__.get("_scheduled_weights", False):
            return self.balancer.weigh(jacobian, losses)
        return tf.cond(
            self.balancer.needs_jacobian(),
            lambda: self.balancer.weigh(jacobian, losses),
            lambda: tf.cast(self.balancer.hold(losses), jacobian.dtype),
        )

    def _loss_scale(self):
        """The factor `optimizer.scale_loss` multiplies a loss by (1 without mixed precision)."""
        return self.optimizer.scale_loss(tf.constant(1.0, "float32"))

    @staticmethod
    def _jacobian_dtype(variables):
        """float64 when the model trains float64 variables, else float32 (never less)."""
        return "float64" if any(v.dtype == "float64" for v in variables) else "float32"

    @staticmethod
    def _zeros_for_none(grads, variables):
        return [tf.zeros(v.shape, v.dtype) if g is None else g for g, v in zip(grads, variables)]

    def _weighted_gradients(self, tape, term_list, weights, variables):
        """Gradients of `sum_i w_i L_i` with the weights held constant (one backward pass)."""
        weights = tf.stop_gradient(tf.cast(weights, "float32"))
        # The tape has stopped recording: weight the terms' gradients through
        # `output_gradients` rather than by forming the weighted sum.
        return tape.gradient(term_list, variables, output_gradients=tf.unstack(weights))

    def _scope_variables(self, variables, shared):
        """The variables the balancer's Jacobian covers: all `shared` ones, or one layer's kernel."""
        if not getattr(self.balancer, "weights_all_parameters", False) or not hasattr(self.balancer, "layer"):
            return shared
        name = self.balancer.layer
        if name is not None:
            kernel = getattr(self.get_layer(name), "kernel", None)
            if kernel is None:
                raise ValueError(f"Layer {name!r} (the balancer's `layer`) has no kernel.")
            matches = [i for i, v in enumerate(variables) if v is kernel or v.path == kernel.path]
            if not matches or matches[0] not in shared:
                raise ValueError(
                    f"The kernel of layer {name!r} must be trained and touched by every loss term."
                )
            return matches[:1]
        kernels = [i for i in shared if len(variables[i].shape) >= 2]
        if not kernels:
            raise ValueError("No kernel (a variable of rank >= 2) is shared by every loss term.")
        return kernels[-1:]

    def _parameter_gradients(self, tape, term_list, terms, losses, variables, vectorized):
        """Per-term gradients with respect to the parameters -> the balancer's direction.

        One `tape.gradient` per term of `term_list`, or (`vectorized`) one
        `tape.jacobian` of the (K,) tensor `terms` recorded by the tape.
        """
        if vectorized:
            # Which term touches which variable is static: unused gradients are
            # pruned from the compiled step.
            connected = [[g is not None for g in tape.gradient(t, variables)] for t in term_list]
            jacobians = tape.jacobian(terms, variables, experimental_use_pfor=True)
            per_term = [
                [None if j is None or not connected[i][v] else j[i] for v, j in enumerate(jacobians)]
                for i in range(len(term_list))
            ]
        else:
            per_term = [tape.gradient(term, variables) for term in term_list]
        # Under tf.distribute: the per-term gradients of the global batch,
        # averaged over replicas before the balancer combines them.
        per_term = distribute.replica_mean(per_term)
        touched = [sum(grads[v] is not None for grads in per_term) for v in range(len(variables))]
        shared = [v for v, count in enumerate(touched) if count == len(term_list)]
        scope = self._scope_variables(variables, shared)
        if not scope:
            raise ValueError(
                "No trainable variable is touched by every loss term, so a gradient-level balancer "
                "has nothing to combine."
            )
        dtype = self._jacobian_dtype(variables)
        rows = [
            tf.concat([tf.reshape(tf.cast(grads[v], dtype), [-1]) for v in scope], 0)
            for grads in per_term
        ]
        jacobian = tf.stack(rows) / tf.cast(self._loss_scale(), dtype)
        weights = self._weigh(jacobian, losses)
        scale_all = getattr(self.balancer, "weights_all_parameters", False)
        grads = []
        for v, variable in enumerate(variables):
            parts = [(i, g[v]) for i, g in enumerate(per_term) if g[v] is not None]
            if not parts:
                grads.append(tf.zeros(variable.shape, variable.dtype))
            elif v in shared or scale_all:
                # The direction J^T w, restricted to this variable.
                grads.append(tf.add_n([tf.cast(weights[i], g.dtype) * g for i, g in parts]))
            else:
                # Task-specific parameters: the plain sum of their gradients.
                grads.append(tf.add_n([g for _, g in parts]))
        return grads, weights

    def _feature_gradients(self, tape, term_list, losses, features, variables):
        """Per-term gradients with respect to a shared representation (rep_grad)."""
        flat = keras.tree.flatten(features)
        dtype = self._jacobian_dtype(variables)
        rows = []
        for term in term_list:
            grads = tape.gradient(term, flat, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            rows.append(tf.concat([tf.reshape(tf.cast(g, dtype), [-1]) for g in grads], 0))
        jacobian = tf.stack(rows)
        # The balancer sees the unscaled Jacobian of the global batch: each
        # replica's representation gradients of the mean terms, side by side.
        scale = tf.cast(self._loss_scale(), dtype) * distribute.num_replicas()
        gathered = tf.reshape(distribute.gather_columns(jacobian), [len(term_list), -1])
        weights = self._weigh(gathered / scale, losses)
        if getattr(self.balancer, "weights_all_parameters", False) or self.feature_layer is None:
            grads = self._weighted_gradients(tape, term_list, weights, variables)
        else:
            # Trunk: one backward pass with the combined representation gradient.
            combined = [
                tf.reshape(tf.linalg.matvec(jacobian[:, offset : offset + size], weights, transpose_a=True), f.shape)
                for f, offset, size in self._feature_slices(flat)
            ]
            trunk = tape.gradient(flat, variables, output_gradients=[tf.cast(c, f.dtype) for c, f in zip(combined, flat)])
            # Heads (after the representation): the plain sum of their terms' gradients.
            heads = tape.gradient(term_list, variables)  # the sum of the terms' gradients
            grads = [t if t is not None else h for t, h in zip(trunk, heads)]
        return self._zeros_for_none(grads, variables), weights

    @staticmethod
    def _feature_slices(flat):
        offset = 0
        for f in flat:
            size = int(np.prod(f.shape))
            yield f, offset, size
            offset += size

    def _feature_model(self):
        """A model returning `(output of feature_layer, outputs)`, built once."""
        model = getattr(self, "_features_and_outputs", None)
        if model is None:
            if not isinstance(self, Functional):
                raise ValueError(
                    "`feature_layer` needs a functional BalancedModel; a subclassed model can use "
                    "jacobian_mode='features' with feature_layer=None (gradients with respect to "
                    "its outputs)."
                )
            layer = self.get_layer(self.feature_layer)
            outputs = getattr(self, "_outputs_struct", self.outputs)
            model = keras.Model(self.inputs, [layer.output, outputs])
            # A view on the model's own layers: kept out of Keras' tracking so
            # that saving does not see its variables twice.
            self.__dict__["_features_and_outputs"] = model
        return model

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
