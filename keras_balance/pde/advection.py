"""Linear advection with periodic boundaries, the test case of causal training."""

import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import PDE, check_means, check_number, own_mean


class AdvectionPDE(PDE):
    """The advection equation on x in [0, 2 pi], t in [0, 1], periodic in x.

        u_t + c u_x = 0,   u(0, x) = sin(x),

    with the exact solution u*(t, x) = sin(x - c t). With c = 30 the wave
    crosses the domain almost five times, and a plain PINN settles on a
    smooth wrong solution: the benchmark of the causal-training papers. A
    time-dependent problem (`time_axis = 1`): points are (x, t) rows, the
    column `u_y` is u_t.

    Terms: `L_f`, the squared residual `(u_t + c u_x)^2`, and `L_i`, the
    squared initial error at t = 0. As in `AllenCahnPDE`, the periodic
    boundary is imposed by the network (`periods = (2 pi, None)`: `build_pinn`
    embeds x as (cos x, sin x)), not by a term, and `sample` puts its
    boundary points on t = 0 alone. `means` as for `HelmholtzPDE`.

    Reference: A. S. Krishnapriyan, A. Gholami, S. Zhe, R. M. Kirby and
    M. W. Mahoney, "Characterizing possible failure modes in
    physics-informed neural networks", NeurIPS 2021 (the convection problem,
    where a plain PINN fails from speeds of about 30); S. Wang, S. Sankaran,
    H. Wang and P. Perdikaris, "An expert's guide to training
    physics-informed neural networks", arXiv:2308.08468, 2023 (the same
    problem trained with causal weights and a periodic embedding).

    Args:
        c: the advection speed.
        means: `"batch"` or `"own"`.
    """

    derivatives = ("u", "u_y", "u_x")
    domain = ((0.0, 2.0 * math.pi), (0.0, 1.0))
    time_axis = 1
    initial_term = "L_i"
    term_names = ("L_f", "L_i")
    periods = (2.0 * math.pi, None)
    boundary_edges = ("bottom",)

    def __init__(self, c=30.0, means="batch"):
        self.c = check_number("c", c)
        self.means = check_means(means)

    def get_config(self):
        config = {"c": self.c}
        if self.means != "batch":
            config["means"] = self.means
        return config

    def initial(self, x):
        """The initial condition u(0, x) = sin(x)."""
        return tf.sin(x) if tf.is_tensor(x) else np.sin(x)

    def residuals(self, x, t, fields):
        u = fields["u"]
        residual = fields["u_y"] + self.c * fields["u_x"]
        initial = self.initial_mask(x, t)
        error = u - self.initial(x)
        if self.means == "own":
            return [own_mean(tf.square(residual), 1.0 - initial), own_mean(tf.square(error), initial)]
        return [tf.square(residual), tf.square(initial * error)]

    def exact(self, x, t):
        return self.initial(x - self.c * t)

    def exact_preds(self, x, t):
        phase = np.asarray(x, "float64").reshape(-1, 1) - self.c * np.asarray(t, "float64").reshape(-1, 1)
        return np.concatenate([np.sin(phase), -self.c * np.cos(phase), np.cos(phase)], axis=1)
