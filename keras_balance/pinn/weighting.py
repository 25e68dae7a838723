"""Weights inside a loss term: per point (RBA, self-adaptive) and causal in time.

A term balancer (`keras_balance.balancers`) weighs the K loss terms against
each other. The weightings here act one level down, on the per-point values
whose batch mean is a term (`PDE.compute_loss`), before the balancer sees
the term, so they compose with any term balancer: `PINNModel(pde,
balancer="relobralo", pointwise=RBA())` runs RBA inside ReLoBRaLo.

- `RBA` and `SelfAdaptiveWeights` are pointwise: one weight per collocation
  point and weighted term, `L_k = mean_j m(lambda_jk) e_jk`, where `e_jk` is
  the per-point value of term k (a squared residual `r_jk^2`).
- `CausalWeighting` weighs the residual of a time-dependent problem by time
  chunks, so that later times count only once earlier times are resolved.

Per-point state is keyed to the rows of the batch: row j of every step is
collocation point j. The weighting keeps the points it last saw; a row
whose point has changed (the set was redrawn, e.g. by residual-based
adaptive sampling) starts again from the initial weight, while rows that
kept their point keep their weight. Training therefore needs the whole
collocation set as one batch of a fixed number of rows (`full_batch`, or
`fit(xy, batch_size=len(xy))`); `PINNModel.fit` checks this and builds the
state for that number of rows.

All state lives in Keras variables (saved with the model, restored by
`BackupAndRestore`), every update runs inside the compiled step (also
under `jit_compile=True`), and a step that is skipped as not finite leaves
the state as it was (see `BalancedModel.train_step`).
"""

import math

import keras
import tensorflow as tf

from keras_balance import distribute

#: `terms="residual"`: the PDE's residual term only.
RESIDUAL = "residual"


def _check_positive(name, value, allow_zero=False, upper=None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (upper is None or value <= upper)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        bound += "" if upper is None else f" and <= {upper}"
        raise ValueError(f"Argument `{name}` must be a finite number {bound}; received {name}={value!r}.")
    return float(value)


def _check_terms(terms):
    if terms is None or terms == RESIDUAL:
        return terms
    if isinstance(terms, str):
        return (terms,)
    try:
        names = tuple(terms)
    except TypeError:
        names = None
    if not names or not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ValueError(
            "Argument `terms` must be None (every term), 'residual' (the PDE's residual term) or a "
            f"sequence of distinct term names; received terms={terms!r}."
        )
    return names


def _local_rows(values):
    """`(global_values, start)`: the replicas' rows stacked in replica order, and this replica's first row."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return values, 0
    stacked = context.all_gather(values, axis=0)
    rows = tf.shape(values)[0]
    return stacked, tf.cast(context.replica_id_in_sync_group, rows.dtype) * rows


class PointwiseWeighting(keras.layers.Layer):
    """The base of the pointwise weightings: weights `lambda_jk` per point j and weighted term k.

    A term k that is weighted becomes `L_k = mean_j m(lambda_jk) e_jk`;
    the others stay `mean_j e_jk`. A subclass defines the initial weight,
    the multiplier `m` and the update (`update`), and any extra per-point
    state (`build_state`, `reset_rows`).

    Args:
        terms: which terms to weigh: `"residual"` (the PDE's residual term,
            default), None (every term) or a sequence of term names.
        num_points: the number of collocation points (rows of the batch).
            Set by `PINNModel.fit` from the data; given here (or in a saved
            config) it builds the state at once.
        term_names: the names of all K terms, with `num_points`; set by
            `PINNModel`.
        residual_term: the name of the residual term (with `terms="residual"`).
    """

    #: The initial weight of every point.
    initial_weight = 1.0

    def __init__(self, terms=RESIDUAL, num_points=None, term_names=None, residual_term="L_f", **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.terms = _check_terms(terms)
        self.residual_term = str(residual_term)
        self.num_points = None
        self.term_names = None
        self.indices = None
        if num_points is not None:
            if term_names is None:
                raise ValueError("Argument `term_names` must be given with `num_points`; received term_names=None.")
            self.build_points(num_points, term_names, self.residual_term)

    # -- state ---------------------------------------------------------------

    def build_points(self, num_points, term_names, residual_term=None):
        """Create the per-point state for `num_points` rows and the terms `term_names` (eager)."""
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(
                f"Argument `num_points` must be a positive integer (the rows of the full batch); "
                f"received num_points={num_points!r}."
            )
        term_names = tuple(str(name) for name in term_names)
        if residual_term is not None:
            self.residual_term = str(residual_term)
        if self.terms is None:
            chosen = term_names
        elif self.terms == RESIDUAL:
            chosen = (self.residual_term,)
        else:
            chosen = self.terms
        unknown = [name for name in chosen if name not in term_names]
        if unknown:
            raise ValueError(
                f"Argument `terms` of {type(self).__name__} names terms the problem does not have: {unknown}; "
                f"its terms are {term_names}."
            )
        if self.num_points is not None:
            if (self.num_points, self.term_names) != (num_points, term_names):
                raise ValueError(
                    f"{type(self).__name__} holds per-point state for {self.num_points} points and the terms "
                    f"{self.term_names}; received a full batch of {num_points} points for the terms "
                    f"{term_names}. Use a new weighting for another collocation set."
                )
            return
        self.num_points, self.term_names = int(num_points), term_names
        self.indices = tuple(term_names.index(name) for name in chosen)
        shape = (self.num_points, len(self.indices))
        self.point_weights = self.add_weight(
            shape=shape, initializer=keras.initializers.Constant(self.initial_weight), trainable=False,
            name="point_weights",
        )
        self.points = self.add_weight(shape=(self.num_points, 2), initializer="zeros", trainable=False,
                                      name="points")
        self.has_points = self.add_weight(shape=(), initializer="zeros", trainable=False, name="has_points")
        self.build_state(shape)
        self.built = True

    def build_state(self, shape):
        """Create any further per-point state of shape `shape` (N, T)."""

    def reset_rows(self, changed):
        """Reset the further state of the rows where `changed` (N, 1) is True."""

    @property
    def state_variables(self):
        """The variables a skipped step puts back."""
        return [] if self.num_points is None else list(self.non_trainable_variables)

    # -- the rule ------------------------------------------------------------

    def multiplier(self, weights):
        """`m(lambda)`, the factor on each per-point value."""
        return tf.square(weights)

    def update(self, values, weights):
        """`(used, next)`: the weights this step's terms use and those kept for the next step.

        `values` (N, T) are the per-point values of the weighted terms
        (without gradient), `weights` the current weights (rows of a new
        point already reset).
        """
        raise NotImplementedError

    # -- applying ------------------------------------------------------------

    def apply_weights(self, x, terms, training=True):
        """The per-point `terms` (K tensors (N, 1)) with the weighted ones multiplied by `m(lambda)`.

        In training, the state advances (and rows whose point changed start
        again); in evaluation the current weights are applied unchanged.
        """
        if self.num_points is None:
            raise ValueError(
                f"{type(self).__name__} has no per-point state yet: train with `PINNModel.fit` on a full batch, "
                "or pass `num_points` and `term_names`."
            )
        chosen = [terms[i] for i in self.indices]
        dtype = chosen[0].dtype
        local = tf.stop_gradient(tf.concat([tf.reshape(t, (-1, 1)) for t in chosen], axis=1))
        points = tf.cast(tf.convert_to_tensor(x)[:, :2], self.points.dtype)
        values, start = _local_rows(tf.cast(local, self.point_weights.dtype))
        all_points, _ = _local_rows(points)
        tf.debugging.assert_equal(
            tf.shape(values)[0], self.num_points,
            message=f"{type(self).__name__}: every step must hold the full collocation set of "
                    f"{self.num_points} points (its per-point weights are keyed to the rows)",
        )
        weights = self.point_weights.value
        if training:
            changed = tf.logical_or(
                self.has_points < 0.5,
                tf.reduce_any(tf.not_equal(all_points, self.points.value), axis=1, keepdims=True),
            )
            weights = tf.where(changed, tf.cast(self.initial_weight, weights.dtype), weights)
            self.reset_rows(changed)
            used, following = self.update(values, weights)
            self.point_weights.assign(following)
            self.points.assign(all_points)
            self.has_points.assign(1.0)
        else:
            used = weights
        rows = tf.shape(local)[0]
        used = tf.cast(tf.slice(used, [start, 0], [rows, len(self.indices)]), dtype)
        factors = self.multiplier(used)
        out = list(terms)
        for column, i in enumerate(self.indices):
            out[i] = tf.reshape(factors[:, column], (-1, 1)) * terms[i]
        return out

    def mean_weights(self):
        """The mean weight of each weighted term, a (T,) tensor (logged by `PINNModel`)."""
        return tf.reduce_mean(self.point_weights.value, axis=0)

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update({
            "terms": self.terms if self.terms in (None, RESIDUAL) else list(self.terms),
            "residual_term": self.residual_term,
        })
        if self.num_points is not None:
            config.update({"num_points": self.num_points, "term_names": list(self.term_names)})
        return config


@keras.saving.register_keras_serializable(package="keras_balance")
class RBA(PointwiseWeighting):
    """Residual-based attention: per-point weights that follow the residual's size.

    At every step, before the loss is taken, each weighted point's weight
    decays and grows with its residual relative to the largest one:

        lambda_j <- gamma * lambda_j + eta * |r_j| / max_i |r_i|
        L = mean_j (lambda_j r_j)^2 = mean_j lambda_j^2 e_j

    with `|r_j| = sqrt(e_j)` from the per-point value `e_j = r_j^2`, and the
    maximum over the term's rows of the batch (a boundary term is 0 off its
    edge). No gradient is taken; the weights stay in `[0, eta / (1 - gamma)]`
    (from an initial weight in that range). This step's loss uses the
    updated weights, as the authors' code does.

    Reference: S. J. Anagnostopoulos, J. D. Toscano, N. Stergiopulos and
    G. E. Karniadakis, "Residual-based attention in physics-informed neural
    networks", Computer Methods in Applied Mechanics and Engineering 421,
    116805, 2024 (the update rule, Eq. 7, and the weighted loss). The
    defaults are those of the authors' published code: `eta = 0.001`,
    `gamma = 0.999`, weights starting at 0 (`initial = 0`), applied to the
    residual only.

    Args:
        eta: > 0, the learning rate of the weights.
        gamma: in [0, 1), their decay.
        initial: >= 0, the weight of a point before its first update (and
            after it is redrawn).
        terms, num_points, term_names, residual_term: see `PointwiseWeighting`.

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.pde.HelmholtzPDE()
    >>> model = kb.pinn.PINNModel(pde, balancer="relobralo", pointwise=kb.pinn.RBA())
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(kb.full_batch(pde.sample(64, 16, seed=0)), steps_per_epoch=3, verbose=0)
    >>> sorted(key for key in history.history if key.startswith("rba"))
    ['rba_L_f']
    """

    def __init__(self, eta=0.001, gamma=0.999, initial=0.0, terms=RESIDUAL, name="rba", **kwargs):
        self.eta = _check_positive("eta", eta)
        self.gamma = _check_positive("gamma", gamma, allow_zero=True)
        if self.gamma >= 1.0:
            raise ValueError(f"Argument `gamma` must be in [0, 1); received gamma={gamma!r}.")
        self.initial = _check_positive("initial", initial, allow_zero=True)
        self.initial_weight = self.initial
        super().__init__(terms=terms, name=name, **kwargs)

    def update(self, values, weights):
        magnitude = tf.sqrt(tf.maximum(values, 0.0))
        largest = tf.reduce_max(magnitude, axis=0, keepdims=True)
        relative = tf.math.divide_no_nan(magnitude, largest)
        following = self.gamma * weights + self.eta * relative
        return following, following

    def get_config(self):
        config = super().get_config()
        config.update({"eta": self.eta, "gamma": self.gamma, "initial": self.initial})
        return config


MASKS = ("polynomial", "sigmoid")


@keras.saving.register_keras_serializable(package="keras_balance")
class SelfAdaptiveWeights(PointwiseWeighting):
    """Self-adaptive PINN weights: per-point weights trained by gradient ascent.

    The network minimizes and the weights maximize

        L = mean_j m(lambda_j) e_j

    so the weights of the points with large residuals grow. The gradient of
    a weighted term with respect to its weights is `m'(lambda_j) e_j / N`;
    the weights ascend it with Adam (the authors' optimizer for the
    weights), one step per training step, after this step's loss has used
    the current weights. The term balancer's weight on the term is left out
    of the ascent: Adam's step does not depend on the gradient's scale.

    The mask `m` is non-negative and increasing: `"polynomial"`,
    `m(lambda) = lambda^q` (default q = 2: `mean (lambda r)^2`), or
    `"sigmoid"`, `m(lambda) = 1 / (1 + exp(-lambda))` (bounded). Weights are
    kept non-negative for the polynomial mask.

    Reference: L. D. McClenny and U. M. Braga-Neto, "Self-adaptive
    physics-informed neural networks", Journal of Computational Physics 474,
    111722, 2023 (Eqs. 3-6, the mask function of Section 2.3). The defaults,
    an Adam learning rate of 0.005 for the weights and the square mask, are
    those of the published RBA/SA code of Anagnostopoulos et al.; this class
    starts every weight at `initial = 1` rather than at uniform random
    values, so that a run does not depend on a draw.

    Args:
        learning_rate: > 0, Adam's step for the weights.
        mask: `"polynomial"` (default) or `"sigmoid"`.
        exponent: q > 0 of the polynomial mask (default 2).
        initial: the initial weight (>= 0 for the polynomial mask).
        beta_1, beta_2, epsilon: Adam's constants for the weights.
        terms, num_points, term_names, residual_term: see `PointwiseWeighting`.

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.pde.HelmholtzPDE()
    >>> model = kb.pinn.PINNModel(pde, pointwise=kb.pinn.SelfAdaptiveWeights(terms=None))
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(kb.full_batch(pde.sample(64, 16, seed=0)), steps_per_epoch=3, verbose=0)
    >>> history.history["sa_L_f"][-1] > 1.0  # the weights have ascended
    True
    """

    def __init__(self, learning_rate=0.005, mask="polynomial", exponent=2.0, initial=1.0, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-7, terms=RESIDUAL, name="sa", **kwargs):
        self.learning_rate = _check_positive("learning_rate", learning_rate)
        if mask not in MASKS:
            raise ValueError(f"Argument `mask` must be one of {MASKS}; received mask={mask!r}.")
        self.mask = mask
        self.exponent = _check_positive("exponent", exponent)
        if not (isinstance(initial, (int, float)) and not isinstance(initial, bool) and math.isfinite(initial)):
            raise ValueError(f"Argument `initial` must be a finite number; received initial={initial!r}.")
        if mask == "polynomial" and initial < 0:
            raise ValueError(f"Argument `initial` must be >= 0 with the polynomial mask; received initial={initial!r}.")
        self.initial = float(initial)
        self.initial_weight = self.initial
        self.beta_1 = _check_positive("beta_1", beta_1, allow_zero=True)
        self.beta_2 = _check_positive("beta_2", beta_2, allow_zero=True)
        for arg, value in (("beta_1", self.beta_1), ("beta_2", self.beta_2)):
            if value >= 1.0:
                raise ValueError(f"Argument `{arg}` must be in [0, 1); received {arg}={value!r}.")
        self.epsilon = _check_positive("epsilon", epsilon)
        super().__init__(terms=terms, name=name, **kwargs)

    def build_state(self, shape):
        self.first_moments = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                             name="first_moments")
        self.second_moments = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                              name="second_moments")
        self.ascent_steps = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                            name="ascent_steps")

    def reset_rows(self, changed):
        self.first_moments.assign(tf.where(changed, 0.0, self.first_moments.value))
        self.second_moments.assign(tf.where(changed, 0.0, self.second_moments.value))

    def multiplier(self, weights):
        if self.mask == "sigmoid":
            return tf.sigmoid(weights)
        return tf.pow(weights, self.exponent)

    def mask_slope(self, weights):
        """`m'(lambda)`."""
        if self.mask == "sigmoid":
            s = tf.sigmoid(weights)
            return s * (1.0 - s)
        return self.exponent * tf.pow(weights, self.exponent - 1.0)

    def update(self, values, weights):
        count = tf.cast(tf.shape(values)[0], values.dtype)
        gradient = self.mask_slope(weights) * values / count
        step = self.ascent_steps.value + 1.0
        first = self.beta_1 * self.first_moments.value + (1.0 - self.beta_1) * gradient
        second = self.beta_2 * self.second_moments.value + (1.0 - self.beta_2) * tf.square(gradient)
        self.first_moments.assign(first)
        self.second_moments.assign(second)
        self.ascent_steps.assign(step)
        first_hat = first / (1.0 - tf.pow(self.beta_1, step))
        second_hat = second / (1.0 - tf.pow(self.beta_2, step))
        following = weights + self.learning_rate * first_hat / (tf.sqrt(second_hat) + self.epsilon)
        if self.mask == "polynomial":
            following = tf.maximum(following, 0.0)
        return weights, following

    def get_config(self):
        config = super().get_config()
        config.update({
            "learning_rate": self.learning_rate, "mask": self.mask, "exponent": self.exponent,
            "initial": self.initial, "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
        })
        return config


@keras.saving.register_keras_serializable(package="keras_balance")
class CausalWeighting(keras.layers.Layer):
    """Causal weights: the residual at later times counts once earlier times are resolved.

    The time interval `[t0, t1]` is split into M equal chunks. With `L_i`
    the mean of the residual's per-point values over the batch's points in
    chunk i (in time order),

        w_i = exp(-epsilon * sum_{k < i} L_k)      (w_0 = 1, no gradient)
        L_r = (1 / N) sum_i w_i S_i

    where `S_i` is the sum of the per-point values in chunk i and N the
    batch's rows, so that with every `w_i = 1` (epsilon = 0) the term is the
    plain batch mean. The weights are logged as `w_<term>_t<i>` (i from 0),
    and the current epsilon as `causal_epsilon`.

    An epsilon schedule: `epsilon` may be an increasing sequence, e.g.
    `(0.01, 0.1, 1, 10, 100)`; training moves to the next value once every
    causal weight exceeds `threshold` (the smallest, `w_{M-1}`, is the one
    that matters), as in the paper's Algorithm 1 (there the last value's
    criterion also stops training; here the last value is kept).

    Reference: S. Wang, S. Sankaran and P. Perdikaris, "Respecting causality
    for training physics-informed neural networks", Computer Methods in
    Applied Mechanics and Engineering 421, 116813, 2024 (Eqs. 2.11-2.12,
    Algorithm 1; M = 32 chunks and epsilon in [1e-2, 1e-1, 1, 10, 100] with
    threshold 0.99 in its examples; jaxpi uses epsilon = 1 and 16-32 chunks).

    Args:
        chunks: M >= 1, the number of time chunks.
        epsilon: the causality parameter (> 0), or an increasing sequence of
            them (the schedule).
        threshold: in (0, 1]: the smallest weight at which the schedule
            moves on.
        term: the term to weigh (default: the PDE's residual term).

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.pde.BurgersPDE()
    >>> model = kb.pinn.PINNModel(pde, causal=kb.pinn.CausalWeighting(chunks=4, epsilon=1.0))
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(kb.full_batch(pde.sample(64, 16, seed=0)), steps_per_epoch=2, verbose=0)
    >>> [key for key in history.history if key.startswith("w_L_f_t")]
    ['w_L_f_t0', 'w_L_f_t1', 'w_L_f_t2', 'w_L_f_t3']
    """

    def __init__(self, chunks=32, epsilon=1.0, threshold=0.99, term=None, name="causal", **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(name=name, **kwargs)
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"Argument `chunks` must be a positive integer; received chunks={chunks!r}.")
        self.chunks = chunks
        schedule = list(epsilon) if isinstance(epsilon, (list, tuple)) else [epsilon]
        ok = bool(schedule) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in schedule
        ) and all(a < b for a, b in zip(schedule, schedule[1:]))
        if not ok:
            raise ValueError(
                "Argument `epsilon` must be a positive number or an increasing sequence of them; "
                f"received epsilon={epsilon!r}."
            )
        self.schedule = tuple(float(v) for v in schedule)
        self.threshold = _check_positive("threshold", threshold, upper=1.0)
        if term is not None and not isinstance(term, str):
            raise ValueError(f"Argument `term` must be None or a term name; received term={term!r}.")
        self.term = term
        self.stage = self.add_weight(shape=(), initializer="zeros", trainable=False, name="stage")
        self.causal_weights = self.add_weight(shape=(chunks,), initializer="ones", trainable=False,
                                              name="causal_weights")
        self.built = True

    @property
    def state_variables(self):
        return list(self.non_trainable_variables)

    def epsilon(self):
        """The current epsilon (a scalar tensor)."""
        values = tf.constant(self.schedule, dtype="float32")
        return tf.gather(values, tf.cast(self.stage.value, "int32"))

    def chunk_of(self, t, time_domain):
        """The chunk index (int32, shape of `t`) of each time."""
        t0, t1 = time_domain
        position = (tf.cast(t, "float32") - t0) / (t1 - t0) * self.chunks
        return tf.cast(tf.clip_by_value(tf.floor(position), 0.0, self.chunks - 1.0), "int32")

    def reduce(self, t, values, time_domain, training=True):
        """The causally weighted mean of the per-point `values` (N, 1) at times `t` (N, 1)."""
        chunk = tf.reshape(self.chunk_of(t, time_domain), (-1,))
        one_hot = tf.one_hot(chunk, self.chunks, dtype=values.dtype)  # (N, M)
        flat = tf.reshape(values, (-1,))
        sums = tf.linalg.matvec(one_hot, flat, transpose_a=True)  # (M,)
        counts = tf.reduce_sum(one_hot, axis=0)
        rows = tf.cast(tf.shape(flat)[0], values.dtype)
        global_sums, global_counts = tf.stop_gradient(sums), counts
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            global_sums, global_counts = context.all_reduce(
                tf.distribute.ReduceOp.SUM, [global_sums, global_counts]
            )
        means = tf.math.divide_no_nan(global_sums, global_counts)
        earlier = tf.math.cumsum(means, exclusive=True)
        weights = tf.stop_gradient(tf.exp(-tf.cast(self.epsilon(), values.dtype) * earlier))
        if training:
            self.causal_weights.assign(tf.cast(weights, "float32"))
            ready = tf.logical_and(tf.reduce_min(weights) > self.threshold,
                                   self.stage.value < len(self.schedule) - 1)
            self.stage.assign(self.stage.value + tf.cast(ready, "float32"))
        return tf.reduce_sum(weights * sums) / rows

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        epsilon = self.schedule[0] if len(self.schedule) == 1 else list(self.schedule)
        config.update({"chunks": self.chunks, "epsilon": epsilon, "threshold": self.threshold, "term": self.term})
        return config


__all__ = ["CausalWeighting", "PointwiseWeighting", "RBA", "SelfAdaptiveWeights"]
