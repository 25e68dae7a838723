"""The Helmholtz equation of Bischof's article."""

import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import EDGES, PDE, check_number, sin

BOUNDARY_OPTIONS = ("combined", "per_axis", "per_edge")


class HelmholtzPDE(PDE):
    """Helmholtz equation on [-1, 1]^2 with zero Dirichlet boundary.

        u_xx + u_yy + k^2 u = q(x, y),
        q = (-(a1 pi)^2 - (a2 pi)^2 + k^2) sin(a1 pi x) sin(a2 pi y),
        u = 0 on the four edges,

    with the exact solution `u = sin(a1 pi x) sin(a2 pi y)`.

    Terms: `L_f`, the squared residual, and `L_b`, the squared boundary value
    (`boundary="per_edge"` gives one term per edge, `L_b_left`, `L_b_right`,
    `L_b_bottom`, `L_b_top`, as the ReLoBRaLo authors' repository does;
    `boundary="per_axis"` gives `L_b_x` for the edges x = const. and `L_b_y`
    for y = const., three terms in all).

    Reference: R. Bischof, "Improving PINNs through adaptive loss balancing",
    2023 (the article's benchmark; defaults k = 1, a1 = 1, a2 = 4).

    Args:
        k: wave number.
        a1, a2: frequencies of the exact solution in x and y.
        boundary: `"combined"` (one boundary term), `"per_axis"` (two) or
            `"per_edge"` (four).
    """

    derivatives = ("u", "u_xx", "u_yy")
    domain = ((-1.0, 1.0), (-1.0, 1.0))

    def __init__(self, k=1.0, a1=1.0, a2=4.0, boundary="combined"):
        k, a1, a2 = (check_number(n, v) for n, v in (("k", k), ("a1", a1), ("a2", a2)))
        if boundary not in BOUNDARY_OPTIONS:
            raise ValueError(
                f"Argument `boundary` must be one of {BOUNDARY_OPTIONS}; "
                f"received boundary={boundary!r}."
            )
        self.k, self.a1, self.a2, self.boundary = float(k), float(a1), float(a2), boundary
        if boundary == "combined":
            self.term_names = ("L_f", "L_b")
        elif boundary == "per_axis":
            self.term_names = ("L_f", "L_b_x", "L_b_y")
        else:
            self.term_names = ("L_f",) + tuple(f"L_b_{edge}" for edge in EDGES)

    def get_config(self):
        return {"k": self.k, "a1": self.a1, "a2": self.a2, "boundary": self.boundary}

    def source(self, x, y):
        """The right-hand side q(x, y)."""
        w1, w2 = self.a1 * math.pi, self.a2 * math.pi
        return (-(w1**2) - w2**2 + self.k**2) * sin(w1 * x) * sin(w2 * y)

    def residuals(self, x, y, fields):
        u = fields["u"]
        residual = fields["u_xx"] + fields["u_yy"] + self.k**2 * u - self.source(x, y)
        masks = self.boundary_masks(x, y)
        if self.boundary == "per_edge":
            return [tf.square(residual)] + [tf.square(masks[edge] * u) for edge in EDGES]
        if self.boundary == "per_axis":
            x_edges = tf.maximum(masks["left"], masks["right"])
            y_edges = tf.maximum(masks["bottom"], masks["top"])
            return [tf.square(residual), tf.square(x_edges * u), tf.square(y_edges * u)]
        on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
        return [tf.square(residual), tf.square(on_boundary * u)]

    def exact(self, x, y):
        return sin(self.a1 * math.pi * x) * sin(self.a2 * math.pi * y)

    def exact_preds(self, x, y):
        u = np.asarray(self.exact(np.asarray(x, "float64"), np.asarray(y, "float64"))).reshape(-1, 1)
        w1, w2 = self.a1 * math.pi, self.a2 * math.pi
        return np.concatenate([u, -(w1**2) * u, -(w2**2) * u], axis=1)
