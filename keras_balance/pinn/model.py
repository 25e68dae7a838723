"""Models that return a field together with the derivatives a PDE asks for."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import pde as pde_lib
from keras_balance.models import BalancedModel
from keras_balance.pinn.derivatives import parse_derivative, partial_derivatives
from keras_balance.pinn import sampling as sampling_lib
from keras_balance.pinn import weighting as weighting_lib
from keras_balance.pinn.networks import mlp
from keras_balance.pinn.ntk import term_traces
from keras_balance.terms import LatestValue


@keras.saving.register_keras_serializable(package="keras_balance")
class PINN(keras.Model):
    """Wrap a network `(x, y) -> u` so that it returns u and its derivatives.

    The input is an (N, 2) tensor of physical coordinates. The network sees
    them scaled to [-1, 1] on `domain`, and its output is multiplied by
    `output_scale`; the derivatives are taken with respect to the physical
    coordinates, with nested GradientTapes (one `tape.gradient` per
    coordinate and order, see `partial_derivatives`).

    The output is (N, C): one column per name of `derivatives`, in order, e.g.
    `("u", "u_xx", "u_yy")`. This is what `PDE.compute_loss` takes as `preds`,
    so a PINN can be compiled with a Keras loss built on the PDE:

    ```python
    pde = HelmholtzPDE()
    model = PINN(mlp(), pde.derivatives, pde.domain)
    model.compile(optimizer="adam", loss=ReLoBRaLoLoss(pde))
    xy = pde.sample()
    model.fit(full_batch(xy, xy), steps_per_epoch=1000)
    ```

    Args:
        network: a Keras model mapping (N, 2) scaled coordinates to (N, 1).
        derivatives: names of the output columns; the first must be the field.
        domain: `((x0, x1), (y0, y1))`, mapped to [-1, 1]^2.
        output_scale: a constant multiplying the network's output (the
            characteristic size of the solution).
        periods: `(Lx, Ly)`, the period of the field in each coordinate, or
            None for a coordinate it is not periodic in (default: neither).
            The network sees a periodic coordinate x as the pair
            `cos(2 pi (x - x0) / L)`, `sin(2 pi (x - x0) / L)` instead of its
            scaled value, so the field and all its derivatives are periodic
            with period L by construction (the periodic embedding of
            S. Dong and N. Ni, "A method for representing periodic functions
            and enforcing exactly periodic boundary conditions with deep
            neural networks", J. Comput. Phys. 435, 2021); the network then
            takes 3 inputs (4 if both are periodic).
    """

    def __init__(self, network, derivatives, domain=((-1.0, 1.0), (-1.0, 1.0)), output_scale=1.0, periods=None,
                 **kwargs):
        super().__init__(**kwargs)
        derivatives = tuple(derivatives)
        if not derivatives:
            raise ValueError("Argument `derivatives` must name at least the field, e.g. ('u',).")
        parsed = [parse_derivative(name) for name in derivatives]
        if parsed[0][1]:
            raise ValueError(
                f"Argument `derivatives` must start with the field itself (e.g. 'u'); "
                f"received {derivatives!r}."
            )
        fields = {field for field, _ in parsed}
        if len(fields) != 1:
            raise ValueError(
                f"Argument `derivatives` must all belong to one field; received {derivatives!r}."
            )
        try:
            (x0, x1), (y0, y1) = [(float(lo), float(hi)) for lo, hi in domain]
        except (TypeError, ValueError):
            raise ValueError(f"Argument `domain` must be ((x0, x1), (y0, y1)); received domain={domain!r}.") from None
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"Argument `domain` must have x1 > x0 and y1 > y0; received domain={domain!r}.")
        self.network = network
        self.derivative_names = derivatives
        self.orders = tuple(order for _, order in parsed)
        self.domain = ((x0, x1), (y0, y1))
        self.output_scale = float(output_scale)
        self.periods = _check_periods(periods)
        self._center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        self._half = ((x1 - x0) / 2.0, (y1 - y0) / 2.0)
        if network.built:
            self.build((None, 2))

    @property
    def input_features(self):
        """The number of inputs of the network: 2, plus 1 per periodic coordinate."""
        return 2 + sum(period is not None for period in self.periods)

    def field(self, x, y, training=False):
        """The network's field at physical coordinates `x`, `y` of shape (N, 1)."""
        features = []
        for i, value in enumerate((x, y)):
            if self.periods[i] is None:
                features.append((value - self._center[i]) / self._half[i])
            else:
                angle = (2.0 * math.pi / self.periods[i]) * (value - (self._center[i] - self._half[i]))
                features += [tf.cos(angle), tf.sin(angle)]
        if x.shape[0] is None:
            # An unknown number of rows (a growing collocation set): under
            # XLA the gradient of a concat is then a dynamic slice whose own
            # gradient (the second derivatives) TensorFlow does not have.
            scaled = tf.stack([feature[:, 0] for feature in features], axis=1)
        else:
            scaled = tf.concat(features, axis=1)
        return self.output_scale * self.network(scaled, training=training)

    def fields(self, inputs, training=False):
        """The field and its derivatives as a dict of (N, 1) tensors, by name.

        Unlike the concatenated output of `call`, each entry depends only on
        its own part of the graph: the gradient of a term that uses the field
        alone (a boundary condition) does not pass through the derivatives.
        """
        inputs = tf.convert_to_tensor(inputs)
        if inputs.shape.rank != 2 or inputs.shape[-1] != 2:
            raise ValueError(
                f"{self.name} expects coordinates of shape (N, 2); received shape {tuple(inputs.shape)}."
            )
        # Coordinates, field and derivatives in the variables' dtype: float64
        # under a float64 policy, float32 under a mixed one (the network
        # itself may compute in 16 bits).
        dtype = self.network.variable_dtype
        inputs = tf.cast(inputs, dtype)
        x, y = inputs[:, :1], inputs[:, 1:2]
        values = partial_derivatives(
            lambda a, b: tf.cast(self.field(a, b, training=training), dtype), x, y, self.orders
        )
        return {name: tf.cast(values[order], dtype) for name, order in zip(self.derivative_names, self.orders)}

    def call(self, inputs, training=False):
        fields = self.fields(inputs, training=training)
        return tf.concat([fields[name] for name in self.derivative_names], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.orders))

    def build(self, input_shape):
        # The variables are the (functional, already built) network's.
        if not self.network.built:
            self.network.build((input_shape[0], self.input_features))
        self.built = True

    def predict_field(self, points, batch_size=4096):
        """The field alone (no derivatives) at an (M, 2) array of points, as NumPy."""
        points = tf.convert_to_tensor(points, dtype=self.network.variable_dtype)
        outputs = [
            self.field(points[i : i + batch_size, :1], points[i : i + batch_size, 1:2])
            for i in range(0, int(points.shape[0]), batch_size)
        ]
        return tf.concat(outputs, axis=0).numpy()[:, 0]

    def get_config(self):
        return {
            "network": keras.saving.serialize_keras_object(self.network),
            "derivatives": list(self.derivative_names),
            "domain": [list(pair) for pair in self.domain],
            "output_scale": self.output_scale,
            "name": self.name,
            **({"periods": list(self.periods)} if self.periods != (None, None) else {}),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"], custom_objects=custom_objects
        )
        return cls(**config)


def build_pinn(pde, width=50, depth=4, activation="tanh", seed=None, output_scale=None):
    """A `PINN` for `pde`: an MLP with the PDE's derivatives and domain.

    `output_scale` defaults to the PDE's `characteristic_scale` (when it has
    one); a problem periodic in a coordinate (its `periods`) gets a network
    periodic in it (see `PINN`).
    """
    if output_scale is None:
        output_scale = getattr(pde, "characteristic_scale", 1.0)
    periods = _check_periods(getattr(pde, "periods", None))
    inputs = 2 + sum(period is not None for period in periods)
    network = mlp(inputs, 1, width=width, depth=depth, activation=activation, seed=seed)
    return PINN(network, pde.derivatives, pde.domain, output_scale=output_scale, periods=periods, name="pinn")


def _check_periods(periods):
    """`(Lx, Ly)` with positive floats or None; None stands for `(None, None)`."""
    if periods is None:
        return (None, None)
    try:
        pair = tuple(periods)
        ok = len(pair) == 2 and all(p is None or (float(p) > 0 and math.isfinite(float(p))) for p in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"Argument `periods` must be None or a pair of positive periods or None, e.g. (2.0, None); "
            f"received periods={periods!r}."
        )
    return tuple(None if p is None else float(p) for p in pair)


def _check_pde(pde):
    """Raise a clear error unless `pde` offers what `PINNModel` uses of a PDE."""
    missing = [name for name in ("term_names", "derivatives", "compute_loss") if not hasattr(pde, name)]
    if missing:
        raise TypeError(
            "Argument `pde` must be a `keras_balance.pde.PDE` (with `term_names`, `derivatives` "
            f"and `compute_loss`); received pde={pde!r}, which has no {', '.join(map(repr, missing))}."
        )


def _check_solution(pde, solution):
    """Raise a clear error when `solution` does not return the columns of `pde.derivatives`."""
    expected = tuple(pde.derivatives)
    if isinstance(solution, PINN):
        if tuple(solution.derivative_names) != expected:
            raise ValueError(
                f"Argument `solution` must return the columns of {type(pde).__name__}.derivatives, "
                f"{expected}, in this order; received a PINN with derivatives "
                f"{tuple(solution.derivative_names)} (build it with `build_pinn(pde)` or "
                "`PINN(network, pde.derivatives, pde.domain)`)."
            )
        return
    outputs = getattr(solution, "outputs", None)
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        width = tuple(outputs[0].shape)[-1] if len(outputs[0].shape) else None
        if isinstance(width, int) and width != len(expected):
            raise ValueError(
                f"Argument `solution` must return {len(expected)} columns, {expected} "
                f"({type(pde).__name__}.derivatives); received a model with output shape "
                f"{tuple(outputs[0].shape)}."
            )


@keras.saving.register_keras_serializable(package="keras_balance")
class PINNModel(BalancedModel):
    """A `BalancedModel` that trains a `PINN` on the terms of a PDE.

    `x` is an (N, 2) batch of collocation points; the terms are the batch
    means of `pde.compute_loss`, named after `pde.term_names`.

    The solution must return the columns of `pde.derivatives`, in order: a
    `PINN` whose `derivatives` differ (a network built for another problem)
    is an error, and so is a network whose static output width is not C.

    Args:
        pde: a `keras_balance.pde.PDE`.
        solution: the `PINN` to train (default: `build_pinn(pde)`).
        balancer: see `BalancedModel`.
        sampler: None, or an adaptive sampler of the collocation points
            (`RAD`, `RARD`, see `keras_balance.pinn.sampling`): the model
            holds its points, so checkpoints save and restore them.
        pointwise: None, or a `PointwiseWeighting` (e.g. `RBA()`).
        causal: None, or a `CausalWeighting` (a time-dependent `pde` only).

    Weights inside the terms (see `keras_balance.pinn.weighting`) compose
    with any term balancer: `pointwise` weighs the points of some terms
    (`RBA`, `SelfAdaptiveWeights`), `causal` weighs the residual of a
    time-dependent problem by time (`CausalWeighting`). Their weights are
    logged with the terms: `<name>_<term>`, the mean point weight of a
    weighted term (`rba_L_f`), and `w_<term>_t<i>` with `causal_epsilon`.
    Pointwise weights need the whole collocation set as every batch (see
    `fit`).
    """

    def __init__(self, pde, solution=None, balancer="sum", sampler=None, pointwise=None, causal=None, **kwargs):
        _check_pde(pde)
        if solution is not None:
            _check_solution(pde, solution)
        super().__init__(balancer=balancer, term_names=pde.term_names, **kwargs)
        self.pde = pde
        self.solution = build_pinn(pde) if solution is None else solution
        self.sampler = sampling_lib.check_sampler(pde, sampler)
        self._attach_weightings(pointwise, causal)
        if isinstance(self.solution, PINN) and self.solution.network.built:
            # Ready to save, restore (BackupAndRestore) and train as it is.
            self.build((None, 2))

    def build(self, input_shape):
        # Built models save and reload their optimizer state with them.
        if not self.solution.built:
            self.solution.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        return self.solution(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.pop("term_names", None)  # the PDE's
        config["pde"] = pde_lib.serialize(self.pde)
        config["solution"] = keras.saving.serialize_keras_object(self.solution)
        if self.sampler is not None:
            config["sampler"] = keras.saving.serialize_keras_object(self.sampler)
        for key in ("pointwise", "causal"):
            if getattr(self, key) is not None:
                config[key] = keras.saving.serialize_keras_object(getattr(self, key))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        pde = pde_lib.deserialize(config.pop("pde"), custom_objects=custom_objects)
        solution = keras.saving.deserialize_keras_object(config.pop("solution"), custom_objects=custom_objects)
        for key in ("sampler", "pointwise", "causal"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        balancer = config.pop("balancer", "sum")
        config.pop("term_names", None)
        return cls(pde, solution, balancer=balancers_lib.get(balancer), **config)

    def ntk_traces(self, x, balancer=None):
        """The K traces of the terms' NTK blocks on the batch `x`, a (K,) tensor (see `pinn.ntk.term_traces`).

        From the per-point terms of `point_terms` (before any pointwise or
        causal weighting) and the trainable variables. `balancer`: one that
        weighs by the traces (`NTKWeighting`), whose `means` and `points`
        (rows drawn from its seed and step) are used; None: every row, the
        diagonal's sum over the batch size.
        """
        means, points, seed, step = "batch", None, 0, 0
        if balancer is not None:
            means, points = balancer.means, balancer.points
            seed, step = balancer.row_draw()
        x = tf.convert_to_tensor(x)
        if not self.built:
            self.build(tuple(x.shape))
        return term_traces(lambda rows: self.point_terms(rows, training=True)[1], x, self.trainable_variables,
                           means=means, points=points, seed=seed, step=step)

    def compute_loss_terms(self, x, y=None, y_pred=None, sample_weight=None, training=True):
        x = tf.convert_to_tensor(x)
        terms = self.pde.compute_loss(x[:, :1], x[:, 1:2], y_pred)
        return self.reduce_terms(x, terms, training=training)

    def point_terms(self, x, training=True):
        """`(y_pred, terms)`: the prediction and the K per-point terms, each (N, 1), of a batch.

        The per-point values whose batch means are the loss terms (see
        `PDE.compute_loss`), before any pointwise or causal weighting; a
        term that uses only the field has a gradient that skips the
        derivative graph (see `forward_terms`).
        """
        x = tf.convert_to_tensor(x)
        if not self.built:
            # The fields bypass `__call__`, which would mark the models built
            # (a built model saves and restores its optimizer state).
            self.build(tuple(x.shape))
        if not isinstance(self.solution, PINN) or list(self.solution.derivative_names) != list(self.pde.derivatives):
            y_pred = self(x, training=training)
            return y_pred, self.pde.compute_loss(x[:, :1], x[:, 1:2], y_pred)
        fields = self.solution.fields(x, training=training)
        y_pred = tf.concat([fields[name] for name in self.pde.derivatives], axis=1)
        x = tf.cast(x, y_pred.dtype)
        return y_pred, list(self.pde.residuals(x[:, :1], x[:, 1:2], fields))

    # -- weights inside the terms ---------------------------------------------

    def _attach_weightings(self, pointwise, causal):
        if pointwise is not None and not isinstance(pointwise, weighting_lib.PointwiseWeighting):
            raise TypeError(
                "Argument `pointwise` must be None or a `keras_balance.pinn.PointwiseWeighting` (e.g. `RBA()`); "
                f"received pointwise={pointwise!r}."
            )
        residual = getattr(self.pde, "residual_term", "L_f")
        if causal is not None:
            if not isinstance(causal, weighting_lib.CausalWeighting):
                raise TypeError(
                    "Argument `causal` must be None or a `keras_balance.pinn.CausalWeighting`; "
                    f"received causal={causal!r}."
                )
            if getattr(self.pde, "time_axis", None) is None:
                raise ValueError(
                    f"Argument `causal` needs a time-dependent problem (time_axis set); {type(self.pde).__name__} "
                    "is static."
                )
            term = causal.term or residual
            if term not in self.term_names:
                raise ValueError(
                    f"Argument `causal` weighs the term {term!r}, which {type(self.pde).__name__} does not have; "
                    f"its terms are {tuple(self.term_names)}."
                )
        if pointwise is not None and pointwise.num_points is not None:
            pointwise.build_points(pointwise.num_points, self.term_names, residual)
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.pointwise = pointwise
            self.causal = causal
            self.weighting_metrics = []
            if causal is not None:
                term = causal.term or residual
                self.weighting_metrics += [LatestValue(name=f"w_{term}_t{i}") for i in range(causal.chunks)]
                self.weighting_metrics.append(LatestValue(name="causal_epsilon"))
            if pointwise is not None:
                self.weighting_metrics += [
                    LatestValue(name=f"{pointwise.name}_{name}") for name in self._pointwise_names(pointwise)
                ]
        finally:
            if locked:
                self._tracker.lock()

    def _pointwise_names(self, pointwise):
        if pointwise.terms is None:
            return tuple(self.term_names)
        if pointwise.terms == weighting_lib.RESIDUAL:
            return (getattr(self.pde, "residual_term", "L_f"),)
        return tuple(pointwise.terms)

    def step_state_variables(self):
        variables = []
        for weighting in (self.pointwise, self.causal):
            if weighting is not None:
                variables += weighting.state_variables
        return variables

    def _prepare_pointwise(self, x, batch_size):
        """Build the pointwise state for the rows of the full batch that `fit` trains on."""
        if isinstance(x, tf.data.Dataset):
            spec = tf.nest.flatten(x.element_spec)[0]
            rows = spec.shape[0] if spec.shape.rank else None
        else:
            first = tf.nest.flatten(x)[0] if x is not None else None
            rows = int(np.shape(first)[0]) if first is not None and np.ndim(first) == 2 else None
            if rows is not None and (batch_size is None or batch_size < rows):
                raise ValueError(
                    f"Pointwise weights ({type(self.pointwise).__name__}) are kept per collocation point, so every "
                    f"step must train on the whole set: pass `batch_size={rows}` (the number of points) or "
                    f"`keras_balance.full_batch(points)`; received batch_size={batch_size!r}."
                )
        if rows is None:
            raise ValueError(
                f"Pointwise weights ({type(self.pointwise).__name__}) need batches of a fixed, known number of "
                "rows (the whole collocation set every step, e.g. `keras_balance.full_batch(points)`); "
                f"received x={x!r}."
            )
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1 and rows % replicas:
            raise ValueError(
                f"Pointwise weights under {replicas} replicas need a number of points divisible by the replicas; "
                f"received {rows} points."
            )
        with self.distribute_strategy.scope():  # mirrored state under a strategy
            self.pointwise.build_points(int(rows), self.term_names, getattr(self.pde, "residual_term", "L_f"))

    def fit(self, *args, **kwargs):
        """`BalancedModel.fit`; with pointwise weights, every batch must be the whole collocation set.

        The pointwise state is built here for the number of rows of the
        data (`x` as an array with `batch_size` at least its rows, or a
        dataset whose batches have a static number of rows, such as
        `full_batch(points)`).
        """
        if self.pointwise is not None:
            x = args[0] if args else kwargs.get("x")
            batch_size = args[2] if len(args) > 2 else kwargs.get("batch_size")
            self._prepare_pointwise(x, batch_size)
        return super().fit(*args, **kwargs)

    def reduce_terms(self, x, terms, training=True):
        """The K scalar terms: batch means of the per-point `terms`, after the pointwise and causal weights."""
        if self.pointwise is not None:
            terms = self.pointwise.apply_weights(x, terms, training=training)
        scalars = [tf.reduce_mean(term) for term in terms]
        if self.causal is not None:
            index = list(self.term_names).index(self.causal.term or self.pde.residual_term)
            x = tf.convert_to_tensor(x)
            t = self.pde.time(x[:, :1], x[:, 1:2])
            scalars[index] = self.causal.reduce(t, terms[index], self.pde.time_domain, training=training)
        return scalars

    def _record(self, total, terms, weights, y, y_pred, sample_weight, skipped=None):
        metrics = iter(self.weighting_metrics)
        if self.causal is not None:
            for i in range(self.causal.chunks):
                next(metrics).update_state(self.causal.causal_weights[i])
            next(metrics).update_state(self.causal.epsilon())
        if self.pointwise is not None and self.pointwise.num_points is not None:
            means = self.pointwise.mean_weights()
            for i in range(len(self.pointwise.indices)):
                next(metrics).update_state(means[i])
        return super()._record(total, terms, weights, y, y_pred, sample_weight, skipped)

    def forward_terms(self, x, y=None, sample_weight=None, training=True):
        """The terms from the PINN's separate fields (see `PINN.fields`).

        Same values as `compute_loss_terms(x, y, self(x))`, but a term that
        uses only the field (a boundary term) has a gradient that skips the
        derivative graph: with a gradient-level balancer, its per-term
        gradient then costs a first-order backward pass.
        """
        y_pred, terms = self.point_terms(x, training=training)
        return y_pred, self.reduce_terms(x, terms, training=training)
