"""MGDA: the min-norm point of the convex hull of the per-term gradients."""

import numbers

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer, gramian
from keras_balance.balancers.qp import frank_wolfe_min_norm_weights, min_norm_weights

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
SOLVERS = ("exact", "frank_wolfe")

# A gradient norm or loss at or below this counts as zero: that term is not
# normalized (dividing by it would only blow its row up).
_SCALE_FLOOR = 1e-30


@keras.saving.register_keras_serializable(package="keras_balance")
class MGDA(GradientBalancer):
    """Multiple-gradient descent: the min-norm element of the convex hull of the gradients.

    With `g_i` the gradient of term i (row i of the K x P Jacobian J) and
    `G = J J^T` its Gramian:

        alpha* = argmin_{alpha >= 0, sum(alpha) = 1} || sum_i alpha_i g_i ||^2
               = argmin_{alpha in simplex} alpha^T G alpha
        direction d = sum_i alpha*_i g_i = J^T alpha*

    d is the shortest vector of the convex hull of the g_i. Either d = 0 (the
    point is Pareto-stationary) or `g_i . d >= ||d||^2 > 0` for every i, so a
    small step along d decreases every term. The weights are alpha* as they
    are, summing to 1, without rescaling the direction (TorchJD's convention).

    Solvers:

    - `"exact"` (default): K = 2 uses the closed form
      `gamma = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1)`, `alpha = (gamma, 1 - gamma)`
      (equal rows: (1/2, 1/2)); K >= 3 solves the simplex QP exactly, with
      the small-QP solver shared with UPGrad (see `keras_balance.balancers.qp`):
      the KKT conditions `g_i . d >= ||d||^2`, with equality where
      `alpha_i > 0`, hold to about 1e-12 of `trace(G)`.
    - `"frank_wolfe"`: Algorithm 2 of the paper, Frank-Wolfe from uniform
      weights with the exact two-point line search (the K = 2 closed form);
      at most `max_iterations` steps, stopping once the weights move by at
      most `tolerance` (L1). It converges at rate O(1/t), so after 250 steps
      the direction is typically within 1e-2 of the exact one (relative to
      the norm of J); K = 2 uses the closed form.

    Normalization (the options of the paper's reference code), applied to the
    g_i before solving: `"none"` (default); `"l2"`: `g_i / ||g_i||`;
    `"loss"`: `g_i / L_i`; `"loss+"`: `g_i / (L_i ||g_i||)`. The solver then
    finds alpha* for the normalized rows `h_i = g_i / n_i`, and the returned
    weights are expressed on the original rows, `w_i = alpha*_i / n_i`, so
    that `d = J^T w = sum_i alpha*_i h_i` is the min-norm point of the
    normalized rows (and so non-conflicting). The paper's code instead
    applies alpha* to the raw losses. The loss-based options use `|L_i|` and
    need the losses: `aggregate(jacobian, losses)`; `BalancedModel` passes
    them. A norm or loss at or below 1e-30 counts as zero and that term is
    left unnormalized (n_i = 1).

    The solver works on the Gramian divided by its trace, so alpha* does not
    depend on the scale of J; an all-zero Jacobian gives uniform weights and
    a zero direction.

    Reference: O. Sener and V. Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018; J.-A. Desideri, "Multiple-gradient descent
    algorithm (MGDA) for multiobjective optimization", Comptes Rendus
    Mathematique, 2012.

    Args:
        normalization: `"none"`, `"l2"`, `"loss"` or `"loss+"` (see above).
        solver: `"exact"` or `"frank_wolfe"`.
        max_iterations: int >= 1. Iteration limit of Frank-Wolfe.
        tolerance: >= 0. Frank-Wolfe stops once the weights change by at most
            this much (L1 norm) in one step.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = MGDA()
    >>> jacobian = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
    >>> [round(float(v), 4) for v in balancer.weigh(jacobian)]
    [0.6, 0.4]
    >>> [round(float(v), 4) + 0.0 for v in balancer.aggregate(jacobian)]
    [0.0, 1.0, 1.0]
    """

    summary = "Min-norm point of the convex hull of the gradients (Sener & Koltun 2018)."

    def __init__(
        self,
        normalization="none",
        solver="exact",
        max_iterations=250,
        tolerance=1e-8,
        num_terms=None,
        nan_policy="skip",
        name="mgda",
        **kwargs,
    ):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Argument `normalization` must be one of {NORMALIZATIONS}; "
                f"received normalization={normalization!r}."
            )
        if solver not in SOLVERS:
            raise ValueError(
                f"Argument `solver` must be one of {SOLVERS}; received solver={solver!r}."
            )
        if (
            isinstance(max_iterations, bool)
            or not isinstance(max_iterations, numbers.Integral)
            or max_iterations < 1
        ):
            raise ValueError(
                "Argument `max_iterations` must be a positive integer; "
                f"received max_iterations={max_iterations!r}."
            )
        self.normalization = normalization
        self.solver = solver
        self.max_iterations = int(max_iterations)
        self.tolerance = check_range("tolerance", tolerance, 0.0, float("inf"), high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    @property
    def needs_losses(self):
        """True when the normalization divides by the losses."""
        return self.normalization in ("loss", "loss+")

    def compute_weights(self, jacobian, losses):
        if self.needs_losses and losses is None:
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) divides each gradient by "
                "its loss, so it needs the losses: call `aggregate(jacobian, losses)` "
                "or `weigh(jacobian, losses)`."
            )
        return self.weights_from_gramian(gramian(jacobian), losses)

    def gramian_weights(self, gramian):
        return self.weights_from_gramian(gramian, None)

    def weights_from_gramian(self, gramian, losses=None):
        """The weights `w` (on the original rows) from the Gramian and, if needed, the losses."""
        if self.needs_losses and losses is None:
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) needs the losses; "
                "received losses=None."
            )
        gramian = tf.convert_to_tensor(gramian, tf.float64)
        scales = self._scales(gramian, losses)
        normalized = gramian / (scales[:, None] * scales[None, :])
        if self.solver == "exact" or gramian.shape[0] <= 2:
            alpha = min_norm_weights(normalized)
        else:
            alpha = frank_wolfe_min_norm_weights(normalized, self.max_iterations, self.tolerance)
        return alpha / scales

    def _scales(self, gramian, losses):
        """n_i of the normalization; 1 where it is (numerically) zero."""
        num = gramian.shape[0]
        if self.normalization == "none":
            return tf.ones([num], tf.float64)
        norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gramian), 0.0))
        if self.normalization == "l2":
            scales = norms
        else:
            magnitudes = tf.abs(tf.cast(tf.reshape(losses, [num]), tf.float64))
            scales = magnitudes if self.normalization == "loss" else magnitudes * norms
        return tf.where(scales > _SCALE_FLOOR, scales, tf.ones_like(scales))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "normalization": self.normalization,
                "solver": self.solver,
                "max_iterations": self.max_iterations,
                "tolerance": self.tolerance,
            }
        )
        return config
