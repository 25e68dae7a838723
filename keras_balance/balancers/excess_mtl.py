"""ExcessMTL: weights that grow with each term's estimated excess risk."""

import keras
import numpy as np
import tensorflow as tf

from keras_balance.balancers.arguments import check_positive
from keras_balance.balancers.base import GradientBalancer

FIRST_STEPS = ("ratio", "raw")
TOTALS = ("one", "num_terms")


@keras.saving.register_keras_serializable(package="keras_balance")
class ExcessMTL(GradientBalancer):
    """ExcessMTL (He et al., 2024): exponentiated-gradient weights driven by excess risks.

    The excess risk of term i (how far it is from its own optimum) is
    estimated by a second-order expansion with a diagonal, AdaGrad-like
    curvature, accumulated over the steps:

        S_i(t)  = S_i(t-1) + g_i(t)^2                       (elementwise, K x P)
        E_i(t)  = sum_p g_ip(t)^2 / sqrt(S_ip(t) + epsilon)
        r_i(t)  = E_i(t) / (E_i(0) + epsilon)                (scale processing)
        lambda(t) = c * softmax(log lambda(t-1) + eta r(t))  (lambda(0) = c / K)
        d       = J^T lambda(t)

    with c = 1 (the paper's simplex) or K. E_i(0) is the excess risk of the
    first step, or the mean over `warmup_steps` first steps during which the
    weights stay uniform. On the first step the ratio is 1 for every term,
    so the weights stay uniform (the authors' code); `first_step="raw"`
    instead updates them with the raw E_i(0), as TorchJD does.

    The accumulators S are a K x P Keras variable (`squared_gradient_sum`,
    float32) created on the first call, when P is known; so ExcessMTL works
    on parameter gradients (`jacobian_mode="loop"` or `"vectorized"`), not on
    a representation, whose columns change with the batch. The weights
    multiply every gradient of their term, task heads included, as the
    authors' code trains on `sum_i lambda_i L_i`.

    Reference: Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu, B. Zeng, T. Chilimbi
    and H. Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024
    (Eqs. 6-7: the excess-risk estimate; Eq. 9: the weight update; Section
    3.2: scale processing; Appendix C.1: the warm-up).

    Args:
        robust_step_size: eta > 0, the step of the exponentiated update
            (default 1e-2, the authors' LibMTL setting; TorchJD uses 1.0).
        warmup_steps: steps whose mean excess risk is the baseline E(0),
            during which the weights stay uniform (default 0: the first step's).
        first_step: `"ratio"` (default: the ratio r = 1 on the baseline's step,
            the weights stay uniform) or `"raw"` (TorchJD: update with E(0)
            itself when `warmup_steps=0`).
        total: `"one"` (default, the paper: weights on the simplex) or
            `"num_terms"` (the authors' code: weights start at 1 and sum to K,
            the scale of Sum).
        epsilon: added inside the square root and to the baseline (1e-7).
        num_columns: P, when known in advance (as `from_config` passes it).
        num_terms, nan_policy, name: see `Balancer`.

    `update_every` must be 1: the accumulators follow every step's gradients.

    Example:

    >>> import numpy as np
    >>> balancer = ExcessMTL(robust_step_size=1.0)
    >>> jacobian = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> balancer.weigh(jacobian).numpy().tolist()          # the baseline's step: uniform
    [0.5, 0.5]
    >>> weights = balancer.weigh(np.array([[2.0, 0.0], [0.0, 1.0]])).numpy()
    >>> bool(weights[0] > weights[1])                       # term 0's excess risk grew
    True
    """

    summary = "Exponentiated weights from AdaGrad-estimated excess risks (He et al. 2024)."
    column_state = True
    weights_all_parameters = True
    jacobian_modes = ("loop", "vectorized")
    jacobian_modes_reason = ("ExcessMTL accumulates squared gradients per parameter; a representation's columns "
                             "change with the batch.")
    holds_weights = False
    holds_weights_reason = "ExcessMTL's accumulators follow every step's gradients."

    def __init__(self, robust_step_size=1e-2, warmup_steps=0, first_step="ratio", total="one", epsilon=1e-7,
                 num_terms=None, nan_policy="skip", name="excess_mtl", **kwargs):
        self.robust_step_size = check_positive("robust_step_size", robust_step_size)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(
                f"Argument `warmup_steps` must be a non-negative integer; received warmup_steps={warmup_steps!r}."
            )
        self.warmup_steps = int(warmup_steps)
        if first_step not in FIRST_STEPS:
            raise ValueError(f"Argument `first_step` must be one of {FIRST_STEPS}; received first_step={first_step!r}.")
        if total not in TOTALS:
            raise ValueError(f"Argument `total` must be one of {TOTALS}; received total={total!r}.")
        self.first_step = first_step
        self.total = total
        self.epsilon = check_positive("epsilon", epsilon)
        super().__init__(num_terms=num_terms, nan_policy=nan_policy, name=name, **kwargs)

    def initial_weights(self, num_terms):
        return [1.0 if self.total == "num_terms" else 1.0 / num_terms] * num_terms

    def build_state(self, num_terms):
        initial = keras.initializers.Constant(self.initial_weights(num_terms))
        self.task_weights = self.add_weight(shape=(num_terms,), initializer=initial, trainable=False,
                                            name="task_weights")
        self.baseline = self.add_weight(shape=(num_terms,), initializer="zeros", trainable=False, name="baseline")
        self.warmup_sum = self.add_weight(shape=(num_terms,), initializer="zeros", trainable=False,
                                          name="warmup_sum")

    def build_column_state(self, num_terms, num_columns):
        self.squared_gradient_sum = self.add_weight(
            shape=(num_terms, num_columns), initializer="zeros", trainable=False, name="squared_gradient_sum"
        )

    def compute_weights(self, jacobian, losses):
        dtype = jacobian.dtype
        epsilon = tf.constant(self.epsilon, dtype)
        squares = jacobian * jacobian
        accumulated = tf.cast(self.squared_gradient_sum.value, dtype) + squares
        self.squared_gradient_sum.assign(tf.cast(accumulated, self.squared_gradient_sum.dtype))
        excess = tf.reduce_sum(squares / tf.sqrt(accumulated + epsilon), axis=1)
        t = self.step.value
        warmup = self.warmup_steps
        self.warmup_sum.assign(self.warmup_sum.value + tf.cast(tf.where(t < warmup, excess, 0.0), "float32"))
        at_baseline = tf.equal(t, warmup)
        measured = tf.cast(self.warmup_sum.value, dtype) / warmup if warmup else excess
        baseline = tf.where(at_baseline, measured, tf.cast(self.baseline.value, dtype))
        self.baseline.assign(tf.cast(baseline, "float32"))
        ratio = excess / (baseline + epsilon)
        if self.first_step == "raw" and not warmup:
            ratio = tf.where(at_baseline, excess, ratio)
        previous = tf.cast(self.task_weights.value, dtype)
        scale = tf.constant(float(self.num_terms) if self.total == "num_terms" else 1.0, dtype)
        logits = tf.math.log(previous / scale) + tf.constant(self.robust_step_size, dtype) * ratio
        updated = scale * tf.nn.softmax(logits)
        weights = tf.where(t >= warmup, updated, previous)
        self.task_weights.assign(tf.cast(weights, "float32"))
        return weights

    def get_config(self):
        config = super().get_config()
        config.update({"robust_step_size": self.robust_step_size, "warmup_steps": self.warmup_steps,
                       "first_step": self.first_step, "total": self.total, "epsilon": self.epsilon})
        return config
