"""The viscous Burgers equation of Raissi, Perdikaris & Karniadakis, with a Cole-Hopf reference."""

import collections
import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import PDE, check_means, check_number, own_mean

BOUNDARY_OPTIONS = ("combined", "per_edge")


def cole_hopf(x, t, nu, nodes_per_width=8):
    """The solution of u_t + u u_x = nu u_xx, u(0, x) = -sin(pi x), and its x-derivatives.

    The Cole-Hopf transform u = -2 nu phi_x / phi turns the equation into the
    heat equation phi_t = nu phi_xx with phi(0, x) = F(x) = exp(-cos(pi x) / (2 pi nu)),
    so that, with eta = sqrt(4 nu t) z,

        u(t, x) = -<sin(pi (x - eta))>,   <g> = int g F(x - eta) exp(-z^2) dz / int F(x - eta) exp(-z^2) dz,

    the mean of the periodic profile under a Gaussian in z reweighted by F
    (J. D. Cole, Quart. Appl. Math. 9, 1951; E. Hopf, Comm. Pure Appl. Math.
    3, 1950; the form of C. Basdevant et al., "Spectral and finite difference
    solutions of the Burgers equation", Comput. Fluids 14, 1986, eq. 3).
    The derivatives follow from a(y) = F'(y) / F(y) = sin(pi y) / (2 nu),
    a' = pi cos(pi y) / (2 nu) and a'' = -pi^2 a, with b = a - <a>:

        u_x = -2 nu (<a'> + <b^2>),   u_xx = -2 nu (-pi^2 <a> + 3 <b a'> + <b^3>),

    and u_t = nu u_xx - u u_x.

    The integrals use the trapezoidal rule in z on [-Z, Z], which converges
    geometrically for this entire integrand: Z = sqrt(1 / (pi nu) + 40)
    makes the truncated tails below exp(-40) of the largest term (F spans a
    factor exp(1 / (pi nu))), and the step is 1 / `nodes_per_width` of the
    narrowest width of the integrand in z, 1 / sqrt(2 + 2 pi t). Every
    exponent is shifted by its maximum over the nodes before `exp`, so no
    value overflows however small nu is. In float64 the result agrees with
    Gauss-Hermite quadrature and with twice the nodes to about 1e-14.

    Args:
        x, t: arrays of the same size (any shape; flattened), t >= 0.
        nu: the viscosity, > 0.
        nodes_per_width: quadrature nodes per width of the integrand.

    Returns:
        `(u, u_t, u_x, u_xx)`, float64 arrays of shape (N,).
    """
    x = np.asarray(x, "float64").reshape(-1)
    t = np.asarray(t, "float64").reshape(-1)
    u, u_x, u_xx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    if x.size:
        half_range = math.sqrt(1.0 / (math.pi * nu) + 40.0)
        width = 1.0 / math.sqrt(2.0 + 2.0 * math.pi * float(np.max(t)))
        count = 2 * int(math.ceil(half_range * nodes_per_width / width)) + 1
        z = np.linspace(-half_range, half_range, count)
        chunk = max(1, 2**22 // count)
        for start in range(0, x.size, chunk):
            part = slice(start, start + chunk)
            y = x[part, None] - np.sqrt(4.0 * nu * t[part, None]) * z
            exponent = -(z**2) - np.cos(math.pi * y) / (2.0 * math.pi * nu)
            weights = np.exp(exponent - np.max(exponent, axis=1, keepdims=True))
            weights /= np.sum(weights, axis=1, keepdims=True)
            a = np.sin(math.pi * y) / (2.0 * nu)
            a_prime = math.pi * np.cos(math.pi * y) / (2.0 * nu)
            mean = np.sum(weights * a, axis=1)
            b = a - mean[:, None]
            u[part] = -2.0 * nu * mean
            u_x[part] = -2.0 * nu * (np.sum(weights * a_prime, axis=1) + np.sum(weights * b**2, axis=1))
            u_xx[part] = -2.0 * nu * (-(math.pi**2) * mean + 3.0 * np.sum(weights * b * a_prime, axis=1)
                                      + np.sum(weights * b**3, axis=1))
    u_t = nu * u_xx - u * u_x
    return u, u_t, u_x, u_xx


class BurgersPDE(PDE):
    """The viscous Burgers equation on x in [-1, 1], t in [0, 1].

        u_t + u u_x = nu u_xx,   u(0, x) = -sin(pi x),   u(t, -1) = u(t, 1) = 0,

    with nu = 0.01 / pi: a shock forms at x = 0, where the slope reaches
    -152.005 at t = 1.6037 / pi (Basdevant et al. 1986). A time-dependent
    problem (`time_axis = 1`): the points are (x, t) rows, the column `u_y`
    is u_t.

    Terms: `L_f`, the squared residual `(u_t + u u_x - nu u_xx)^2`; `L_i`, the
    squared initial error `(u + sin(pi x))^2` at t = 0; `L_b`, the squared
    boundary value at x = -1 and x = 1 (`boundary="per_edge"`: `L_b_left` and
    `L_b_right`). `sample` puts its boundary points on the edges x = -1,
    x = 1 and t = 0. `means` as for `HelmholtzPDE`: `"batch"` (default) or
    `"own"` (each term the mean over its own points).

    The reference solution is the Cole-Hopf transform evaluated by
    quadrature (`cole_hopf`), accurate to about 1e-13; `exact` computes it at
    the requested points and keeps the last few point sets it was asked for,
    so the error grid of a training run is computed once.

    Reference: M. Raissi, P. Perdikaris and G. E. Karniadakis,
    "Physics-informed neural networks", J. Comput. Phys. 378, 2019 (the
    Burgers example of the continuous-time models, nu = 0.01 / pi).

    Args:
        nu: the viscosity, > 0.
        boundary: `"combined"` (one boundary term) or `"per_edge"` (two).
        means: `"batch"` or `"own"`.
    """

    derivatives = ("u", "u_y", "u_x", "u_xx")
    domain = ((-1.0, 1.0), (0.0, 1.0))
    time_axis = 1
    initial_term = "L_i"

    def __init__(self, nu=0.01 / math.pi, boundary="combined", means="batch"):
        self.nu = check_number("nu", nu, 0.0, low_open=True)
        if boundary not in BOUNDARY_OPTIONS:
            raise ValueError(f"Argument `boundary` must be one of {BOUNDARY_OPTIONS}; received boundary={boundary!r}.")
        self.boundary = boundary
        self.means = check_means(means)
        self.term_names = ("L_f", "L_i", "L_b") if boundary == "combined" else ("L_f", "L_i", "L_b_left", "L_b_right")
        self._cache = collections.OrderedDict()

    def get_config(self):
        config = {"nu": self.nu}
        if self.boundary != "combined":
            config["boundary"] = self.boundary
        if self.means != "batch":
            config["means"] = self.means
        return config

    def initial(self, x):
        """The initial condition u(0, x) = -sin(pi x)."""
        return -tf.sin(math.pi * x) if tf.is_tensor(x) else -np.sin(math.pi * np.asarray(x))

    def residuals(self, x, t, fields):
        u = fields["u"]
        residual = fields["u_y"] + u * fields["u_x"] - self.nu * fields["u_xx"]
        masks = self.boundary_masks(x, t)
        initial = u - self.initial(x)
        edges = [masks["left"], masks["right"]]
        if self.means == "own":
            boundary = tf.maximum(tf.maximum(edges[0], edges[1]), masks["bottom"])
            terms = [own_mean(tf.square(residual), 1.0 - boundary), own_mean(tf.square(initial), masks["bottom"])]
            per_edge = [own_mean(tf.square(u), mask) for mask in edges]
            return terms + (per_edge if self.boundary == "per_edge" else [per_edge[0] + per_edge[1]])
        terms = [tf.square(residual), tf.square(masks["bottom"] * initial)]
        if self.boundary == "per_edge":
            return terms + [tf.square(mask * u) for mask in edges]
        return terms + [tf.square(tf.maximum(edges[0], edges[1]) * u)]

    # -- reference solution ----------------------------------------------------

    def _reference(self, x, t):
        """`cole_hopf` at the points, remembered for the last 4 point sets."""
        x = np.asarray(x, "float64")
        t = np.asarray(t, "float64")
        key = (x.shape, x.tobytes(), t.tobytes())
        if key not in self._cache:
            if np.any(t < 0):
                raise ValueError(f"{type(self).__name__}: the reference needs t >= 0; received t = {np.min(t)}.")
            self._cache[key] = np.stack(cole_hopf(x, t, self.nu), axis=1)
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def exact(self, x, t):
        """The reference solution at `x`, `t` (arrays, or tensors: then through `tf.numpy_function`)."""
        if tf.is_tensor(x) or tf.is_tensor(t):
            x, t = tf.convert_to_tensor(x), tf.convert_to_tensor(t)
            values = tf.numpy_function(lambda a, b: self.exact(a, b), [x, tf.cast(t, x.dtype)], tf.float64)
            return tf.reshape(values, tf.shape(x))
        return self._reference(x, t)[:, 0].reshape(np.shape(x))

    def exact_preds(self, x, t):
        """The reference u, u_t, u_x and u_xx, an (N, 4) float64 array."""
        return self._reference(x, t).copy()
