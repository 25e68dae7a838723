"""The two balancer contracts.

A *loss-level* balancer turns a vector of K scalar losses into K weights:

    weights = balancer(losses)          # losses: shape (K,), weights: shape (K,)

A *gradient-level* balancer turns a K x P Jacobian (row i is the gradient of
loss i) into one P-vector direction:

    direction = balancer.aggregate(jacobian)

Both are Keras layers, so their state (initial losses, running weights, random
generator state) lives in Keras variables that `model.save`, checkpoints and
`tf.distribute` see, and both round-trip through `get_config`/`from_config`.
This module knows nothing of models, PDEs or plotting.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.inputs import (
    as_jacobian, as_loss_vector, bounded_weights, check_segments, valid_entries,
)
from keras_balance.balancers.threads import one_step_at_a_time


LOSS_LEVEL = "loss"
GRADIENT_LEVEL = "gradient"

NAN_POLICIES = ("skip", "raise")


class Balancer(keras.layers.Layer):
    """Base class of every balancer.

    Subclasses set the class attribute `kind` (`"loss"` or `"gradient"`) and
    `summary` (one line, shown by `keras-balance list`), create their state in
    `build_state(num_terms)`, and implement the contract of their kind.
    In eager mode, calls from several threads run one whole step after
    another (`keras_balance.balancers.threads`).

    Args:
        num_terms: optional number of loss terms K. When given, the state is
            created at once; otherwise on the first call, or when a model or
            loss adapter that knows K calls `build_for(K)`.
        nan_policy: what to do when a loss (or gradient) is NaN or infinite,
            or a loss is negative for a method that needs non-negative losses
            (`needs_non_negative_losses`). `"skip"` (default): the balancer
            leaves its state untouched for that step and returns the weights of
            the previous step, so one bad batch cannot poison later steps.
            `"raise"`: fail the step with an `InvalidArgumentError` naming the
            balancer (eager and graph mode; XLA drops assertions, so under
            `jit_compile=True` this acts as "skip").
        name: layer name.
    """

    # -- the contract: every attribute a model or loss adapter reads ----------

    #: `"loss"` or `"gradient"`: which of the two contracts the class implements.
    kind = None
    #: One line, shown by `keras-balance list`.
    summary = ""
    #: True for balancers that update once per epoch: `BalancedModel.fit` then
    #: calls `end_epoch()` after every epoch, and
    #: `keras_balance.callbacks.BalancerEpochEnd` does it for a Keras loss.
    needs_epoch_end = False
    #: Steps between two weight updates. A gradient-level balancer with
    #: `update_every > 1` returns False from `needs_jacobian()` in between, and
    #: the model then skips the per-term gradients for those steps.
    update_every = 1
    #: Which parameters a gradient-level balancer's weights multiply. False:
    #: the parameters every term shares (task heads get the plain sum of their
    #: gradients). True: every gradient of the term (methods that weight the
    #: losses themselves: LR annealing, GradNorm).
    weights_all_parameters = False
    #: Which columns of the Jacobian the model hands to a gradient-level
    #: balancer. `"shared"`: every parameter all terms touch. `"kernel"`: the
    #: kernel of the layer named by `layer` (None: the last kernel every term
    #: shares), GradNorm's W.
    jacobian_scope = "shared"
    #: With `jacobian_scope="kernel"`, the name of the layer whose kernel is used.
    layer = None
    #: True for gradient-level methods with per-layer statistics: `weigh`
    #: and `aggregate` then pass `segments` (the number of columns of each
    #: variable, in order) on to `compute_weights`. `BalancedModel` passes
    #: the sizes of the variables the Jacobian covers.
    uses_segments = False
    #: True for methods whose formula needs losses >= 0: a negative loss is
    #: then treated like a non-finite one (see `nan_policy`).
    needs_non_negative_losses = False
    #: True for gradient-level methods with state that has one entry per
    #: column of the Jacobian (see `GradientBalancer`); False for every
    #: loss-level method.
    column_state = False

    @classmethod
    def required_arguments(cls, num_terms):
        """Constructor arguments the balancer cannot be built without, for K terms.

        `{}` for most methods. The test suites and the benchmark harness build
        every registered balancer with these (see
        `keras_balance.balancers.registry.example`).
        """
        return {}

    def claim(self, owner):
        """Record `owner` (a model or a Keras loss) as the one whose training run this balancer's state follows.

        A balancer holds the state of one training run: two models sharing one
        would advance it with each other's losses. Raises a `ValueError` when
        another live owner has claimed it already.
        """
        current = self._owner() if self._owner is not None else None
        if current is not None and current is not owner:
            kind = "loss" if isinstance(current, keras.losses.Loss) else "model"
            raise ValueError(
                f"Argument `balancer`: the balancer {self.name!r} already balances the {kind} "
                f"{getattr(current, 'name', current)!r}; a balancer holds the state of one training "
                "run. Give each its own: the balancer's name (`balancer=\"relobralo\"`) or a copy, "
                "`type(balancer).from_config(balancer.get_config())`."
            )
        self._owner = weakref.ref(owner)

    _owner = None

    def __init__(self, num_terms=None, nan_policy="skip", name=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"Argument `nan_policy` must be one of {NAN_POLICIES}; received nan_policy={nan_policy!r}.")
        self.nan_policy = nan_policy
        self.num_terms = None
        if num_terms is not None:
            self.build_for(num_terms)

    # -- state ---------------------------------------------------------------

    def build_for(self, num_terms):
        """Create the state for `num_terms` loss terms (idempotent)."""
        if isinstance(num_terms, bool) or not isinstance(num_terms, int) or num_terms < 1:
            raise ValueError(f"Argument `num_terms` must be a positive integer; received num_terms={num_terms!r}.")
        if self.built:
            if num_terms != self.num_terms:
                raise ValueError(
                    f"Balancer '{self.name}' was built for {self.num_terms} loss terms but received {num_terms} terms."
                )
            return
        self.num_terms = num_terms
        self.build_state(num_terms)
        self._build_bookkeeping(num_terms)
        self.built = True

    def build(self, input_shape):
        num_terms = input_shape[0]
        if num_terms is None:
            raise ValueError(
                f"Balancer '{self.name}' needs a static number of loss terms; "
                f"received input of shape {tuple(input_shape)}."
            )
        self.build_for(int(num_terms))

    def build_state(self, num_terms):
        """Create the Keras variables of the balancer. Default: no state."""

    def _build_bookkeeping(self, num_terms):
        # The weights of the latest step, readable after any step.
        self.term_weights = self.add_weight(
            shape=(num_terms,),
            initializer=keras.initializers.Constant(self.initial_weights(num_terms)),
            trainable=False,
            name="term_weights",
        )
        # The K losses of the latest step as received (NaN included), for
        # logging (`keras_balance.callbacks.BalanceHistory`).
        self.term_losses = self.add_weight(shape=(num_terms,), initializer="zeros", trainable=False, name="term_losses")

    def _bookkeeping(self):
        return [v for v in (getattr(self, "term_weights", None), getattr(self, "term_losses", None)) if v is not None]

    @property
    def state_variables(self):
        """The variables the method's own update changes (all but the bookkeeping)."""
        bookkeeping = self._bookkeeping()
        return [v for v in self.non_trainable_variables if not any(v is b for b in bookkeeping)]

    def record_losses(self, losses):
        """Keep `losses` (shape (K,)) as the latest step's, for logging."""
        self.term_losses.assign(tf.cast(tf.reshape(losses, [-1]), self.term_losses.dtype))

    def initial_weights(self, num_terms):
        """The weights before the first step (and after a NaN on the first step)."""
        return [1.0] * num_terms

    def _check_num_terms(self, values, what):
        if values.shape.rank != {"losses": 1, "jacobian": 2}[what]:
            raise ValueError(
                f"Balancer '{self.name}' expects `{what}` of rank "
                f"{ {'losses': 1, 'jacobian': 2}[what]}; received shape "
                f"{tuple(values.shape)}."
            )
        count = values.shape[0]
        if self.num_terms is not None and count is not None and count != self.num_terms:
            raise ValueError(
                f"Balancer '{self.name}' was built for {self.num_terms} loss "
                f"terms but `{what}` has {count} rows (shape {tuple(values.shape)})."
            )

    def all_finite(self, values):
        """A boolean scalar: are all `values` finite? Raises under "raise"."""
        return tf.reduce_all(valid_entries(self, values))

    # -- serialization -------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        config.update({"num_terms": self.num_terms, "nan_policy": self.nan_policy})
        return config


class LossBalancer(Balancer):
    """A balancer that weights the K losses by their values.

    Subclasses implement `compute_weights(losses)`: given a float32 tensor of
    shape (K,) it returns the K weights and updates the state. The base class
    validates the input, applies the NaN policy (the state of the balancer is
    restored and the previous weights are returned when a loss is not
    finite), and records the latest weights in `self.term_weights`.

    `combine(losses)` returns the scalar total used for training. By default
    it is `sum_i stop_gradient(w_i) * L_i`; methods whose weights must carry
    gradient (a generalized mean, learned uncertainties) override it.
    """

    kind = LOSS_LEVEL

    def end_epoch(self):
        """Called eagerly (outside any `tf.function`) after each training epoch.

        The default does nothing. Per-epoch methods (DWA in its paper's form)
        accumulate statistics during the epoch's steps and update their
        weights here.
        """

    def __call__(self, losses, **kwargs):
        with one_step_at_a_time(self):
            return super().__call__(as_loss_vector(losses), **kwargs)

    def call(self, losses):
        losses = tf.cast(losses, self.term_weights.dtype)
        self._check_num_terms(losses, "losses")
        valid = valid_entries(self, losses, losses=True)
        finite = tf.reduce_all(valid)
        snapshot = [tf.identity(v.value) for v in self.state_variables]
        weights = self.compute_weights(tf.where(valid, losses, 0.0))
        # Skip policy: put the state back and reuse the previous weights.
        for var, old in zip(self.state_variables, snapshot):
            var.assign(tf.where(finite, var.value, old))
        weights = tf.where(finite, weights, self.term_weights.value)
        self.term_weights.assign(weights)
        self.record_losses(losses)
        return weights

    def compute_weights(self, losses):
        """Return K weights for `losses` (shape (K,)) and update the state."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `compute_weights(losses)`."
        )

    def combine(self, losses):
        """Return `(total, weights)`: the scalar to minimize and the weights used."""
        losses = as_loss_vector(losses)
        weights = self(losses)
        return tf.reduce_sum(tf.stop_gradient(weights) * losses), weights

    def evaluate(self, losses):
        """Return `(total, weights)` with the current weights, leaving the state as is.

        Used for validation: evaluating a model must not advance the balancer.
        """
        losses = as_loss_vector(losses)
        self._check_num_terms(losses, "losses")
        if not self.built:
            self.build_for(int(losses.shape[0]))
        weights = self.term_weights.value
        return tf.reduce_sum(weights * losses), weights

    def compute_output_shape(self, input_shape):
        return input_shape


class GradientBalancer(Balancer):
    """A balancer that combines the K per-term gradients into one direction.

    Every gradient-level method in keras_balance returns a direction of the
    form `d = J^T w`: a combination of the rows of the K x P Jacobian `J`
    (row i is the gradient of loss i). Following the weighting/aggregation
    split of TorchJD, a subclass implements one hook:

    - `gramian_weights(gramian)`: from the K x K Gramian `G = J J^T` (float64)
      return K weights (float64). Enough for most methods (MGDA, UPGrad,
      PCGrad, CAGrad, IMTL-G, Aligned-MTL, ...).
    - or `compute_weights(jacobian, losses)` for methods that need more than
      the Gramian (the losses, or elementwise statistics of the gradients).

    `aggregate(jacobian, losses=None)` accepts a float32 or float64 tensor or
    NumPy array of shape (K, P) and returns the (P,) direction in the same
    dtype; `weigh(jacobian, losses=None)` returns the K weights alone. The
    weights of the latest call are kept in the variable `term_weights` (also
    `last_weights`), and `step` counts the calls.

    The weights are clipped to the finite range of float32 (the dtype of
    `term_weights`): rows some 40 orders of magnitude apart can call for
    coefficients beyond it (PCGrad's projection onto a tiny row), which would
    otherwise overflow to infinity and give `inf * 0 = NaN` in `J^T w`.

    NaN policy: under `"skip"` (default) a Jacobian or loss with a NaN or an
    infinity (or a negative loss, for a method that needs non-negative
    losses) leaves the state of the balancer untouched (including `step`),
    keeps the previous weights, and `aggregate` returns a zero direction.

    Attributes read by `BalancedModel` (declared with defaults on `Balancer`):
    `weights_all_parameters`, `jacobian_scope`, `layer` and `update_every`.

    Directions of another form: a method whose direction is not `J^T w`
    of the current Jacobian (GradDrop's sign masks, DB-MTL's moving averages)
    sets `combines_rows = False` and implements
    `compute_direction(jacobian, losses) -> (direction, weights)` instead;
    `aggregate` returns that direction, `weigh` and `term_weights` the
    weights the method documents (what they mean is on its page), and
    `BalancedModel` applies the direction: split back over the Jacobian's
    variables (`"loop"`, `"vectorized"`), or carried back through the trunk
    from the representation (`"features"`). Such methods hold no weights.

    State with one entry per column: a method with `column_state = True`
    creates it in `build_column_state(num_terms, num_columns)`, called on
    the first `aggregate`/`weigh` (P static) or by `build_columns(P)`; P is
    then part of the config (`num_columns`), so `from_config`, `model.save`
    and `load_weights` (which creates it from the stored shapes) restore it.
    Such state follows one set of columns: `jacobian_modes` lists the modes
    of `BalancedModel` a method accepts, and `compile` refuses the others.
    The NaN policy restores it like every other state variable.

    Update schedule: every gradient-level balancer whose `holds_weights` is
    True accepts `update_every=n` (default 1, LR annealing's 10): it computes
    new weights from the Jacobian on the steps where its checkpointed `step`
    is a multiple of n, and holds them in between (`needs_jacobian()` is then
    False and `BalancedModel` trains on `sum_i w_i L_i` with the held
    weights, at the cost of Sum). Methods whose direction is a projection of
    the current gradients (PCGrad, UPGrad, DualProj, Aligned-MTL) set
    `holds_weights = False` and refuse `update_every > 1`: their weights
    have no meaning for other gradients.
    """

    kind = GRADIENT_LEVEL
    #: Is the direction `J^T w`, a combination of the rows of the current
    #: Jacobian? False for methods that implement `compute_direction`
    #: instead (masks per coordinate, moving averages of past gradients).
    combines_rows = True
    #: Does the method keep state with one entry per column of the Jacobian
    #: (K x P moving averages or accumulators)? It is then created on the
    #: first call, when P is known (`build_column_state`).
    column_state = False
    #: The `jacobian_mode`s of `BalancedModel` the method works with.
    jacobian_modes = ("loop", "vectorized", "features")
    #: Why not the others (completes the error message).
    jacobian_modes_reason = ""
    #: Can the weights be held between updates (`update_every > 1`)?
    holds_weights = True
    #: Why not, when `holds_weights` is False (completes the error message).
    holds_weights_reason = ""

    def __init__(self, *args, update_every=1, num_columns=None, **kwargs):
        if num_columns is not None and (isinstance(num_columns, bool) or not isinstance(num_columns, (int, np.integer))
                                        or num_columns < 1 or not self.column_state):
            raise ValueError(
                "Argument `num_columns` must be None, or a positive integer for a method with per-column state; "
                f"received num_columns={num_columns!r}."
            )
        self.num_columns = None if num_columns is None else int(num_columns)
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise ValueError(
                f"Argument `update_every` must be a positive integer; received update_every={update_every!r}."
            )
        if update_every > 1 and not self.holds_weights:
            raise ValueError(
                f"Argument `update_every` must be 1 for {type(self).__name__}; received "
                f"update_every={update_every!r}. {self.holds_weights_reason}"
            )
        self.update_every = int(update_every)
        super().__init__(*args, **kwargs)

    def _bookkeeping(self):
        return super()._bookkeeping() + [v for v in (getattr(self, "step", None),) if v is not None]

    def build_for(self, num_terms):
        was_built = self.built
        super().build_for(num_terms)
        if not was_built and self.column_state and self.num_columns is not None:
            self._build_columns(self.num_columns)

    # -- state with one entry per column (K x P) -----------------------------

    @property
    def columns_built(self):
        """Has the per-column state been created (always True without `column_state`)?"""
        return not self.column_state or getattr(self, "_columns_ready", False)

    def build_column_state(self, num_terms, num_columns):
        """Create the variables whose shape depends on P, the number of columns.

        Called once, on the first `aggregate`/`weigh` (P is then static), or at
        construction when `num_columns` is given (as `from_config` does after
        a first call: `get_config` records P). Default: nothing.
        """

    def build_columns(self, num_columns):
        """Create the per-column state for P = `num_columns` (idempotent; the terms' state must exist).

        Done by the first `aggregate`/`weigh`; call it to have the state
        before the first step (to restore a `tf.train.Checkpoint` into it).
        """
        if not self.built:
            raise ValueError(f"Balancer '{self.name}' needs its number of terms first (`build_for(K)`).")
        if isinstance(num_columns, bool) or not isinstance(num_columns, (int, np.integer)) or num_columns < 1:
            raise ValueError(f"Argument `num_columns` must be a positive integer; received num_columns={num_columns!r}.")
        if self.columns_built:
            if self.column_state and int(num_columns) != self.num_columns:
                raise ValueError(
                    f"Balancer '{self.name}' keeps state for {self.num_columns} columns of the Jacobian; received "
                    f"num_columns={num_columns!r}."
                )
            return
        self._build_columns(int(num_columns))

    def _build_columns(self, num_columns):
        locked = getattr(self._tracker, "locked", False)
        self._tracker.unlock()
        try:
            # Created outside any `tf.function` being traced: the variables
            # then outlive the trace like those made at construction.
            with tf.init_scope():
                self.build_column_state(self.num_terms, num_columns)
        finally:
            if locked:
                self._tracker.lock()
        self.num_columns = int(num_columns)
        self._columns_ready = True

    def _ensure_columns(self, jacobian):
        if self.columns_built:
            return
        columns = jacobian.shape[1]
        if columns is None:
            raise ValueError(
                f"Balancer '{self.name}' keeps state per column of the Jacobian and needs a static number of "
                f"columns; received a Jacobian of shape {tuple(jacobian.shape)}."
            )
        self._build_columns(int(columns))

    def _check_columns(self, jacobian):
        columns = jacobian.shape[1]
        if self.column_state and self.num_columns is not None and columns is not None and columns != self.num_columns:
            raise ValueError(
                f"Balancer '{self.name}' keeps state for {self.num_columns} columns of the Jacobian but received "
                f"`jacobian` of shape {tuple(jacobian.shape)}; its per-column state follows one set of parameters."
            )

    def load_own_variables(self, store):
        # A checkpoint written after the first step holds the per-column
        # state; a balancer restored into before its first step creates it
        # from the stored shapes (BackupAndRestore, `load_weights`).
        if self.column_state and self.built and not self.columns_built:
            held = len(self.trainable_variables) + len(self.non_trainable_variables)
            if len(store.keys()) > held:
                self._build_columns(int(np.shape(store[str(held)])[-1]))
        super().load_own_variables(store)

    @property
    def step_start(self):
        """`{id(variable): value}`: per-column state as it was when the latest step began.

        Read by `keras_balance.finite` to put back per-column state created
        within the step being traced (it is not in the model's snapshot).
        """
        return getattr(self, "_step_start", {})

    def _build_bookkeeping(self, num_terms):
        super()._build_bookkeeping(num_terms)
        # Number of completed (finite) weighting steps; seeds random draws.
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="step"
        )


    # -- the contract ----------------------------------------------------------

    def _prepare(self, jacobian, losses):
        jacobian = as_jacobian(jacobian)
        self._check_num_terms(jacobian, "jacobian")
        self._check_columns(jacobian)
        if not self.built:
            self.build_for(int(jacobian.shape[0]))
        self._ensure_columns(jacobian)
        if losses is not None:
            losses = tf.cast(as_loss_vector(losses), jacobian.dtype)
            self._check_num_terms(losses, "losses")
        return jacobian, losses

    def weigh(self, jacobian, losses=None, segments=None):
        """Return the K weights `w` (dtype of `jacobian`) with `J^T w` the direction.

        Advances the state of the balancer exactly as `aggregate` does.

        Args:
            jacobian: (K, P) float32 or float64 tensor or array.
            losses: optional (K,) loss values; methods that use them say so.
            segments: optional, for methods with per-layer statistics
                (`uses_segments`): the number of columns of each layer's
                block, summing to P (None: one block). Ignored by the others.
        """
        with one_step_at_a_time(self):
            jacobian, losses = self._prepare(jacobian, losses)
            if not self.combines_rows:
                return self._direct(jacobian, losses)[1]
            return self._weigh(jacobian, losses, self._segments(jacobian, segments))[0]

    def _segments(self, jacobian, segments):
        if not self.uses_segments or segments is None:
            return None
        return check_segments(segments, int(jacobian.shape[1]))

    def _weigh(self, jacobian, losses, segments=None):
        finite = self.all_finite(jacobian)
        if losses is not None:
            valid = valid_entries(self, losses, losses=True)
            finite = tf.logical_and(finite, tf.reduce_all(valid))
            usable = tf.where(valid, losses, tf.zeros_like(losses))
            losses = tf.where(tf.math.is_finite(losses), losses, tf.zeros_like(losses))
        jacobian = tf.where(tf.math.is_finite(jacobian), jacobian, tf.zeros_like(jacobian))
        snapshot = self._snapshot()
        usable = None if losses is None else usable
        computed = (self.compute_weights(jacobian, usable, segments=segments) if self.uses_segments
                    else self.compute_weights(jacobian, usable))
        weights = bounded_weights(computed, jacobian.dtype)
        # Skip policy: put the state back and reuse the previous weights.
        for var, old in zip(self.state_variables, snapshot):
            var.assign(tf.where(finite, var.value, old))
        previous = tf.cast(self.term_weights.value, jacobian.dtype)
        weights = tf.where(finite, weights, previous)
        self.term_weights.assign(tf.cast(weights, self.term_weights.dtype))
        if losses is not None:
            self.record_losses(losses)
        self.step.assign_add(tf.cast(finite, "int64"))
        return weights, jacobian, finite

    def _snapshot(self):
        snapshot = [tf.identity(v.value) for v in self.state_variables]
        # Kept out of Keras' tracking: tensors of the step being run or traced.
        object.__setattr__(self, "_step_start", {id(v): old for v, old in zip(self.state_variables, snapshot)})
        return snapshot

    def _checked_inputs(self, jacobian, losses):
        """`(finite, jacobian, losses)`: the NaN policy's verdict and the inputs with non-finite entries zeroed."""
        finite = self.all_finite(jacobian)
        if losses is not None:
            valid = valid_entries(self, losses, losses=True)
            finite = tf.logical_and(finite, tf.reduce_all(valid))
            losses = tf.where(valid, losses, tf.zeros_like(losses))
        jacobian = tf.where(tf.math.is_finite(jacobian), jacobian, tf.zeros_like(jacobian))
        return finite, jacobian, losses

    def _direct(self, jacobian, losses):
        """`compute_direction` under the NaN policy -> `(direction, weights, finite)`."""
        if losses is not None:
            self.record_losses(losses)
        finite, jacobian, usable = self._checked_inputs(jacobian, losses)
        snapshot = self._snapshot()
        direction, weights = self.compute_direction(jacobian, usable)
        weights = bounded_weights(weights, jacobian.dtype)
        direction = tf.cast(direction, jacobian.dtype)
        # Skip policy: put the state back, keep the previous weights, move nowhere.
        for var, old in zip(self.state_variables, snapshot):
            var.assign(tf.where(finite, var.value, old))
        weights = tf.where(finite, weights, tf.cast(self.term_weights.value, jacobian.dtype))
        self.term_weights.assign(tf.cast(weights, self.term_weights.dtype))
        self.step.assign_add(tf.cast(finite, "int64"))
        direction = tf.where(finite, direction, tf.zeros_like(direction))
        return direction, weights, finite

    def direct(self, jacobian, losses=None):
        """Return `(direction, weights)`: the (P,) direction and the K weights logged for it.

        For every method: the direction is `aggregate`'s, and the weights are
        `weigh`'s (for `combines_rows` methods, `direction = J^T weights`).
        Advances the state once. `BalancedModel` calls this.
        """
        with one_step_at_a_time(self):
            jacobian, losses = self._prepare(jacobian, losses)
            if not self.combines_rows:
                direction, weights, _ = self._direct(jacobian, losses)
                return direction, weights
            weights, jacobian, finite = self._weigh(jacobian, losses)
        direction = tf.linalg.matvec(jacobian, weights, transpose_a=True)
        return tf.where(finite, direction, tf.zeros_like(direction)), weights

    def compute_direction(self, jacobian, losses):
        """Return `(direction, weights)` for a finite (K, P) Jacobian and update the state.

        The hook of methods whose direction is not `J^T w` (`combines_rows =
        False`): `direction` is the (P,) update and `weights` the K values
        logged as `term_weights` (each method documents what they mean).
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets `combines_rows = False` and must implement "
            "`compute_direction(jacobian, losses)`."
        )

    def aggregate(self, jacobian, losses=None, segments=None):
        """Return the (P,) direction `J^T w` for a (K, P) Jacobian.

        Args:
            jacobian: (K, P) float32 or float64 tensor or NumPy array; row i is
                the gradient of loss i.
            losses: optional (K,) loss values; methods that use them say so.
            segments: see `weigh`.
        """
        with one_step_at_a_time(self):
            jacobian, losses = self._prepare(jacobian, losses)
            if not self.combines_rows:
                return self._direct(jacobian, losses)[0]
            weights, jacobian, finite = self._weigh(jacobian, losses, self._segments(jacobian, segments))
        direction = tf.linalg.matvec(jacobian, weights, transpose_a=True)
        return tf.where(finite, direction, tf.zeros_like(direction))

    def compute_weights(self, jacobian, losses):
        """Return K weights for a finite (K, P) Jacobian and update the state.

        The default computes the float64 Gramian and calls `gramian_weights`.
        """
        return self.gramian_weights(gramian(jacobian))

    def gramian_weights(self, gramian):
        """Return K float64 weights from the float64 (K, K) Gramian `J J^T`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `gramian_weights(gramian)` "
            "(or `compute_weights(jacobian, losses)`)."
        )

    def needs_jacobian(self):
        """A boolean scalar: does the next step need the per-term gradients?

        True on the steps where `step` is a multiple of `update_every` (every
        step by default); in between `BalancedModel` trains on
        `sum_i w_i L_i` with the held weights (see `hold`) at the cost of Sum.
        """
        if self.update_every == 1:
            return tf.constant(True)
        return tf.equal(self.step % self.update_every, 0)

    def get_config(self):
        config = super().get_config()
        config["update_every"] = self.update_every
        if self.column_state:
            config["num_columns"] = self.num_columns
        return config

    def hold(self, losses=None):
        """Advance `step` without new gradients and return the held weights.

        With `losses`, a step whose losses are not all finite is not counted
        (the NaN policy: such a step leaves the state as it was).
        """
        with one_step_at_a_time(self):
            finite = tf.constant(True) if losses is None else tf.reduce_all(tf.math.is_finite(losses))
            self.step.assign_add(tf.cast(finite, "int64"))
            return self.term_weights.value

    @property
    def last_weights(self):
        """The weights of the latest `aggregate` call (a float32 variable)."""
        return self.term_weights

    def __call__(self, jacobian, **kwargs):
        return super().__call__(as_jacobian(jacobian), **kwargs)

    def call(self, jacobian):
        return self.aggregate(jacobian)


def gramian(jacobian):
    """The float64 K x K Gramian `J J^T` of a (K, P) Jacobian."""
    jacobian = tf.cast(jacobian, tf.float64)
    return tf.matmul(jacobian, jacobian, transpose_b=True)
