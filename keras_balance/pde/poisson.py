"""A 2-D Poisson problem whose source and boundary values differ in scale."""

import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import EDGES, PDE, check_means, check_number, own_mean, sin


def _exp(values):
    return tf.exp(values) if tf.is_tensor(values) else np.exp(values)


def _cos(values):
    return tf.cos(values) if tf.is_tensor(values) else np.cos(values)


class PoissonPDE(PDE):
    """The Poisson equation on the unit square with a harmonic boundary part.

        -(u_xx + u_yy) = f(x, y) = 2 (n pi)^2 a sin(n pi x) sin(n pi y)   on [0, 1]^2,
        u = b e^x cos(y)                                                 on the four edges,

    with the exact solution

        u*(x, y) = a sin(n pi x) sin(n pi y) + b e^x cos(y).

    The second part is harmonic (its Laplacian is 0), so it is set by the
    boundary values alone, and the source by the first part alone: the two
    data have their own scales, 2 (n pi)^2 a for f (about 79 with the
    defaults a = 1, n = 2) and b for the boundary values (from 0.054 to 0.27
    with b = 0.1), a factor of about 300, 1e5 in the squared terms, while
    both parts matter for the error (the harmonic part is about 30% of the
    solution's L2 norm). A plain sum of the terms fits the source first and
    the boundary late.

    Terms: `L_f`, the squared residual `(u_xx + u_yy + f)^2`, and `L_b`, the
    squared boundary error `(u - b e^x cos y)^2` on the edges
    (`boundary="per_edge"`: `L_b_left`, `L_b_right`, `L_b_bottom`,
    `L_b_top`). `means` as for `HelmholtzPDE`.

    A manufactured solution in the spirit of the Poisson benchmarks of S.
    Wang, Y. Teng and P. Perdikaris, "Understanding and mitigating gradient
    flow pathologies in physics-informed neural networks", SIAM J. Sci.
    Comput. 43, 2021, where source and boundary data of different scales
    give the terms gradients of different sizes.

    Args:
        a: amplitude of the source part.
        b: amplitude of the harmonic (boundary) part.
        n: positive int, the frequency of the source part.
        boundary: `"combined"` or `"per_edge"`.
        means: `"batch"` or `"own"`.
    """

    derivatives = ("u", "u_xx", "u_yy")
    domain = ((0.0, 1.0), (0.0, 1.0))

    def __init__(self, a=1.0, b=0.1, n=2, boundary="combined", means="batch"):
        self.a = check_number("a", a)
        self.b = check_number("b", b)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"Argument `n` must be a positive integer; received n={n!r}.")
        self.n = int(n)
        if boundary not in ("combined", "per_edge"):
            raise ValueError(f"Argument `boundary` must be one of ('combined', 'per_edge'); received boundary={boundary!r}.")
        self.boundary = boundary
        self.means = check_means(means)
        self.term_names = ("L_f", "L_b") if boundary == "combined" else ("L_f",) + tuple(f"L_b_{e}" for e in EDGES)

    def get_config(self):
        config = {"a": self.a, "b": self.b, "n": self.n}
        if self.boundary != "combined":
            config["boundary"] = self.boundary
        if self.means != "batch":
            config["means"] = self.means
        return config

    @property
    def characteristic_scale(self):
        """The larger of the two parts' amplitudes, max(|a|, e |b|) (1 if both are 0)."""
        return max(abs(self.a), math.e * abs(self.b)) or 1.0

    def source(self, x, y):
        """The right-hand side f(x, y) = -(u*_xx + u*_yy)."""
        w = self.n * math.pi
        return 2.0 * w**2 * self.a * sin(w * x) * sin(w * y)

    def boundary_values(self, x, y):
        """The boundary data g(x, y) = b e^x cos(y) (the harmonic part of u*)."""
        return self.b * _exp(x) * _cos(y)

    def residuals(self, x, y, fields):
        u = fields["u"]
        residual = fields["u_xx"] + fields["u_yy"] + self.source(x, y)
        error = u - self.boundary_values(x, y)
        masks = self.boundary_masks(x, y)
        if self.means == "own":
            on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
            edge = [own_mean(tf.square(error), masks[name]) for name in EDGES]
            first = [own_mean(tf.square(residual), 1.0 - on_boundary)]
            return first + (edge if self.boundary == "per_edge" else [tf.add_n(edge)])
        if self.boundary == "per_edge":
            return [tf.square(residual)] + [tf.square(masks[name] * error) for name in EDGES]
        on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
        return [tf.square(residual), tf.square(on_boundary * error)]

    def exact(self, x, y):
        w = self.n * math.pi
        return self.a * sin(w * x) * sin(w * y) + self.boundary_values(x, y)

    def exact_preds(self, x, y):
        x, y = np.asarray(x, "float64").reshape(-1, 1), np.asarray(y, "float64").reshape(-1, 1)
        w = self.n * math.pi
        bump = self.a * np.sin(w * x) * np.sin(w * y)
        harmonic = self.boundary_values(x, y)
        return np.concatenate([bump + harmonic, -(w**2) * bump + harmonic, -(w**2) * bump - harmonic], axis=1)
