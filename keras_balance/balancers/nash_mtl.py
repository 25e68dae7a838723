"""Nash-MTL: the Nash bargaining solution among the per-term gradients."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.fairness import fair_weights

_compiled_fair_weights = tf.function(
    lambda gramian, previous: fair_weights(gramian, 1.0, previous), autograph=False
)


@keras.saving.register_keras_serializable(package="keras_balance")
class NashMTL(GradientBalancer):
    """Nash-MTL: the direction on which the terms bargain (Navon et al., 2022).

    Each term i gains `g_i . d` from a step along `d`. Nash-MTL picks the
    direction of bounded norm that maximizes `sum_i log(g_i . d)`, the Nash
    bargaining solution. It is `d = J^T alpha` with `alpha > 0` solving

        alpha_i (G alpha)_i = 1   for every i,     G = J J^T,

    so every term improves, `g_i . d = 1 / alpha_i > 0`, and a term with a
    small gradient gets a large weight. The system is the stationarity
    condition of `min_{alpha > 0} 1/2 alpha^T G alpha - sum_i log alpha_i`,
    which is convex.

    Solver. The authors' code (and TorchJD's `NashMTL`) approach `alpha` by up
    to 20 sequential convex approximations solved with cvxpy/ECOS.
    keras_balance minimizes the convex problem directly, in float64, with
    damped Newton steps (at most 100, in a `tf.while_loop`: graph- and
    XLA-safe) on the cosine matrix of the gradients
    (`keras_balance.balancers.fairness`), warm-started from the previous
    step's solution, which is kept in the variable `previous_solution`. It
    reaches `max_i |alpha_i (G alpha)_i - 1|` below 1e-7 on every solvable
    case of the reference tests (about 1e-10, set by the ridge below, away
    from rank deficiency); TorchJD's ends between 2e-10 and 3e-6 on the
    well-posed cases, and far off (residuals of 5 to 14) when the gradients'
    norms span 1e-3 to 1e3 (see the method's page).
    A ridge of 1e-10 relative to each row's squared norm keeps a solution in
    existence when none does (zero is a non-negative combination of the
    gradients, for instance two opposite gradients); there the weights stay
    large but finite and the direction tends to zero. A term whose gradient is
    exactly zero cannot bargain: it gets the weight 0.

    Scale: the system is homogeneous of degree -2 in G, so scaling every
    gradient by s scales alpha by 1/s and leaves the direction unchanged: its
    norm is set by the geometry of the gradients alone (K identical rows g
    give `alpha_i = 1 / (sqrt(K) ||g||)` and `d = sqrt(K) g / ||g||`), and the
    learning rate sets the step. The authors' code and TorchJD hand cvxpy the
    Gramian divided by its Frobenius norm but put the norm back into the
    constraint, so they solve the same system.

    Conventions:

    - `max_norm` (default 0: off, the paper's Algorithm 1): when positive, the
      weights are scaled down so that `||J^T alpha|| <= max_norm` (the
      authors' code and LibMTL clip the shared gradient to 1.0; TorchJD's
      `NashMTL` clips `J^T alpha` to 1.0). The clipping is part of the
      weights: with `update_every > 1` the held weights keep the factor of
      their update step, where the authors' code clips every step. A Keras
      optimizer's `global_clipnorm` clips every step.
    - `update_every=n` holds the weights for n steps, the authors'
      `update_weights_every` (their default 1).

    Reference: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi,
    G. Chechik and E. Fetaya, "Multi-Task Learning as a Bargaining Game",
    ICML 2022 (Section 3 and Algorithm 1).

    Args:
        max_norm: >= 0. Largest norm of the direction (0: no clipping).
        update_every: positive int, steps between two updates of the weights.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = NashMTL()
    >>> jacobian = [[2.0, 0.0], [0.0, 0.5]]   # orthogonal: alpha_i = 1 / ||g_i||
    >>> [round(float(v), 6) for v in balancer.weigh(jacobian)]
    [0.5, 2.0]
    >>> [round(float(v), 6) for v in balancer.aggregate(jacobian)]
    [1.0, 1.0]
    """

    summary = "Nash bargaining solution alpha_i (G alpha)_i = 1 among the gradients (Navon et al. 2022)."

    def __init__(self, max_norm=0.0, update_every=1, num_terms=None, nan_policy="skip", name="nash_mtl", **kwargs):
        self.max_norm = check_range("max_norm", max_norm, 0.0, float("inf"), high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, update_every=update_every, **kwargs)

    def build_state(self, num_terms):
        # The solution of the latest update in the solver's scaled variables
        # (scale-free), the warm start of the next one.
        self.previous_solution = self.add_weight(
            shape=(num_terms,), initializer="ones", trainable=False, name="previous_solution"
        )

    def gramian_weights(self, gramian):
        weights, solution = _compiled_fair_weights(gramian, tf.cast(self.previous_solution.value, gramian.dtype))
        self.previous_solution.assign(tf.cast(solution, self.previous_solution.dtype))
        if self.max_norm > 0.0:
            norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.linalg.matvec(gramian, weights) * weights), 0.0))
            weights = weights * tf.minimum(tf.constant(1.0, gramian.dtype),
                                           self.max_norm / tf.where(norm > 0.0, norm, tf.ones_like(norm)))
        return weights

    def get_config(self):
        config = super().get_config()
        config["max_norm"] = self.max_norm
        return config
