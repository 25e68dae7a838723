"""Residual-based adaptive sampling of the collocation points: RAD and RAR-D.

C. Wu, M. Zhu, Q. Tan, Y. Kartha and L. Lu, "A comprehensive study of
non-adaptive and residual-based adaptive sampling for physics-informed neural
networks", Computer Methods in Applied Mechanics and Engineering 403, 115671
(2023). Both methods draw interior points from the density (their Eq. 2)

    p(x) ∝ |r(x)|^k / E[|r(x)|^k] + c,

where r is the PDE residual of the network being trained, approximated on a
dense set of candidate points drawn uniformly over the domain: each candidate
x_j is drawn with probability p_j = q_j / sum_i q_i,
q_j = |r_j|^k / mean_i |r_i|^k + c. k >= 0 sharpens the density towards large
residuals (k = 0 is uniform sampling) and c >= 0 keeps a uniform share
(c -> infinity is uniform sampling).

- **RAD** (residual-based adaptive distribution, the paper's Algorithm 2):
  every `every` steps the whole interior set is replaced by `n_interior`
  points drawn from p. Defaults k = 1, c = 1, the paper's recommended RAD.
- **RAR-D** (residual-based adaptive refinement with distribution, the
  paper's Algorithm 3): every `every` steps `points_per_round` points drawn
  from p are added to the set, until it holds `max_interior` interior points.
  Defaults k = 2, c = 0, the paper's recommended RAR-D.

The candidates (`num_candidates`, 100,000 in the paper's 2-D problems) are a
fresh uniform set each round, and the points are drawn from them without
replacement, as in the authors' code; `replace=True` draws with replacement,
which makes the drawn points' distribution exactly p on the candidates
(without replacement, a candidate cannot be drawn twice, which flattens the
frequencies of the few largest p_j when `n_interior` is not small against
`num_candidates`). The boundary (and initial-condition) points are the PDE's
own sample (`PDE.sample`) and are never redrawn: as in the paper, only the
residual points adapt.

How it runs (the design):

- The current set is Keras state: a float32 variable `points` of shape
  `(capacity + n_boundary, 2)`, interior rows first (`capacity` is
  `n_interior` for RAD, `max_interior` for RAR-D) and the boundary rows at
  the end, which never move; the number of interior rows in use, the steps
  trained so far and the seed are variables too. A sampler is attached to
  its model (`PINNModel(pde, solution, sampler=...)`), so `model.save`,
  `save_weights`/`load_weights` and `keras.callbacks.BackupAndRestore`
  save and restore the set with the network: a resumed run trains on the
  points it stopped with and makes the same later draws.
- `dataset()` is an endless `tf.data.Dataset` whose every element reads the
  variable, so the compiled training step takes the points as an input and
  is traced once. Its tf.data autotuning and default optimizations are off,
  so nothing prefetches: the element of a step is read when the step asks
  for it, and the step after a redraw trains on the new points.
- The redraw runs between steps, outside the compiled step: the callback
  (`callback()`) counts the steps and, every `every` steps, evaluates the
  residual on the candidates (a traced function, in batches of
  `batch_size`), draws with NumPy's generator seeded by `(seed, round)` and
  assigns the variable. A draw is therefore a function of the seed, the
  round and the network's weights, which resuming restores.
- RAD's element has a fixed shape, `(n_interior + n_boundary, 2)`. RAR-D's
  grows, so its element has an unknown number of rows, `(None, 2)`: one
  trace of the training step serves every size. XLA (`jit_compile=True`)
  compiles once per concrete shape, so under XLA each round's new size
  compiles the step again, `(max_interior - n_interior) / points_per_round`
  compilations in a run, each costing what the first step's compilation
  costs (seconds for the default PINN on a CPU); without XLA a new size
  costs nothing. For RAR-D with many rounds, `jit_compile=False` is usually
  the cheaper choice.

A term balancer composes with either sampler unchanged: it sees the K batch
means of the current set's per-point terms, whose residual term the redraws
make larger (the points sit where the residual is large), and it balances
them as it would any other batch.

Not covered: a distribution strategy (the dataset reads a variable of one
device) and the L-BFGS phase of `keras_balance.lbfgs` (it trains on a fixed
set).
"""

import logging
import numbers
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_balance import pde as pde_lib
from keras_balance.balancers.seeds import default_seed
from keras_balance.pde.base import SAMPLING_METHODS

_LOG = logging.getLogger(__name__)


def _check_count(name, value, low=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"Argument `{name}` must be an integer >= {low}; received {name}={value!r}.")
    return int(value)


def _check_exponent(name, value):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"Argument `{name}` must be a finite number >= 0; received {name}={value!r}.")
    return float(value)


def residual_density(abs_residual, k, c):
    """The sampling probabilities of Wu et al. (2023), Eq. 2, on a set of candidates.

    `p_j = q_j / sum_i q_i` with `q_j = |r_j|^k / mean_i |r_i|^k + c`. When
    every `|r_j|^k` is 0 the ratio is taken as 0 (p is then uniform, and so
    it is for c = 0 too).

    Args:
        abs_residual: the residual magnitudes `|r_j| >= 0`, shape (N,).
        k: the exponent, >= 0.
        c: the uniform share, >= 0.

    Returns:
        float64 probabilities of shape (N,) summing to 1.

    Example:

    >>> residual_density([0.0, 1.0, 3.0], k=1, c=1).round(4).tolist()
    [0.1667, 0.2917, 0.5417]
    """
    magnitude = np.asarray(abs_residual, dtype="float64").reshape(-1)
    powered = magnitude**k
    mean = powered.mean()
    ratio = powered / mean if mean > 0 else np.zeros_like(powered)
    weights = ratio + c
    total = weights.sum()
    if not total > 0:
        return np.full(magnitude.shape, 1.0 / magnitude.size)
    return weights / total


class _Functions:
    """The traced residual functions of a sampler, by model (weakly: a model may be deleted)."""

    def __init__(self):
        self.functions = weakref.WeakKeyDictionary()


class AdaptiveSampler(keras.layers.Layer):
    """The state and the redraws shared by `RAD` and `RARD` (see `keras_balance.pinn.sampling`)."""

    #: "rad" or "rar_d".
    method = None

    def __init__(self, pde, n_interior, n_boundary, every, k, c, num_candidates, capacity, sampling="uniform",
                 replace=False, batch_size=8192, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(pde, dict):
            pde = pde_lib.deserialize(pde)
        if not all(hasattr(pde, name) for name in ("sample", "compute_loss", "term_names")):
            raise TypeError(f"Argument `pde` must be a `keras_balance.pde.PDE`; received pde={pde!r}.")
        self.pde = pde
        self.n_interior = _check_count("n_interior", n_interior, 1)
        self.n_boundary = _check_count("n_boundary", n_boundary)
        self.every = _check_count("every", every, 1)
        self.k = _check_exponent("k", k)
        self.c = _check_exponent("c", c)
        self.num_candidates = _check_count("num_candidates", num_candidates, 1)
        self.batch_size = _check_count("batch_size", batch_size, 1)
        if sampling not in SAMPLING_METHODS:
            raise ValueError(f"Argument `sampling` must be one of {SAMPLING_METHODS}; received sampling={sampling!r}.")
        self.sampling = sampling
        if not isinstance(replace, bool):
            raise ValueError(f"Argument `replace` must be True or False; received replace={replace!r}.")
        self.replace = replace
        if seed is None:
            seed = default_seed()
        self.seed = _check_count("seed", seed)
        residual_term = getattr(pde, "residual_term", "L_f")
        if residual_term not in tuple(pde.term_names):
            raise ValueError(
                f"Argument `pde` must name its residual term in `residual_term`, one of {tuple(pde.term_names)}; "
                f"received a {type(pde).__name__} whose residual_term is {residual_term!r}."
            )
        self.residual_index = tuple(pde.term_names).index(residual_term)
        self.capacity = capacity
        initial = pde.sample(self.n_interior, self.n_boundary, seed=self.seed, method=sampling)
        rows = np.zeros((capacity + self.n_boundary, 2), dtype="float32")
        rows[: self.n_interior] = initial[: self.n_interior]
        rows[capacity:] = initial[self.n_interior :]
        # The current set: interior rows [0, count), unused rows up to
        # `capacity` (RAR-D), then the boundary rows. On the host: the
        # dataset's functions run there and read it (a variable on a GPU
        # cannot be read from them).
        with tf.device("/CPU:0"):
            self.points = self.add_weight(shape=rows.shape, initializer=keras.initializers.Zeros(), dtype="float32",
                                          trainable=False, name="points")
            self.points.assign(rows)
            self.count = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.n_interior),
                                         dtype="int32", trainable=False, name="count")
            self.steps = self.add_weight(shape=(), initializer=keras.initializers.Zeros(), dtype="int64",
                                         trainable=False, name="steps")
            self.seed_variable = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.seed),
                                                 dtype="int64", trainable=False, name="seed")
        self._residual_functions = _Functions()
        self.built = True

    # -- what the training step reads ----------------------------------------

    def current_points(self):
        """The current collocation set as a tensor: interior rows in use, then the boundary rows."""
        points = tf.convert_to_tensor(self.points)
        if self.method == "rad":
            return points
        count = tf.convert_to_tensor(self.count)
        return tf.concat([points[:count], points[self.capacity :]], axis=0)

    def dataset(self):
        """An endless `tf.data.Dataset` whose every element is the current collocation set.

        Train with `model.fit(sampler.dataset(), steps_per_epoch=N, callbacks=[sampler.callback()])`.
        Each element reads the sampler's variable when the step asks for it
        (no prefetching), so a step trains on the set of the latest redraw
        and the compiled step is traced once.
        """
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        options.autotune.enabled = False
        return (tf.data.Dataset.from_tensors(tf.constant(0)).repeat()
                .map(lambda _: self.current_points()).with_options(options))

    def callback(self):
        """The `keras.callbacks.Callback` that counts the steps and redraws every `every` of them."""
        return AdaptiveSampling(self)

    # -- the redraw ----------------------------------------------------------

    @property
    def rounds(self):
        """The number of redraws so far (`steps // every`), read from the variables."""
        return int(self.steps.numpy()) // self.every

    def candidates(self, round_index):
        """The candidate set of round `round_index` (>= 1): `num_candidates` interior points, float32."""
        return self.pde.sample(self.num_candidates, 0, seed=int(self.seed_variable.numpy()), method=self.sampling,
                               step=int(round_index))

    def residual_magnitude(self, model, points):
        """`|r|` at an (M, 2) array of points: the square root of the PDE's per-point residual term.

        `model(points)` must return the columns of `pde.derivatives` (a
        `PINN` or a `PINNModel`); evaluated in batches of `batch_size` by
        a traced function.
        """
        # A traced function per model, kept out of Keras' tracking (the
        # model holds the sampler: tracking the model here would be a cycle).
        functions = self._residual_functions.functions
        if model not in functions:
            pde, index = self.pde, self.residual_index

            @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32)], reduce_retracing=True)
            def magnitude(batch):
                preds = model(batch, training=False)
                term = pde.compute_loss(batch[:, :1], batch[:, 1:2], preds)[index]
                return tf.sqrt(tf.maximum(tf.cast(tf.reshape(term, [-1]), tf.float64), 0.0))

            functions[model] = magnitude
        magnitude = functions[model]
        points = np.asarray(points, dtype="float32")
        parts = [magnitude(tf.constant(points[i : i + self.batch_size])).numpy()
                 for i in range(0, len(points), self.batch_size)]
        return np.concatenate(parts)

    def draw(self, density, count, round_index):
        """`count` candidate indices drawn from `density` with the generator of round `round_index`."""
        rng = np.random.default_rng([int(self.seed_variable.numpy()), int(round_index), 1])
        if not self.replace:
            available = int(np.count_nonzero(density))
            if available < count:
                # Too few candidates with p > 0 (c = 0 and a residual that
                # vanishes almost everywhere): the others complete the draw
                # uniformly.
                density = 0.5 * density + 0.5 / density.size
        return rng.choice(density.size, size=count, replace=self.replace, p=density)

    def resample(self, model, round_index=None):
        """Run one redraw now (the callback's work); returns the new interior points, or None if none.

        `round_index` defaults to the round the step count has reached
        (`rounds`). A residual that is not finite at some candidate leaves
        the set as it was (a warning says so).
        """
        round_index = self.rounds if round_index is None else int(round_index)
        count = self.draw_count()
        if count == 0:
            return None
        candidates = self.candidates(round_index)
        magnitude = self.residual_magnitude(model, candidates)
        if not np.all(np.isfinite(magnitude)):
            _LOG.warning("%s: the residual is not finite at some candidates in round %d; the collocation set is "
                         "kept.", type(self).__name__, round_index)
            return None
        chosen = candidates[self.draw(residual_density(magnitude, self.k, self.c), count, round_index)]
        self.place(chosen)
        return chosen

    def draw_count(self):
        raise NotImplementedError

    def place(self, chosen):
        raise NotImplementedError

    # -- serialization -------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.pop("dtype", None)
        config.update(
            pde=pde_lib.serialize(self.pde), n_interior=self.n_interior, n_boundary=self.n_boundary,
            every=self.every, k=self.k, c=self.c, num_candidates=self.num_candidates, sampling=self.sampling,
            replace=self.replace, batch_size=self.batch_size, seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_balance")
class RAD(AdaptiveSampler):
    """Residual-based adaptive distribution: redraw every interior point from the residual's density.

    Wu, Zhu, Tan, Kartha and Lu, "A comprehensive study of non-adaptive and
    residual-based adaptive sampling for physics-informed neural networks",
    CMAME 403, 115671 (2023), Algorithm 2 with the density of Eq. 2: every
    `every` training steps the `n_interior` interior points are replaced by
    points drawn from

        p(x) ∝ |r(x)|^k / E[|r(x)|^k] + c

    on a fresh set of `num_candidates` uniform candidates (see
    `residual_density`); the `n_boundary` boundary points stay the PDE's
    own sample. The first set is `pde.sample(n_interior, n_boundary, seed)`,
    the set a non-adaptive run with that seed trains on. The set has a fixed
    shape, so the compiled step (with or without XLA) never retraces. The
    state, the design and its costs: `keras_balance.pinn.sampling`.

    Args:
        pde: the `keras_balance.pde.PDE` whose residual term
            (`pde.residual_term`) drives the density; |r| is the square root
            of its per-point value.
        n_interior: interior points in the set (redrawn every round).
        n_boundary: boundary points (fixed).
        every: training steps between redraws (default 1000; the paper
            retrains 1000 Adam steps, then L-BFGS, between redraws).
        k: the exponent of |r| (default 1, the paper's recommended RAD;
            k = 2, c = 0 is its RAR-D choice and a sharper RAD). k = 0 is
            uniform resampling.
        c: the uniform share (default 1; c = 0 draws by the residual alone).
        num_candidates: candidates per round (default 100,000, the paper's).
        sampling: how the first set and the candidates are drawn, a method of
            `PDE.sample`: `"uniform"` (default, the paper's), `"sobol"` or
            `"halton"` (the next points of the sequence each round).
        replace: draw with replacement (default False, as the authors' code).
        batch_size: candidates per residual evaluation.
        seed: a non-negative integer, or None for `keras.utils.set_random_seed`'s
            global seed (see `keras_balance.balancers.seeds.default_seed`).

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.HelmholtzPDE()
    >>> sampler = kb.pinn.RAD(pde, n_interior=256, n_boundary=64, every=20, num_candidates=2000, seed=0)
    >>> model = kb.PINNModel(pde, kb.build_pinn(pde, width=16, depth=2, seed=0), sampler=sampler)
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(sampler.dataset(), steps_per_epoch=20, epochs=2, callbacks=[sampler.callback()],
    ...                     verbose=0)
    >>> sampler.rounds, tuple(sampler.current_points().shape)
    (2, (320, 2))
    """

    method = "rad"

    def __init__(self, pde, n_interior=1024, n_boundary=256, every=1000, k=1.0, c=1.0, num_candidates=100_000,
                 sampling="uniform", replace=False, batch_size=8192, seed=None, **kwargs):
        n_interior = _check_count("n_interior", n_interior, 1)
        num_candidates = _check_count("num_candidates", num_candidates, 1)
        if not replace and num_candidates < n_interior:
            raise ValueError(
                "Argument `num_candidates` must be at least `n_interior` when drawing without replacement; "
                f"received num_candidates={num_candidates} and n_interior={n_interior}."
            )
        super().__init__(pde, n_interior, n_boundary, every, k, c, num_candidates, n_interior, sampling=sampling,
                         replace=replace, batch_size=batch_size, seed=seed, **kwargs)

    def draw_count(self):
        return self.n_interior

    def place(self, chosen):
        rows = self.points.numpy()
        rows[: self.n_interior] = chosen
        self.points.assign(rows)


@keras.saving.register_keras_serializable(package="keras_balance")
class RARD(AdaptiveSampler):
    """Residual-based adaptive refinement with distribution: add points drawn from the residual's density.

    Wu, Zhu, Tan, Kartha and Lu, "A comprehensive study of non-adaptive and
    residual-based adaptive sampling for physics-informed neural networks",
    CMAME 403, 115671 (2023), Algorithm 3 with the density of Eq. 2: the set
    starts with `n_interior` interior points (`pde.sample`), and every
    `every` training steps `points_per_round` points drawn from

        p(x) ∝ |r(x)|^k / E[|r(x)|^k] + c

    on a fresh set of `num_candidates` uniform candidates are added to it,
    until it holds `max_interior` interior points (the last round adds what
    is left). The boundary points stay the PDE's own sample, after the
    interior rows. The set grows, so the dataset's element has an unknown
    number of rows: one trace of the step serves every size, and under XLA
    each new size compiles the step once more (seconds on a CPU; with many
    rounds, `jit_compile=False` is usually cheaper; see
    `keras_balance.pinn.sampling`).

    Args:
        pde: the `keras_balance.pde.PDE` whose residual term drives the density.
        n_interior: interior points at the start.
        n_boundary: boundary points (fixed).
        points_per_round: points added per round, m (default 10, the paper's
            Burgers setting: 1000 points plus 10 per round up to 2000).
        max_interior: the most interior points the set grows to (default
            `2 * n_interior`).
        every: training steps between rounds (default 1000).
        k: the exponent of |r| (default 2, the paper's recommended RAR-D).
        c: the uniform share (default 0, the paper's recommended RAR-D).
        num_candidates, sampling, replace, batch_size, seed: as for `RAD`.

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.HelmholtzPDE()
    >>> sampler = kb.pinn.RARD(pde, n_interior=128, n_boundary=64, points_per_round=16, max_interior=160,
    ...                        every=10, num_candidates=2000, seed=0)
    >>> model = kb.PINNModel(pde, kb.build_pinn(pde, width=16, depth=2, seed=0), sampler=sampler)
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(sampler.dataset(), steps_per_epoch=10, epochs=3, callbacks=[sampler.callback()],
    ...                     verbose=0)
    >>> int(sampler.count.numpy()), tuple(sampler.current_points().shape)
    (160, (224, 2))
    """

    method = "rar_d"

    def __init__(self, pde, n_interior=1024, n_boundary=256, points_per_round=10, max_interior=None, every=1000,
                 k=2.0, c=0.0, num_candidates=100_000, sampling="uniform", replace=False, batch_size=8192, seed=None,
                 **kwargs):
        n_interior = _check_count("n_interior", n_interior, 1)
        self.points_per_round = _check_count("points_per_round", points_per_round, 1)
        if max_interior is None:
            max_interior = 2 * n_interior
        if isinstance(max_interior, bool) or not isinstance(max_interior, (int, np.integer)) \
                or max_interior < n_interior:
            raise ValueError(
                f"Argument `max_interior` must be an integer >= n_interior ({n_interior}); "
                f"received max_interior={max_interior!r}."
            )
        self.max_interior = int(max_interior)
        num_candidates = _check_count("num_candidates", num_candidates, 1)
        if not replace and num_candidates < self.points_per_round:
            raise ValueError(
                "Argument `num_candidates` must be at least `points_per_round` when drawing without replacement; "
                f"received num_candidates={num_candidates} and points_per_round={self.points_per_round}."
            )
        super().__init__(pde, n_interior, n_boundary, every, k, c, num_candidates, self.max_interior,
                         sampling=sampling, replace=replace, batch_size=batch_size, seed=seed, **kwargs)

    def draw_count(self):
        return min(self.points_per_round, self.max_interior - int(self.count.numpy()))

    def place(self, chosen):
        count = int(self.count.numpy())
        rows = self.points.numpy()
        rows[count : count + len(chosen)] = chosen
        self.points.assign(rows)
        self.count.assign(count + len(chosen))

    def get_config(self):
        config = super().get_config()
        config.update(points_per_round=self.points_per_round, max_interior=self.max_interior)
        return config


def check_sampler(pde, sampler):
    """`sampler` (None, or a `RAD` or `RARD` of a problem of `pde`'s class and config), for `PINNModel`."""
    if sampler is None:
        return None
    if not isinstance(sampler, AdaptiveSampler):
        raise TypeError(
            "Argument `sampler` must be None or a `keras_balance.pinn.RAD` or `RARD`; "
            f"received sampler={sampler!r}."
        )
    if pde_lib.serialize(sampler.pde) != pde_lib.serialize(pde):
        raise ValueError(
            f"Argument `sampler` must sample the model's problem, {pde!r}; received a sampler of {sampler.pde!r}."
        )
    return sampler


class AdaptiveSampling(keras.callbacks.Callback):
    """Count the training steps of a sampler's model and redraw its points every `every` steps.

    After step s (counted over every `fit`, in the sampler's checkpointed
    `steps`), a step count that is a multiple of `every` runs
    `sampler.resample(model)`; the next step trains on the new set (with
    `steps_per_execution = n`, after the execution that reaches it). Made by
    `sampler.callback()`; the model must hold the sampler (`PINNModel(...,
    sampler=sampler)`), so that checkpoints hold its state.
    """

    def __init__(self, sampler):
        super().__init__()
        if not isinstance(sampler, AdaptiveSampler):
            raise TypeError(f"Argument `sampler` must be a `RAD` or `RARD`; received sampler={sampler!r}.")
        self.sampler = sampler
        self._steps = None
        self._first = 0

    def on_train_begin(self, logs=None):
        if getattr(self.model, "sampler", None) is not self.sampler:
            raise ValueError(
                "The model does not hold this sampler, so its checkpoints would not hold the collocation set: "
                "build the model with it, `PINNModel(pde, solution, sampler=sampler)`."
            )
        self._steps = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._steps is None:
            # Read here rather than in `on_train_begin`: a BackupAndRestore
            # listed after this callback restores the count in its own.
            self._steps = int(self.sampler.steps.numpy())
        self._first = batch

    def on_train_batch_end(self, batch, logs=None):
        # With `steps_per_execution = n`, Keras calls back once per n steps
        # (`batch` is the last of them): the redraw comes after the
        # execution in which the count reaches a multiple of `every`.
        before = self._steps
        self._steps += max(int(batch) - int(self._first), 0) + 1
        self.sampler.steps.assign(self._steps)
        if self._steps // self.sampler.every > before // self.sampler.every:
            self.sampler.resample(self.model, self._steps // self.sampler.every)


__all__ = ["AdaptiveSampler", "AdaptiveSampling", "RAD", "RARD", "check_sampler", "residual_density"]
