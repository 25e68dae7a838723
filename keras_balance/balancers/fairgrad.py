"""FairGrad: alpha-fair allocation of the improvement among the terms."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.fairness import fair_weights

_compiled = {}


def _solver(alpha):
    """A compiled `fair_weights` for one value of alpha (eager calls then skip the Python loop)."""
    if alpha not in _compiled:
        _compiled[alpha] = tf.function(lambda gramian: fair_weights(gramian, alpha)[0], autograph=False)
    return _compiled[alpha]


@keras.saving.register_keras_serializable(package="keras_balance")
class FairGrad(GradientBalancer):
    """FairGrad: the direction that allocates the improvement alpha-fairly (Ban & Ji, 2024).

    Treats `g_i . d`, the first-order improvement of term i along `d`, as the
    utility of term i and maximizes the alpha-fair welfare
    `sum_i (g_i . d)^(1 - alpha) / (1 - alpha)` (`sum_i log(g_i . d)` for
    alpha = 1) over a ball. The solution is `d = J^T w` with `w > 0` solving

        (G w)_i = w_i^(-1/alpha)   for every i,     G = J J^T,

    so every term improves, `g_i . d = w_i^(-1/alpha) > 0`. `alpha = 0` is
    linear scalarization (the mean, `w = 1/K`); `alpha = 1` is proportional
    fairness, the bargaining condition of Nash-MTL (`NashMTL` with
    `normalization="none"` gives the same direction); larger alpha moves
    towards max-min fairness, the improvement of the worst term.

    Solver. The authors' code, LibMTL and TorchJD's `FairGrad` solve the
    system with `scipy.optimize.least_squares` from `w = 1/K` (to its
    default tolerances, up to `100 K` evaluations). keras_balance minimizes
    the equivalent convex problem
    `min_{w > 0} 1/2 w^T G w - sum_i u(w_i)` with `u'(w) = w^(-1/alpha)` by
    damped Newton steps in float64 (at most 100, in a `tf.while_loop`:
    graph- and XLA-safe; `keras_balance.balancers.fairness`), to a relative
    residual of about 1e-10, with a ridge of 1e-10 relative to each row's
    squared norm so that a solution exists when zero is a non-negative
    combination of the gradients. A term whose gradient is exactly zero gets
    the weight 0.

    Like the references, the system is solved on `G` itself: scaling every
    gradient by s scales `w` by `s^(-2 alpha / (1 + alpha))` and the
    direction by `s^((1 - alpha) / (1 + alpha))` (not at all for alpha = 1).
    The authors' code also clips the shared gradient to a norm of 1; a Keras
    optimizer's `global_clipnorm` does that.

    Reference: H. Ban and K. Ji, "Fair Resource Allocation in Multi-Task
    Learning", ICML 2024 (Eq. 4 and Algorithm 1). The default
    alpha = 1 is that of the authors' code and LibMTL; the paper tunes alpha
    per benchmark (for instance 2 on QM9).

    Args:
        alpha: >= 0. The fairness parameter.
        update_every: positive int, steps between two updates of the weights.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = FairGrad(alpha=2.0)
    >>> jacobian = [[4.0, 0.0], [0.0, 1.0]]   # orthogonal: ||g_i||^2 w_i = w_i^(-1/2)
    >>> [round(float(v), 6) for v in balancer.weigh(jacobian)]
    [0.15749, 1.0]
    """

    summary = "Alpha-fair allocation of the improvement: (G w)_i = w_i^(-1/alpha) (Ban & Ji 2024)."

    def __init__(self, alpha=1.0, update_every=1, num_terms=None, nan_policy="skip", name="fairgrad", **kwargs):
        self.alpha = check_range("alpha", alpha, 0.0, float("inf"), high_open=True)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, update_every=update_every, **kwargs)

    def gramian_weights(self, gramian):
        num_terms = gramian.shape[0]
        if self.alpha == 0.0:
            return tf.fill([num_terms], tf.constant(1.0 / num_terms, gramian.dtype))
        return _solver(self.alpha)(gramian)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
