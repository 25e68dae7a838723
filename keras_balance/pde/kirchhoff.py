"""The Kirchhoff plate-bending equation of Bischof's article."""

import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import EDGES, PDE, check_means, check_number, own_mean, sin


class KirchhoffPDE(PDE):
    """Simply supported Kirchhoff plate on [0, W] x [0, H] under a sine load.

        D (w_xxxx + 2 w_xxyy + w_yyyy) = p(x, y),  p = p0 sin(pi x / W) sin(pi y / H),
        D = E h^3 / (12 (1 - nu^2)),

    with the edges simply supported: `w = 0` (term `L_b0`) and zero bending
    moment (term `L_b2`): `w_xx + nu w_yy = 0` on x = 0, W and
    `nu w_xx + w_yy = 0` on y = 0, H. The governing-equation term is `L_f`.
    Exact solution (Navier):
    `w = p0 / (pi^4 D (1/W^2 + 1/H^2)^2) sin(pi x / W) sin(pi y / H)`.

    `boundary="per_edge"`: the two conditions of each edge as separate terms,
    nine in all (`L_f`, then `L_b0_left`, `L_b2_left`, `L_b0_right`, ... in
    the order left, right, bottom, top), as the ReLoBRaLo authors' repository
    trains the plate. `means="own"`: the residual is the mean over the
    interior points and each edge's term the mean over that edge's points (a
    term of several edges is the sum of their means), as in that repository;
    `"batch"` (default, the article's): every term is the mean over the whole
    batch (see `HelmholtzPDE`).

    Reference: R. Bischof, "Improving PINNs through adaptive loss balancing",
    2023 (defaults W = H = 10, p0 = 0.015, E = 30000, h = 0.2, nu = 0.2,
    so D = 20.8333).

    Args:
        width, height: plate size W and H.
        p0: load amplitude.
        E, h, nu: Young's modulus, thickness and Poisson's ratio.
        boundary: `"combined"` (`L_b0` and `L_b2`) or `"per_edge"` (both per edge).
        means: `"batch"` or `"own"`, see above.
    """

    derivatives = ("w", "w_xx", "w_yy", "w_xxxx", "w_xxyy", "w_yyyy")
    term_names = ("L_f", "L_b0", "L_b2")

    def __init__(self, width=10.0, height=10.0, p0=0.015, E=30000.0, h=0.2, nu=0.2, boundary="combined",
                 means="batch"):
        width, height, E, h = (
            check_number(n, v, 0.0, low_open=True)
            for n, v in (("width", width), ("height", height), ("E", E), ("h", h))
        )
        nu = check_number("nu", nu, 0.0, 0.5, high_open=True)
        p0 = check_number("p0", p0)
        self.width, self.height = float(width), float(height)
        self.p0, self.E, self.h, self.nu = float(p0), float(E), float(h), float(nu)
        self.domain = ((0.0, self.width), (0.0, self.height))
        if boundary not in ("combined", "per_edge"):
            raise ValueError(f"Argument `boundary` must be one of ('combined', 'per_edge'); received boundary={boundary!r}.")
        self.boundary = boundary
        self.means = check_means(means)
        if boundary == "per_edge":
            self.term_names = ("L_f",) + tuple(f"L_b{order}_{edge}" for edge in EDGES for order in (0, 2))

    @property
    def D(self):
        """Flexural rigidity E h^3 / (12 (1 - nu^2))."""
        return self.E * self.h**3 / (12.0 * (1.0 - self.nu**2))

    @property
    def characteristic_scale(self):
        """Deflection scale from the load, stiffness and size: p0 W^2 H^2 / (pi^4 D).

        It is the deflection that balances the load through w_xxxx and w_yyyy
        alone, a dimensional estimate (4x the exact amplitude on a square plate).
        """
        return self.p0 * self.width**2 * self.height**2 / (math.pi**4 * self.D)

    @property
    def amplitude(self):
        """Maximum deflection of the exact solution (at the plate centre)."""
        return self.p0 / (math.pi**4 * self.D * (1 / self.width**2 + 1 / self.height**2) ** 2)

    def get_config(self):
        config = {"width": self.width, "height": self.height, "p0": self.p0,
                  "E": self.E, "h": self.h, "nu": self.nu}
        if self.boundary != "combined":
            config["boundary"] = self.boundary
        if self.means != "batch":
            config["means"] = self.means
        return config

    def load(self, x, y):
        """The distributed load p(x, y)."""
        return self.p0 * sin(math.pi * x / self.width) * sin(math.pi * y / self.height)

    def residuals(self, x, y, fields):
        biharmonic = fields["w_xxxx"] + 2.0 * fields["w_xxyy"] + fields["w_yyyy"]
        residual = self.D * biharmonic - self.load(x, y)
        masks = self.boundary_masks(x, y)
        if self.boundary == "per_edge" or self.means == "own":
            return self._edge_terms(residual, fields, masks)
        x_edges = tf.maximum(masks["left"], masks["right"])
        y_edges = tf.maximum(masks["bottom"], masks["top"])
        on_boundary = tf.maximum(x_edges, y_edges)
        w, w_xx, w_yy = fields["w"], fields["w_xx"], fields["w_yy"]
        moment = tf.square(x_edges * (w_xx + self.nu * w_yy)) + tf.square(
            y_edges * (self.nu * w_xx + w_yy)
        )
        return [tf.square(residual), tf.square(on_boundary * w), moment]

    def _edge_terms(self, residual, fields, masks):
        """The terms from each edge's own conditions: per edge, or summed (`means="own"`)."""
        w, w_xx, w_yy = fields["w"], fields["w_xx"], fields["w_yy"]
        moments = {"left": w_xx + self.nu * w_yy, "right": w_xx + self.nu * w_yy,
                   "bottom": self.nu * w_xx + w_yy, "top": self.nu * w_xx + w_yy}
        if self.means == "own":
            on_boundary = tf.reduce_max(tf.stack(list(masks.values())), axis=0)
            first = own_mean(tf.square(residual), 1.0 - on_boundary)
            edge0 = {e: own_mean(tf.square(w), masks[e]) for e in EDGES}
            edge2 = {e: own_mean(tf.square(moments[e]), masks[e]) for e in EDGES}
        else:
            first = tf.square(residual)
            edge0 = {e: tf.square(masks[e] * w) for e in EDGES}
            edge2 = {e: tf.square(masks[e] * moments[e]) for e in EDGES}
        if self.boundary == "per_edge":
            return [first] + [term for e in EDGES for term in (edge0[e], edge2[e])]
        return [first, tf.add_n([edge0[e] for e in EDGES]), tf.add_n([edge2[e] for e in EDGES])]

    def exact(self, x, y):
        return self.amplitude * sin(math.pi * x / self.width) * sin(math.pi * y / self.height)

    def exact_preds(self, x, y):
        w = np.asarray(self.exact(np.asarray(x, "float64"), np.asarray(y, "float64"))).reshape(-1, 1)
        kx2, ky2 = (math.pi / self.width) ** 2, (math.pi / self.height) ** 2
        return np.concatenate(
            [w, -kx2 * w, -ky2 * w, kx2**2 * w, kx2 * ky2 * w, ky2**2 * w], axis=1
        )
