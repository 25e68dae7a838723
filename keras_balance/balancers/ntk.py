"""NTK weighting: each term weighted by the inverse trace of its neural tangent kernel."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_range, check_seed
from keras_balance.balancers.base import LossBalancer
from keras_balance.balancers.seeds import add_seed_weight
from keras_balance.balancers.threads import one_step_at_a_time

NUMERATORS = ("sum", "mean")
TRACE_MEANS = ("batch", "own")


@keras.saving.register_keras_serializable(package="keras_balance")
class NTKWeighting(LossBalancer):
    """Weights each term by the total NTK trace over its own (Wang, Yu & Perdikaris, 2022).

    From the traces `tr_k` of the K diagonal blocks of a PINN's neural
    tangent kernel (`K_kk = J_k J_k^T`, `J_k` the Jacobian of term k's
    per-point residuals with respect to the parameters), Algorithm 1 of the
    paper sets

        w^_k = sum_j tr_j / tr_k

    so every term's block of the rescaled kernel has the same trace and the
    terms converge at comparable rates. The weights are recomputed every
    `update_every` steps and held in between; with `momentum` m > 0 they are
    a moving average from 1, `w_k <- m w_k + (1 - m) w^_k`, on update steps.

    The balancer knows nothing of models: it receives the traces through
    `update_traces(traces)`. `keras_balance.pinn.PINNModel` computes them
    (`keras_balance.pinn.ntk.term_traces`, per-point gradients) on the steps
    where `needs_traces()` is True, with the options `means` and `points`
    read from this balancer, and hands them over before the step's
    weights. A plain `BalancedModel` has no per-point terms and refuses the
    balancer. On its own (no traces yet) it is Sum: the weights stay 1
    until traces arrive.

    On an update step a term whose trace is 0 or not finite (no points in
    the batch, or a parameter-free term) keeps its weight, and the
    numerator then sums the other terms' traces; without a single usable
    trace no weight changes.

    Conventions (defaults: the paper's):

    - `numerator="sum"`: `sum_j tr_j` (Algorithm 1). `"mean"`: `mean_j tr_j`,
      jaxpi's `"ntk"` scheme (a factor 1/K on every weight).
    - `means="batch"`: a trace is the sum of the term's NTK diagonal divided
      by the batch size N, which every term shares (the ratios of
      Algorithm 1). `"own"`: the mean of the diagonal over the term's own
      points (the rows where it is not zero), jaxpi's `compute_diag_ntk`
      and `jnp.mean`: term k's trace is then N / n_k times larger with n_k
      points.
    - `update_every=1000`: jaxpi's `update_every_steps` in its example
      configurations (Algorithm 1 states the rule per step:
      `update_every=1`).
    - `momentum=0`: the paper's weights; jaxpi's examples use 0.9.

    jaxpi's NTK weighting is thus `NTKWeighting(numerator="mean",
    means="own", momentum=0.9)`, with `points` for its separate NTK batch.

    Reference: S. Wang, X. Yu and P. Perdikaris, "When and why PINNs fail to
    train: a neural tangent kernel perspective", Journal of Computational
    Physics 449, 110768, 2022 (Algorithm 1); jaxpi, the code of S. Wang,
    S. Sankaran, H. Wang and P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468, 2023.

    Args:
        update_every: positive int, steps between two updates (default 1000).
        momentum: in [0, 1), weight of the previous weights in their moving
            average (default 0).
        numerator: `"sum"` (default) or `"mean"`, see above.
        means: `"batch"` (default) or `"own"`: how the model turns each
            term's NTK diagonal into its trace (see above).
        points: None (default: every row of the batch) or a positive int:
            the traces are computed on that many rows drawn at random
            (without replacement, a stateless function of `seed` and the
            step), which makes an update cheaper.
        seed: None or an int, the seed of the rows drawn with `points`
            (None: drawn once from Python's `random`, see
            `keras_balance.balancers.seeds`).
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = NTKWeighting(update_every=2, num_terms=2)
    >>> balancer([1.0, 1.0]).numpy().tolist()             # no traces yet: Sum
    [1.0, 1.0]
    >>> bool(balancer.needs_traces())                      # step 1: held
    False
    >>> balancer([1.0, 1.0]).numpy().tolist()
    [1.0, 1.0]
    >>> balancer.update_traces([1.0, 3.0])                 # step 2 is an update
    >>> balancer([1.0, 1.0]).numpy().tolist()              # w = 4 / tr
    [4.0, 1.3333333730697632]
    """

    summary = "Inverse NTK trace of each term, sum_j tr_j / tr_k (Wang, Yu & Perdikaris 2022; needs a PINNModel)."
    #: The model hands this balancer the traces of its terms' NTK blocks.
    uses_traces = True

    def __init__(self, update_every=1000, momentum=0.0, numerator="sum", means="batch", points=None, seed=None,
                 num_terms=None, nan_policy="skip", name="ntk", **kwargs):
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise ValueError(
                f"Argument `update_every` must be a positive integer; received update_every={update_every!r}."
            )
        self.update_every = int(update_every)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        if numerator not in NUMERATORS:
            raise ValueError(f"Argument `numerator` must be one of {NUMERATORS}; received numerator={numerator!r}.")
        self.numerator = numerator
        if means not in TRACE_MEANS:
            raise ValueError(f"Argument `means` must be one of {TRACE_MEANS}; received means={means!r}.")
        self.means = means
        if points is not None and (isinstance(points, bool) or not isinstance(points, (int, np.integer))
                                   or points < 1):
            raise ValueError(f"Argument `points` must be None or a positive integer; received points={points!r}.")
        self.points = None if points is None else int(points)
        self.seed = check_seed(seed)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def build_state(self, num_terms):
        # Completed (finite) steps: an update when a multiple of `update_every`.
        self.step = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="step")
        # The latest traces handed by the model (0: none yet).
        self.traces = self.add_weight(shape=(num_terms,), initializer="zeros", trainable=False, name="traces")
        if self.points is not None:
            self.row_seed = add_seed_weight(self, self.seed, "row_seed")

    def needs_traces(self):
        """A boolean scalar: does the next step update the weights (and so need fresh traces)?"""
        if not self.built or self.update_every == 1:
            return tf.constant(True)
        return tf.equal(self.step % self.update_every, 0)

    def update_traces(self, traces):
        """Keep `traces` (K values, the NTK traces of the terms) for the next update step."""
        with one_step_at_a_time(self):
            traces = tf.reshape(tf.cast(tf.convert_to_tensor(traces), self.traces.dtype), [-1])
            if not self.built:
                self.build_for(int(traces.shape[0]))
            self._check_num_terms(traces, "losses")
            self.traces.assign(traces)

    def row_draw(self):
        """`(seed, step)`: the int64 scalars the rows of an update are drawn from (with `points`)."""
        seed = self.row_seed.value if self.points is not None else tf.constant(0, tf.int64)
        return seed, self.step.value

    def compute_weights(self, losses):
        previous = tf.cast(self.term_weights.value, tf.float64)
        traces = tf.cast(self.traces.value, tf.float64)
        usable = tf.logical_and(tf.math.is_finite(traces), traces > 0.0)
        present = tf.where(usable, traces, tf.zeros_like(traces))
        total = tf.reduce_sum(present)
        if self.numerator == "mean":
            total = total / tf.maximum(tf.reduce_sum(tf.cast(usable, tf.float64)), 1.0)
        fresh = total / tf.where(usable, traces, tf.ones_like(traces))
        averaged = self.momentum * previous + (1.0 - self.momentum) * fresh
        due = tf.equal(self.step % self.update_every, 0)
        weights = tf.where(tf.logical_and(due, usable), averaged, previous)
        self.step.assign_add(1)
        return tf.cast(weights, self.term_weights.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"update_every": self.update_every, "momentum": self.momentum, "numerator": self.numerator,
                       "means": self.means, "points": self.points, "seed": self.seed})
        return config
