"""BalancedModel: a keras.Model whose training step balances K loss terms.

The public face of the package's training step: construction, `compile`,
`train_step`, `test_step` and serialization. The per-term gradients live in
`keras_balance.jacobians`, the Keras class surgery in `keras_balance.compat`,
the skip-if-non-finite update in `keras_balance.finite`, the per-output
losses in `keras_balance.terms` and the multi-worker workarounds in
`keras_balance.distribute_workarounds`.
"""

import contextlib
import functools
import weakref

import keras
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import compat, distribute, jacobians
from keras_balance.data import full_batch_element, full_batch_fit_arguments
from keras_balance.distribute_workarounds import MultiWorkerFixes
from keras_balance.finite import apply_if_finite, balancer_snapshot, restore_unless, state_snapshot
from keras_balance.jacobians import JACOBIAN_MODES
from keras_balance.terms import LatestValue, OutputLosses, as_term_vector, check_term_names, output_keys, term_list


# model -> the `full_batch` batch of the `fit` under way, trained on without an iterator.
_FIT_BATCHES = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def training_on(model, batch):
    """Within the block, `model`'s train function trains on `batch` (a `full_batch` element) and ignores its iterator.

    What `BalancedModel.fit` does for a `keras_balance.full_batch` dataset;
    the benchmark harness uses it to time the same path. `batch=None`
    changes nothing.
    """
    if batch is None:
        yield
        return
    _FIT_BATCHES[model] = batch
    try:
        yield
    finally:
        _FIT_BATCHES.pop(model, None)


@keras.saving.register_keras_serializable(package="keras_balance")
class BalancedModel(MultiWorkerFixes, keras.Model):
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
    #: The per-output losses given to `compile(loss=...)`, or None.
    output_losses = None
    #: The metric counting the training steps skipped in an epoch (not finite).
    skipped_steps = None

    def __new__(cls, *args, **kwargs):
        # A functional model is built from a variant class with Keras'
        # `Functional` mixed in (see `keras_balance.compat`).
        return super().__new__(compat.model_class(cls, args, kwargs), *args, **kwargs)

    def __init__(self, *args, balancer="sum", term_names=None, **kwargs):
        if compat.is_functional(self):
            compat.init_functional(self, args, kwargs)
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
        if term_names is not None:
            check_term_names(term_names)
        balancer = balancers_lib.get(balancer)
        if balancer.kind not in (balancers_lib.LOSS_LEVEL, balancers_lib.GRADIENT_LEVEL):
            raise TypeError(f"Argument `balancer` has an unknown kind {balancer.kind!r}.")
        # Two models would advance one state (initial losses, running
        # weights, step counts) with each other's losses.
        balancer.claim(self)
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
            if self.skipped_steps is None:
                self.skipped_steps = keras.metrics.Sum(name="skipped_steps")
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
            self.jacobian_mode = jacobians.check_mode(jacobian_mode)
        if feature_layer is not None:
            if not isinstance(feature_layer, str):
                raise TypeError(
                    f"Argument `feature_layer` must be a layer name; received feature_layer={feature_layer!r}."
                )
            self.get_layer(feature_layer)  # raises a clear error for an unknown name
            self.feature_layer = feature_layer
        if loss is not None:
            self.output_losses = OutputLosses(loss, output_keys(self))
            if term_names is None:
                term_names = self.output_losses.names
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
        if self.balancer.kind == balancers_lib.LOSS_LEVEL and (
            self.jacobian_mode != "loop" or self.feature_layer is not None
        ):
            raise ValueError(
                f"Arguments `jacobian_mode` and `feature_layer` choose how a gradient-level balancer gets "
                f"the per-term gradients; the balancer {self.balancer.name!r} is loss-level and takes none. "
                f"Received jacobian_mode={self.jacobian_mode!r}, feature_layer={self.feature_layer!r}."
            )
        modes = getattr(self.balancer, "jacobian_modes", JACOBIAN_MODES)
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL and self.jacobian_mode not in modes:
            raise ValueError(
                f"Argument `jacobian_mode` must be one of {tuple(modes)} for the balancer {self.balancer.name!r}; "
                f"received jacobian_mode={self.jacobian_mode!r}. {self.balancer.jacobian_modes_reason}".rstrip()
            )
        if getattr(self.balancer, "uses_traces", False) and not hasattr(self, "ntk_traces"):
            raise ValueError(
                f"The balancer {self.balancer.name!r} ({type(self.balancer).__name__}) weighs the terms by the "
                f"traces of their neural tangent kernels, computed from the per-point terms of a PINN: use "
                f"`keras_balance.pinn.PINNModel`; {type(self).__name__} has no per-point terms."
            )
        check_term_names(self.term_names, kwargs.get("metrics"), kwargs.get("weighted_metrics"))
        super().compile(optimizer=optimizer, **kwargs)
        if loss is not None:
            # Keep the per-output losses in the compile config (for load_model).
            self._compile_config.config["loss"] = loss
        self._compile_config.config["jacobian_mode"] = self.jacobian_mode
        self._compile_config.config["feature_layer"] = self.feature_layer

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
        """`keras.Model.fit`; calls a per-epoch balancer's `end_epoch()` after each epoch.

        A step whose terms or gradients are not finite is skipped whole; the
        `skipped_steps` metric counts them per epoch, and the first epoch
        that has one prints a warning (once per `fit`).

        Full-batch arrays, `fit(x, batch_size=len(x), epochs=N)`, train as
        `fit(full_batch(x), steps_per_epoch=1, epochs=N)`: the same steps
        without Keras' per-epoch iterator and shuffle (see
        `keras_balance.data`); not under a distribution strategy.
        """
        from keras_balance.callbacks import BalancerEpochEnd, SkippedStepsWarning

        callbacks = list(callbacks or [])
        if self.balancer.needs_epoch_end and not any(isinstance(c, BalancerEpochEnd) for c in callbacks):
            # First, so that checkpoints written at the epoch's end
            # (BackupAndRestore, ModelCheckpoint) hold the updated state.
            callbacks.insert(0, BalancerEpochEnd(self))
        callbacks.append(SkippedStepsWarning())
        names = ("x", "y", "batch_size", "epochs", "verbose")  # Keras' positional order
        if len(args) > len(names):
            raise TypeError(f"fit() takes at most {len(names)} positional arguments ({', '.join(names)}); "
                            f"received {len(args)}. Pass the others by keyword.")
        twice = [name for name, _ in zip(names, args) if name in kwargs]
        if twice:
            raise TypeError(f"fit() got multiple values for argument {twice[0]!r}")
        kwargs.update(zip(names, args))
        x, y = kwargs.pop("x", None), kwargs.pop("y", None)
        # Under a distribution strategy Keras shards arrays and datasets differently: keep its path.
        plain = not tf.distribute.has_strategy() and self.distribute_strategy is tf.distribute.get_strategy()
        fast = full_batch_fit_arguments(x, y, kwargs) if plain else None
        if fast is not None:
            (x, kwargs), y = fast, None
        elif isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # Keras ignores it for a dataset, with a warning
        # Every step of a `full_batch` dataset is the same batch: the
        # compiled step takes it directly (see `make_train_function`).
        batch = full_batch_element(x) if plain and isinstance(x, tf.data.Dataset) else None
        reset = getattr(self.train_function, "reset_schedule", None)
        if reset is not None:
            reset()  # the balancer's `step` may have been restored since (BackupAndRestore, load_weights)
        with training_on(self, batch):
            return super().fit(x, y, callbacks=callbacks, **kwargs)

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
        if self.output_losses is not None:
            return self.output_losses(y, y_pred, sample_weight)
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

    def step_state_variables(self):
        """The variables of state that the terms themselves advance in a training step.

        A step skipped as not finite puts them back, as it does the
        balancer's state. None here; a `PINNModel` returns those of its
        pointwise and causal weightings.
        """
        return []

    def _terms(self, x, y, sample_weight, training):
        y_pred, raw = self.forward_terms(x, y, sample_weight, training=training)
        return y_pred, raw, as_term_vector(raw, self.num_terms, f"{type(self).__name__}.compute_loss_terms")

    def _hand_traces(self, x):
        """Give a balancer that weighs the terms by their NTK traces (`"ntk"`) those of this batch.

        Computed on the balancer's update steps only (a `tf.cond` on its
        `needs_traces()`, read from its checkpointed step); in between it
        keeps the traces it has. Under several replicas the traces are
        computed on every step (a cross-replica mean cannot sit in a
        `tf.cond` branch), averaged over the replicas, and kept on update
        steps only.
        """
        balancer = self.balancer
        if distribute.num_replicas() > 1:
            fresh = distribute.replica_mean(self.ntk_traces(x, balancer))
            traces = tf.where(balancer.needs_traces(), fresh, balancer.traces.value)
        else:
            traces = tf.cond(balancer.needs_traces(), lambda: self.ntk_traces(x, balancer),
                             lambda: tf.identity(balancer.traces.value))
        balancer.update_traces(tf.stop_gradient(traces))

    def _regularization_loss(self):
        if not self.losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(loss, "float32") for loss in self.losses])

    # -- steps ---------------------------------------------------------------

    def make_train_function(self, force=False):
        """Keras' train function (iterator -> logs), with two shortcuts on one replica.

        Trained one step per execution on one replica and not eagerly:

        - During `fit` on a `keras_balance.full_batch` dataset, every step
          trains on the same batch, so each call hands that batch straight to
          the compiled `train_step` and leaves the iterator alone: Keras'
          iterator and its outer graph cost some 10-20 % of a full-batch PINN
          step on CPU (`keras-balance bench paths`).
        - A gradient-level balancer with `update_every > 1` gets two compiled
          steps (per-term gradients, or the weighted sum with the held
          weights), and each call runs the one the balancer's checkpointed
          `step` calls for (`step % update_every == 0`): a held step then
          costs what Sum costs, where a `tf.cond` over both branches in one
          XLA program costs some 10 % more on CPU. The variable is read only
          on the calls that may be due, once every `update_every` calls,
          and counted on the host in between; every `fit` reads it afresh.

        Elsewhere this is Keras' function, and the held-weights choice is a
        `tf.cond` inside the step.
        """
        if self.train_function is not None and not force:
            return self.train_function
        balancer = self.balancer
        if not (self.steps_per_execution == 1 and not self.run_eagerly
                and self.distribute_strategy.num_replicas_in_sync == 1 and not tf.distribute.has_strategy()):
            super().make_train_function(force)
            return self.train_function

        def on_batch(step):
            return tf.function(tf.autograph.experimental.do_not_convert(step), reduce_retracing=True,
                               jit_compile=self.jit_compile is True)

        if balancer.kind == balancers_lib.GRADIENT_LEVEL and balancer.update_every > 1:
            steps = [functools.partial(self.train_step, per_term=per_term) for per_term in (True, False)]
            update, hold = (compat.step_function(self, step) for step in steps)
            update_batch, hold_batch = (on_batch(step) for step in steps)

            period = balancer.update_every
            # A host-side count of the balancer's `step`, so that the choice
            # does not wait for every step to finish (reading the variable
            # each step costs some 5 % on CPU). The variable is read on the
            # calls the count says are due: the count is never behind it (a
            # skipped step leaves the variable where it was), so a count
            # ahead of it is caught on the next due call, before the
            # variable reaches a multiple of `update_every`.
            schedule = {"count": None}

            def choose():
                if not balancer.built:
                    return True  # step 0 updates; the balancer gets its state in it
                count = schedule["count"]
                if count is None or count % period == 0:
                    count = int(balancer.step.numpy())
                schedule["count"] = count + 1
                return count % period == 0
        else:
            update = update_batch = None
            hold = compat.step_function(self, self.train_step)
            hold_batch = on_batch(self.train_step)

            def choose():
                return False

        def train_function(iterator):
            batch = _FIT_BATCHES.get(self)
            per_term = choose()
            if batch is not None:
                return update_batch(batch) if per_term else hold_batch(batch)
            return update(iterator) if per_term else hold(iterator)

        train_function.reset_schedule = (lambda: schedule.update(count=None)) if update is not None else None
        self.train_function = train_function
        return train_function

    def train_step(self, data, per_term=None):
        """One training step; `per_term` (gradient-level, with `update_every > 1`) fixes the branch."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # A step that is not finite (terms or gradients) leaves the balancer as it began.
        snapshot = balancer_snapshot(self.balancer)
        # So does the state of any weighting inside the terms.
        held = state_snapshot(self.step_state_variables())
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL:
            return self._gradient_level_step(x, y, sample_weight, snapshot, per_term, held)
        if getattr(self.balancer, "uses_traces", False):
            self._hand_traces(x)
        with tf.GradientTape() as tape:
            y_pred, _, terms = self._terms(x, y, sample_weight, training=True)
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
        applied, skipped = apply_if_finite(
            self.optimizer, grads, variables, tf.stop_gradient(terms), self.balancer, snapshot
        )
        restore_unless(applied, held)
        weights = tf.where(applied, weights, self.balancer.term_weights.value)
        return self._record(total + regularization, tf.stop_gradient(terms), weights, y, y_pred, sample_weight,
                            skipped)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, _, terms = self._terms(x, y, sample_weight, training=False)
        terms = distribute.replica_mean(terms)
        if self.balancer.kind == balancers_lib.GRADIENT_LEVEL:
            # The weights of the latest training step, as for a loss-level balancer.
            weights = tf.identity(self.balancer.term_weights.value)
            total = tf.reduce_sum(weights * terms)
        else:
            total, weights = self.balancer.evaluate(terms)
        total = total + self._regularization_loss()
        return self._record(total, terms, weights, y, y_pred, sample_weight)

    def _gradient_level_step(self, x, y, sample_weight, snapshot, per_term=None, held=()):
        # A balancer that updates every n steps (LR annealing) needs the
        # per-term gradients only on its update steps; in between a weighted
        # sum costs what Sum costs. The choice is read from the balancer's
        # checkpointed `step` inside the graph, so a restored or NaN-skipped
        # run follows the uninterrupted one. Each branch runs its own forward
        # pass, since a tape cannot be read from inside a `tf.cond` branch.
        if self.balancer.update_every <= 1:
            outcome = self._gradient_pass(x, y, sample_weight, per_term=True)
        elif per_term is not None:
            # One branch, chosen per call by `make_train_function`.
            outcome = self._gradient_pass(x, y, sample_weight, per_term=per_term)
        elif distribute.num_replicas() > 1:
            # A cross-replica reduction cannot sit inside a `tf.cond` branch:
            # every step takes the per-term gradients and the balancer holds
            # its weights between updates.
            outcome = self._gradient_pass(x, y, sample_weight, per_term=True, scheduled=True)
        else:
            outcome = tf.cond(
                self.balancer.needs_jacobian(),
                lambda: self._gradient_pass(x, y, sample_weight, per_term=True),
                lambda: self._gradient_pass(x, y, sample_weight, per_term=False),
            )
        grads, weights, terms, y_pred, regularization = outcome
        variables = self.trainable_variables
        # Every replica holds the same combined gradient (the per-term
        # gradients were averaged over replicas) or its share of it (held
        # weights, features); the optimizer sums them: each holds 1/replicas.
        grads = [distribute.scale(tf.cast(g, v.dtype)) for g, v in zip(grads, variables)]
        applied, skipped = apply_if_finite(self.optimizer, grads, variables, terms, self.balancer, snapshot)
        restore_unless(applied, held)
        self.balancer.record_losses(terms)
        weights = tf.where(applied, weights, self.balancer.term_weights.value)
        total = tf.reduce_sum(weights * terms)
        return self._record(total + regularization, terms, weights, y, y_pred, sample_weight, skipped)

    def _gradient_pass(self, x, y, sample_weight, per_term, scheduled=False):
        """Forward pass, then the gradients: combined by the balancer, or with held weights.

        `per_term`: take the per-term gradients and let the balancer combine
        them; otherwise train on `sum_i w_i L_i` with the held weights.
        `scheduled`: the per-term gradients are there, but the balancer
        updates its weights only when `needs_jacobian()` (else it holds them).
        """
        features = per_term and self.jacobian_mode == "features"
        with tf.GradientTape(persistent=per_term) as tape:
            if features:
                # The terms must be computed from the representation.
                if self.feature_layer is not None:
                    representation, y_pred = jacobians.feature_model(self)(x, training=True)
                else:
                    y_pred = representation = self(x, training=True)
                raw = self.compute_loss_terms(x, y, y_pred, sample_weight, training=True)
                terms = as_term_vector(raw, self.num_terms, f"{type(self).__name__}.compute_loss_terms")
            else:
                y_pred, raw, terms = self._terms(x, y, sample_weight, training=True)
            # Mixed precision: differentiate the loss-scaled terms (the
            # LossScaleOptimizer unscales the combined gradient); the balancer
            # sees the unscaled Jacobian.
            scaled_terms = [self.optimizer.scale_loss(t) for t in term_list(raw, terms)]
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
            if features:
                grads, weights = jacobians.feature_gradients(
                    self, tape, scaled_terms, losses, representation, variables, scheduled
                )
            else:
                grads, weights = jacobians.parameter_gradients(
                    self, tape, scaled_terms, terms, losses, variables, self.jacobian_mode == "vectorized",
                    scheduled,
                )
            if self.losses:
                extra = tape.gradient(self.optimizer.scale_loss(regularization), variables)
                grads = [g if e is None else g + tf.cast(e, g.dtype) for g, e in zip(grads, extra)]
        del tape
        grads = jacobians.zeros_for_none(grads, variables)
        return grads, tf.cast(weights, "float32"), losses, y_pred, regularization

    def _record(self, total, terms, weights, y, y_pred, sample_weight, skipped=None):
        self._loss_tracker.update_state(total)
        if skipped is not None:
            # Summed over replicas, which skip together: count each skipped step once.
            self.skipped_steps.update_state(tf.cast(skipped, "float32") / distribute.num_replicas())
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
        if compat.is_functional_config(config):
            model = compat.from_functional_config(cls, config, custom_objects=custom_objects)
        else:
            model = cls(**config)
        model._attach(balancer, term_names)
        return model


__all__ = ["BalancedModel", "JACOBIAN_MODES", "LatestValue", "training_on"]
