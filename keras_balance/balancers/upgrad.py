"""UPGrad and DualProj: projections onto the dual cone of the per-term gradients."""

import keras
import tensorflow as tf

from keras_balance.balancers.arguments import check_range
from keras_balance.balancers.base import GradientBalancer
from keras_balance.balancers.qp import dual_cone_weights


def _check_eps(name, value):
    return check_range(name, value, 0.0, float("inf"), high_open=True)


class _DualConeBalancer(GradientBalancer):
    """Shared arguments and configuration of UPGrad and DualProj (`name` defaults to `default_name`)."""

    holds_weights = False
    holds_weights_reason = ("It projects onto the dual cone of the current gradients; its weights give a "
                            "non-conflicting direction only for those gradients.")

    def __init__(
        self, norm_eps=0.0, reg_eps=1e-4, num_terms=None, nan_policy="skip", name=None, **kwargs
    ):
        self.norm_eps = _check_eps("norm_eps", norm_eps)
        self.reg_eps = _check_eps("reg_eps", reg_eps)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name or self.default_name, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"norm_eps": self.norm_eps, "reg_eps": self.reg_eps})
        return config


@keras.saving.register_keras_serializable(package="keras_balance")
class UPGrad(_DualConeBalancer):
    """Unconflicting projection of gradients: average of each gradient projected onto the dual cone.

    The dual cone of the rows g_i of the K x P Jacobian J is
    `C = {x : J x >= 0}`, the directions that conflict with no term. UPGrad
    projects every g_i onto C and averages the projections:

        d = (1/K) sum_i pi_C(g_i)

    With `G = J J^T`, the projection of `J^T u` onto C is `J^T v*(u)` where
    `v*(u) = argmin_{v >= u} v^T G v` (Quinton & Rey 2024, Proposition 1), a
    K-dimensional quadratic program. So the weights are

        w = (1/K) sum_i v*(e_i),     d = J^T w.

    The result is non-conflicting (`J d >= 0`, up to the regularization
    below); if no two gradients conflict (`g_i . g_j >= 0` for all i, j) every
    g_i already lies in C and UPGrad is the mean of the rows.

    Conventions (TorchJD's, which the authors maintain): the mean preference
    vector (uniform 1/K), and the QP solved on the regularized, normalized
    Gramian `G / trace(G) + reg_eps I`. The regularization keeps the QP
    strictly convex; it moves the result towards the mean by a relative
    amount of order `reg_eps`: `(J d)_i >= -reg_eps * trace(G) * w_i`
    rather than exactly `>= 0`. `reg_eps=0` gives the exact projection.
    A Gramian with `trace(G) <= norm_eps` counts as zero and gives the mean
    weights. TorchJD's default `norm_eps=1e-4` is an absolute threshold, so
    there UPGrad turns into the mean whenever `sum_i ||g_i||^2 < 1e-4`, which
    is common late in training; keras_balance defaults to `norm_eps=0` (only a
    zero Jacobian falls back), so the weights do not depend on the scale of
    J. Pass `norm_eps=1e-4` to reproduce TorchJD exactly.

    The K quadratic programs are solved inside TensorFlow (graph- and
    XLA-safe) by `keras_balance.balancers.qp`: exactly, to about 1e-12.

    Reference: P. Quinton and V. Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv:2406.16232, 2024.

    Args:
        norm_eps: >= 0. The Gramian counts as zero (mean weights) when its
            trace, the squared Frobenius norm of J, is at most this.
        reg_eps: >= 0. Added to the diagonal of the trace-normalized Gramian.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = UPGrad()
    >>> direction = balancer.aggregate([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> [round(float(v), 4) for v in direction]
    [0.2929, 1.9004, 1.9004]
    """

    summary = "Mean of the gradients each projected onto the dual cone of all (Quinton & Rey 2024)."

    default_name = "upgrad"

    def gramian_weights(self, gramian):
        num = gramian.shape[0]
        preferences = tf.eye(num, dtype=tf.float64) / num
        projected = dual_cone_weights(gramian, preferences, self.norm_eps, self.reg_eps)
        return tf.reduce_sum(projected, axis=0)


@keras.saving.register_keras_serializable(package="keras_balance")
class DualProj(_DualConeBalancer):
    """Projection of the mean gradient onto the dual cone of the gradients.

    With C = `{x : J x >= 0}` the dual cone of the rows of J and
    `v*(u) = argmin_{v >= u} v^T G v` (see `UPGrad`):

        d = pi_C( (1/K) sum_i g_i ) = J^T w,     w = v*(1/K).

    The closest non-conflicting direction to the mean gradient (the
    projection of Gradient Episodic Memory, Lopez-Paz & Ranzato 2017, eq. 11,
    applied to all terms). When no two gradients conflict, the mean is
    already in C and DualProj returns it.

    Same conventions as `UPGrad` (TorchJD's): the QP is solved on
    `G / trace(G) + reg_eps I`, a Gramian with `trace(G) <= norm_eps` counts
    as zero (mean weights), and keras_balance defaults to `norm_eps=0`
    (TorchJD: 1e-4, absolute) so the weights do not depend on the scale of J.

    Reference: P. Quinton and V. Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv:2406.16232, 2024; D. Lopez-Paz and M. Ranzato,
    "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.

    Args:
        norm_eps: >= 0. The Gramian counts as zero (mean weights) when its
            trace is at most this.
        reg_eps: >= 0. Added to the diagonal of the trace-normalized Gramian.
        num_terms, nan_policy, name: see `Balancer`.

    Example:

    >>> balancer = DualProj()
    >>> direction = balancer.aggregate([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> [round(float(v), 4) for v in direction]
    [0.5563, 1.1109, 1.1109]
    """

    summary = "Mean gradient projected onto the dual cone of the gradients (Quinton & Rey 2024)."

    default_name = "dualproj"

    def gramian_weights(self, gramian):
        num = gramian.shape[0]
        preferences = tf.fill([1, num], tf.constant(1.0 / num, tf.float64))
        return dual_cone_weights(gramian, preferences, self.norm_eps, self.reg_eps)[0]
