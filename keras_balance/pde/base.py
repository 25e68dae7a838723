"""The base class of a PDE problem on a rectangle."""

import abc
import math
import numbers

import numpy as np
import tensorflow as tf

from keras_balance.pde.serialization import register

EDGES = ("left", "right", "bottom", "top")

#: Collocation sampling methods of `PDE.sample`.
SAMPLING_METHODS = ("uniform", "sobol", "halton")


def _sequence(method, dim, count, skip):
    """Points `skip` to `skip + count - 1` of a `dim`-D low-discrepancy sequence, float64 (count, dim)."""
    if count == 0:
        return np.zeros((0, dim))
    if method == "sobol":
        return tf.math.sobol_sample(dim, count, skip=skip, dtype=tf.float64).numpy()
    import tensorflow_probability as tfp

    indices = tf.range(skip, skip + count, dtype=tf.int64)
    return tfp.mcmc.sample_halton_sequence(
        dim, sequence_indices=indices, dtype=tf.float64, randomized=False
    ).numpy()


def sin(values):
    """`sin` of a tensor (as a tensor) or of an array (as an array)."""
    return tf.sin(values) if tf.is_tensor(values) else np.sin(values)


#: How a term's per-point values become its scalar (see `PDE` and `own_mean`).
MEANS = ("batch", "own")


def check_means(means):
    if means not in MEANS:
        raise ValueError(f"Argument `means` must be one of {MEANS}; received means={means!r}.")
    return means


def own_mean(values, mask):
    """Per-point values whose mean over the batch is the mean of `values` over the points where `mask` is 1.

    `mask * values / mean(mask)`: a term taken over its own points (the
    interior for a residual, an edge for a boundary condition) rather than
    over the whole batch; 0 when the batch holds none of its points.
    """
    return tf.math.divide_no_nan(mask * values, tf.reduce_mean(mask))


def check_number(name, value, low=-math.inf, high=math.inf, low_open=False, high_open=False):
    """Validate a finite real constructor argument; returns it as a float."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Argument `{name}` must be a finite number in {interval}; received {name}={value!r}.")
    return value


def check_same_rows(where, **arrays):
    """Raise a ValueError when the arrays' (statically known) numbers of rows differ.

    `arrays` maps argument names to tensors or arrays; `where` names the
    callee in the message. Rows that are not known before the graph runs
    are not checked.
    """
    shapes = {}
    for name, value in arrays.items():
        shape = tf.TensorShape(value.shape if hasattr(value, "shape") else np.shape(value))
        shapes[name] = None if shape.rank is None else tuple(shape)
    rows = {shape[0] for shape in shapes.values() if shape and shape[0] is not None}
    if len(rows) > 1:
        names = [f"`{name}`" for name in shapes]
        received = ", ".join(f"{name} of shape {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"{where} expects {', '.join(names[:-1])} and {names[-1]} with the same number of rows "
            f"(one per point); received {received}."
        )


def _is_count(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 0


class PDE(abc.ABC):
    """A boundary-value problem on the rectangle `[x0, x1] x [y0, y1]`.

    Subclasses declare:

    - `term_names`: the names of the K loss terms, e.g. `("L_f", "L_b")`;
    - `derivatives`: the columns the model must predict, in order, e.g.
      `("u", "u_xx", "u_yy")`. A name is the field followed by the coordinates
      it is differentiated by: `"w_xxyy"` is d^4 w / dx^2 dy^2;
    - `domain`: `((x0, x1), (y0, y1))`;

    and implement `residuals(x, y, fields)`, which returns the K per-point
    terms from a dict of the predicted columns, and `exact(x, y)`.

    `compute_loss(x, y, preds)` keeps the signature of Bischof's article:
    `x` and `y` have shape (N, 1), `preds` has shape (N, C) with the columns
    of `derivatives` (exactly C columns; a different number is an error), and
    it returns a list of K per-point terms of shape (N, 1). The scalar loss of
    term i is the mean of its per-point values over the whole batch (interior
    and boundary points together), as in the article. A boundary term is zero
    at every point off its edges, so a batch without boundary points gives it
    the value 0 (the mean of N zeros), which keeps the mean of equal-sized
    batches equal to the mean over their union (mini-batches, the shares of
    the replicas under `tf.distribute`); an empty batch (N = 0) gives every
    term the value NaN (a mean over no points), and a `BalancedModel` skips
    such a step.

    A time-dependent problem (initial-boundary-value problem) sets
    `time_axis = 1`: its second coordinate is the time t, so its domain is
    `((x0, x1), (t0, t1))`, a column name's `y` is t (`"u_y"` is du/dt), the
    bottom edge is the initial time and the top edge (the final time) gets
    no sample points (`boundary_edges`). It names its initial-condition term
    in `initial_term` and its residual term in `residual_term` (`"L_f"` by
    default); `time(x, y)` gives each point's time and `time_domain` the
    interval `(t0, t1)`, which is what a causal weighting of the residual
    reads. Static problems keep `time_axis = None`. A problem periodic in x
    declares its period in `periods`, and `build_pinn` builds a network
    that is periodic in x.

    A subclass whose constructor takes arguments returns them from
    `get_config()`; `from_config(config)` calls `cls(**config)`. Every
    subclass is registered for Keras serialization when it is defined (see
    `keras_balance.pde.serialization`), so the models and losses built on it
    save and load with it.
    """

    term_names = ()
    derivatives = ()
    domain = ((0.0, 1.0), (0.0, 1.0))
    #: The coordinate that is time: None for a static problem, 1 for a
    #: time-dependent one (the second coordinate, `y`, is t; see `time`).
    time_axis = None
    #: The name of the initial-condition term (a time-dependent problem), or None.
    initial_term = None
    #: The name of the PDE-residual term.
    residual_term = "L_f"
    #: The period of the solution in each coordinate, or None: a problem
    #: periodic in x declares `(x1 - x0, None)`, and `build_pinn` gives its
    #: network a periodic embedding of x (see `keras_balance.pinn.PINN`).
    periods = (None, None)

    @property
    def num_terms(self):
        return len(self.term_names)

    @property
    def characteristic_scale(self):
        """A magnitude of the solution known from the problem's data alone.

        A PINN multiplies its network's output by it (`output_scale`), so the
        network works with values of order one. Default 1.
        """
        return 1.0

    @property
    def field(self):
        """Name of the unknown field (the first column of `preds`)."""
        return self.derivatives[0]

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)

    def get_config(self):
        """The constructor arguments of the problem, JSON-compatible. Default `{}`."""
        return {}

    @classmethod
    def from_config(cls, config):
        """The problem built from the output of `get_config()`."""
        return cls(**config)

    # -- time ----------------------------------------------------------------

    @property
    def is_time_dependent(self):
        """True when one coordinate is time (`time_axis` is not None)."""
        return self.time_axis is not None

    @property
    def time_domain(self):
        """`(t0, t1)`, the time interval of a time-dependent problem; None for a static one."""
        return None if self.time_axis is None else tuple(self.domain[self.time_axis])

    def time(self, x, y):
        """The time coordinate of each point (`y` when `time_axis` is 1), same type and shape.

        Raises:
            ValueError: for a static problem (no time axis).
        """
        if self.time_axis is None:
            raise ValueError(f"{type(self).__name__} is a static problem: it has no time axis (time_axis=None).")
        return (x, y)[self.time_axis]

    def initial_mask(self, x, y):
        """A float mask, 1 at the points of the initial time t0 and 0 elsewhere (see `time`)."""
        t = tf.convert_to_tensor(self.time(x, y))
        return tf.cast(tf.abs(t - self.time_domain[0]) <= self.boundary_tolerance, t.dtype)

    # -- geometry ------------------------------------------------------------

    @property
    def boundary_edges(self):
        """The edges `sample` puts boundary points on, in the order of `EDGES`.

        All four for a static problem; a time-dependent one leaves out the
        edge of the final time (no condition holds there): with
        `time_axis = 1`, `("left", "right", "bottom")`, the bottom edge
        being the initial time. A problem without a condition on some edge
        (a periodic one) overrides it.
        """
        if self.time_axis is None:
            return EDGES
        final = ("right", "top")[self.time_axis]
        return tuple(edge for edge in EDGES if edge != final)

    @property
    def boundary_tolerance(self):
        (x0, x1), (y0, y1) = self.domain
        return 1e-5 * max(x1 - x0, y1 - y0)

    def boundary_masks(self, x, y):
        """Float masks (1 on the edge, 0 elsewhere) for each of the four edges."""
        (x0, x1), (y0, y1) = self.domain
        tol = self.boundary_tolerance

        def near(values, edge):
            return tf.cast(tf.abs(values - edge) <= tol, values.dtype)

        return {"left": near(x, x0), "right": near(x, x1), "bottom": near(y, y0), "top": near(y, y1)}

    def sample(self, n_interior=1024, n_boundary=256, seed=None, method="uniform", step=None):
        """Collocation points: `n_interior` inside the domain and `n_boundary`
        on its edges (split evenly over `boundary_edges`, for a static problem
        the four edges left, right, bottom, top; the first
        `n_boundary % len(boundary_edges)` of them get one more).

        Methods:

        - `"uniform"`: independent uniform points from `np.random.default_rng(seed)`
          (interior, then each edge).
        - `"sobol"`: the 2-D Sobol sequence (`tf.math.sobol_sample`, which
          starts after the origin) for the interior and its first coordinate,
          the base-2 van der Corput sequence, along each edge.
        - `"halton"`: the 2-D Halton sequence (bases 2 and 3,
          `tfp.mcmc.sample_halton_sequence`) for the interior and its base-2
          coordinate along each edge.

        A low-discrepancy set with a `seed` is shifted by a seeded random
        vector modulo 1 (the Cranley-Patterson rotation: R. Cranley and T. N. L.
        Patterson, SIAM J. Numer. Anal. 13, 1976), one 2-D shift for the
        interior and one 1-D shift per edge, so that seeds give different sets
        of the same quality; without a seed the sequences are used as they are.

        `step` selects one set of a resampled sequence, a fresh set per
        training step. `None` is the fixed set. For `"uniform"` step k draws
        from `np.random.default_rng([seed, k])`; for `"sobol"` and `"halton"`
        step k takes the next points of the sequence, indices `k * n` to
        `(k + 1) * n - 1` (interior and each edge separately), with the same
        shift, so step 0 equals the fixed set and consecutive steps never
        repeat a point.

        Either count may be 0 (not both): `n_interior=0` gives a set of
        boundary points alone and `n_boundary=0` one of interior points alone.
        On a set without boundary points, the boundary terms of the PDE are 0
        (see `compute_loss`), so training on it alone does not impose the
        boundary conditions.

        `seed` is None (fresh randomness) or a non-negative integer.

        Returns a float32 array of shape (n_interior + n_boundary, 2) holding
        (x, y) rows: interior points first, then the boundary points.
        """
        for name, value in (("n_interior", n_interior), ("n_boundary", n_boundary)):
            if not _is_count(value):
                raise ValueError(
                    f"Argument `{name}` must be a non-negative integer; received {name}={value!r}."
                )
        if seed is not None and not _is_count(seed):
            raise ValueError(f"Argument `seed` must be None or a non-negative integer; received seed={seed!r}.")
        if n_interior + n_boundary == 0:
            raise ValueError("At least one collocation point is needed; received n_interior=0 and n_boundary=0.")
        if method not in SAMPLING_METHODS:
            raise ValueError(f"Argument `method` must be one of {SAMPLING_METHODS}; received method={method!r}.")
        if step is not None and not _is_count(step):
            raise ValueError(f"Argument `step` must be None or a non-negative integer; received step={step!r}.")
        edges = [edge for edge in EDGES if edge in self.boundary_edges]
        counts = [0] * len(EDGES)
        for i, edge in enumerate(edges):
            counts[EDGES.index(edge)] = n_boundary // len(edges) + (1 if i < n_boundary % len(edges) else 0)
        if method == "uniform":
            # Exactly the draws of the original sampler: x, y of the interior, then each edge.
            rng = np.random.default_rng(seed if step is None or seed is None else [int(seed), int(step)])
            unit_interior = unit_edges = None
        else:
            rng = None
            unit_interior, unit_edges = self._low_discrepancy(method, n_interior, counts, seed, step or 0)
        return self._place(rng, unit_interior, unit_edges, n_interior, counts)

    def _low_discrepancy(self, method, n_interior, counts, seed, step):
        """Unit-square interior points and unit-interval edge parameters of a sequence."""
        shift_rng = np.random.default_rng(seed) if seed is not None else None
        interior_shift = shift_rng.uniform(0.0, 1.0, 2) if shift_rng is not None else np.zeros(2)
        edge_shifts = shift_rng.uniform(0.0, 1.0, 4) if shift_rng is not None else np.zeros(4)
        interior = np.mod(_sequence(method, 2, n_interior, step * n_interior) + interior_shift, 1.0)
        edges = [
            np.mod(_sequence(method, 1, count, step * count)[:, 0] + shift, 1.0)
            for count, shift in zip(counts, edge_shifts)
        ]
        return interior, edges

    def _place(self, rng, unit_interior, unit_edges, n_interior, counts):
        """Map unit-square / unit-interval values (or fresh uniform draws) onto the domain."""
        (x0, x1), (y0, y1) = self.domain
        # Keep interior points clear of the edges' detection band.
        margin = 2.0 * self.boundary_tolerance
        if rng is not None:
            interior = np.column_stack(
                [rng.uniform(x0 + margin, x1 - margin, n_interior),
                 rng.uniform(y0 + margin, y1 - margin, n_interior)]
            )
        else:
            interior = np.column_stack(
                [x0 + margin + unit_interior[:, 0] * (x1 - x0 - 2 * margin),
                 y0 + margin + unit_interior[:, 1] * (y1 - y0 - 2 * margin)]
            )
        edges = []
        for i, (edge, count) in enumerate(zip(EDGES, counts)):
            t = rng.uniform(0.0, 1.0, count) if rng is not None else unit_edges[i]
            xs = x0 + t * (x1 - x0)
            ys = y0 + t * (y1 - y0)
            fixed = {"left": (np.full(count, x0), ys), "right": (np.full(count, x1), ys),
                     "bottom": (xs, np.full(count, y0)), "top": (xs, np.full(count, y1))}[edge]
            edges.append(np.column_stack(fixed))
        return np.concatenate([interior] + edges).astype("float32")

    def grid(self, n=101):
        """A regular `n x n` grid over the closed domain, as an (n*n, 2) float32 array."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"Argument `n` must be an integer >= 2; received n={n!r}.")
        (x0, x1), (y0, y1) = self.domain
        xx, yy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
        return np.column_stack([xx.ravel(), yy.ravel()]).astype("float32")

    # -- losses --------------------------------------------------------------

    def split_preds(self, preds):
        """Map the columns of `preds` (N, C) to the names of `derivatives`.

        `preds` must have exactly the C columns of `derivatives`: fewer or
        more (the outputs of a model built for another problem) is an error.
        """
        preds = tf.convert_to_tensor(preds)
        needed = len(self.derivatives)
        if preds.shape.rank != 2 or (preds.shape[-1] is not None and preds.shape[-1] != needed):
            raise ValueError(
                f"{type(self).__name__}.compute_loss expects `preds` of shape (N, {needed}) "
                f"with the columns {self.derivatives}; received shape {tuple(preds.shape)}."
            )
        return {name: preds[:, i : i + 1] for i, name in enumerate(self.derivatives)}

    def compute_loss(self, x, y, preds):
        """Per-point loss terms: a list of K tensors of shape (N, 1).

        `x`, `y` and `preds` must have the same number of rows N.
        """
        x = tf.convert_to_tensor(x)
        check_same_rows(f"{type(self).__name__}.compute_loss", x=x, y=y, preds=preds)
        fields = self.split_preds(preds)
        x = tf.cast(x, fields[self.field].dtype)
        y = tf.cast(tf.convert_to_tensor(y), x.dtype)
        return list(self.residuals(x, y, fields))

    @abc.abstractmethod
    def residuals(self, x, y, fields):
        """The K per-point terms from `fields`, a dict of (N, 1) predicted columns."""

    def validation_loss(self, x, y, preds):
        """Per-point squared error against the exact solution, `(u - u_exact)^2`."""
        check_same_rows(f"{type(self).__name__}.validation_loss", x=x, y=y, preds=preds)
        fields = self.split_preds(preds)
        u = fields[self.field]
        return tf.square(u - tf.cast(self.exact(x, y), u.dtype))

    # -- exact solution ------------------------------------------------------

    @abc.abstractmethod
    def exact(self, x, y):
        """The exact solution at `x`, `y` (NumPy arrays or tensors of shape (N, 1))."""

    @abc.abstractmethod
    def exact_preds(self, x, y):
        """The exact solution and its analytic derivatives, as `preds` (N, C)."""

    def error(self, predict, n=101):
        """Error of a prediction against the exact solution on an `n x n` grid.

        Args:
            predict: a callable mapping an (M, 2) float32 array of (x, y) rows
                to the predicted field, shape (M,) or (M, C) (column 0 is used).
            n: grid points per side.

        Returns:
            `{"rel_l2": ||u - u*|| / ||u*||, "mse": mean (u - u*)^2}` as floats.
        """
        points = self.grid(n)
        predicted = np.asarray(predict(points), dtype="float64")
        points = points.astype("float64")
        if predicted.ndim == 2:
            predicted = predicted[:, 0]
        predicted = predicted.reshape(-1)
        exact = np.asarray(self.exact(points[:, :1], points[:, 1:]), dtype="float64").reshape(-1)
        diff = predicted - exact
        return {
            "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(exact)),
            "mse": float(np.mean(diff**2)),
        }
