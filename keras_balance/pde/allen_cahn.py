"""The Allen-Cahn equation with periodic boundaries, with a spectral (ETDRK4) reference."""

import collections
import functools
import math

import numpy as np
import tensorflow as tf

from keras_balance.pde.base import PDE, check_means, check_number, own_mean


def etdrk4_coefficients(linear, dt, contour_points=64):
    """The ETDRK4 coefficients of a diagonal linear operator, by contour integrals.

    For each eigenvalue L (an array `linear`) and step h = `dt`, the
    functions of z = h L in Cox & Matthews' scheme are evaluated as the mean
    of their values on a circle of radius 1 around z, which avoids the
    cancellation of their closed forms near z = 0 (A.-K. Kassam and L. N.
    Trefethen, "Fourth-order time-stepping for stiff PDEs", SIAM J. Sci.
    Comput. 26, 2005, eq. 2.5 and section 3; S. M. Cox and P. C. Matthews,
    "Exponential time differencing for stiff systems", J. Comput. Phys. 176,
    2002, eqs. 26-29).

    Returns:
        `(E, E2, Q, f1, f2, f3)`, real arrays of the shape of `linear`.
    """
    z = dt * np.asarray(linear, "float64")
    roots = np.exp(1j * math.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
    lr = z[..., None] + roots
    exp_lr = np.exp(lr)
    q = dt * np.real(np.mean((np.exp(lr / 2.0) - 1.0) / lr, axis=-1))
    f1 = dt * np.real(np.mean((-4.0 - lr + exp_lr * (4.0 - 3.0 * lr + lr**2)) / lr**3, axis=-1))
    f2 = dt * np.real(np.mean((2.0 + lr + exp_lr * (lr - 2.0)) / lr**3, axis=-1))
    f3 = dt * np.real(np.mean((-4.0 - 3.0 * lr - lr**2 + exp_lr * (4.0 - lr)) / lr**3, axis=-1))
    return np.exp(z), np.exp(z / 2.0), q, f1, f2, f3


@functools.lru_cache(maxsize=4)
def allen_cahn_reference(diffusion, reaction, modes=1024, dt=1e-3, t1=1.0):
    """The solution of u_t = d u_xx + r (u - u^3), u(0, x) = x^2 cos(pi x), periodic on [-1, 1].

    Fourier collocation on `modes` equispaced points x_j = -1 + 2 j / modes
    and ETDRK4 in time (`etdrk4_coefficients`) with the linear part
    L = -d k^2 + r on the diagonal and the nonlinear part -r u^3 evaluated
    on the points; the solution is kept at every step.

    Returns:
        `(times, coefficients, rates)`: the (S,) step times and the (S, M)
        real-FFT coefficients of u and of u_t (from the equation) at each
        of them, M = modes / 2 + 1.
    """
    x = -1.0 + 2.0 * np.arange(modes) / modes
    wavenumbers = math.pi * np.fft.rfftfreq(modes, 1.0 / modes)
    linear = -diffusion * wavenumbers**2 + reaction
    e, e2, q, f1, f2, f3 = etdrk4_coefficients(linear, dt)

    def nonlinear(coefficients):
        return np.fft.rfft(-reaction * np.fft.irfft(coefficients, modes) ** 3)

    steps = int(round(t1 / dt))
    coefficients = np.empty((steps + 1, wavenumbers.size), complex)
    rates = np.empty_like(coefficients)
    v = np.fft.rfft(x**2 * np.cos(math.pi * x))
    coefficients[0] = v
    for n in range(steps):
        nv = nonlinear(v)
        rates[n] = linear * v + nv
        a = e2 * v + q * nv
        na = nonlinear(a)
        b = e2 * v + q * na
        nb = nonlinear(b)
        c = e2 * a + q * (2.0 * nb - nv)
        nc = nonlinear(c)
        v = e * v + f1 * nv + 2.0 * f2 * (na + nb) + f3 * nc
        coefficients[n + 1] = v
    rates[steps] = linear * v + nonlinear(v)
    return np.arange(steps + 1) * dt, coefficients, rates


def evaluate_fourier(coefficients, x, modes, order=0):
    """The real-FFT series of each row of `coefficients` (N, M) at the points `x` (N,), period 2 on [-1, 1].

    `order` differentiates it that many times in x.
    """
    m = np.arange(coefficients.shape[1])
    factor = np.full(m.size, 2.0)
    factor[0] = 1.0
    if modes % 2 == 0:
        factor[-1] = 1.0  # the Nyquist mode appears once
    phase = np.exp(1j * math.pi * (x[:, None] + 1.0) * m)
    values = coefficients * factor * (1j * math.pi * m) ** order * phase
    return np.real(np.sum(values, axis=1)) / modes


class AllenCahnPDE(PDE):
    """The Allen-Cahn equation on x in [-1, 1], t in [0, 1], periodic in x.

        u_t - d u_xx + r u^3 - r u = 0,   u(0, x) = x^2 cos(pi x),

    with d = 1e-4 and r = 5: u is pulled towards the stable states -1 and 1,
    with thin interfaces between them. A time-dependent problem
    (`time_axis = 1`): points are (x, t) rows, the column `u_y` is u_t.

    Terms: `L_f`, the squared residual, and `L_i`, the squared initial error
    at t = 0. The periodic boundary is imposed by the network, not by a term:
    the problem declares `periods = (2, None)` and `build_pinn` gives the
    network the input embedding (cos(pi x), sin(pi x), t), so u and all its x
    derivatives agree at x = -1 and x = 1 exactly (a `PINN` built by hand
    needs `periods=pde.periods` for that). `sample` puts its boundary points
    on t = 0 alone. `means` as for `HelmholtzPDE`.

    Reference solution: Fourier collocation with 1024 modes and ETDRK4 with
    Kassam and Trefethen's contour-integral coefficients, time step 1e-3
    (`allen_cahn_reference`), computed on first use (about a second) and
    kept for the process. Between steps it is the cubic Hermite interpolant
    of u and u_t in time, in x the Fourier series; at t = 0 it is the initial
    condition itself. The initial condition has a kink at x = +-1 (u' jumps
    from -2 to 2), which limits the spectral accuracy at early times: the
    reference differs from a 4096-mode solution by at most 4.5e-4 (at
    t = 0.003, at x = +-1), 3.2e-4 at t = 0.01, 1e-5 at t = 0.2 and 2e-9
    at t = 1; an integrating-factor RK4 solver with the same modes agrees
    to 1e-9, and halving the time step changes it by less than 1e-9.

    Reference: M. Raissi, P. Perdikaris and G. E. Karniadakis,
    "Physics-informed neural networks", J. Comput. Phys. 378, 2019 (the
    Allen-Cahn example of the discrete-time models); S. Wang, S. Sankaran
    and P. Perdikaris, "Respecting causality for training physics-informed
    neural networks", Comput. Methods Appl. Mech. Eng. 421, 2024 (the same
    problem trained with causal weights and a periodic embedding).

    Args:
        diffusion: d, > 0.
        reaction: r, >= 0.
        means: `"batch"` or `"own"`.
    """

    derivatives = ("u", "u_y", "u_xx")
    domain = ((-1.0, 1.0), (0.0, 1.0))
    time_axis = 1
    initial_term = "L_i"
    term_names = ("L_f", "L_i")
    periods = (2.0, None)
    boundary_edges = ("bottom",)

    #: Fourier modes and time step of the reference solver.
    reference_modes = 1024
    reference_dt = 1e-3

    def __init__(self, diffusion=1e-4, reaction=5.0, means="batch"):
        self.diffusion = check_number("diffusion", diffusion, 0.0, low_open=True)
        self.reaction = check_number("reaction", reaction, 0.0)
        self.means = check_means(means)
        self._cache = collections.OrderedDict()

    def get_config(self):
        config = {"diffusion": self.diffusion, "reaction": self.reaction}
        if self.means != "batch":
            config["means"] = self.means
        return config

    def initial(self, x):
        """The initial condition u(0, x) = x^2 cos(pi x)."""
        if tf.is_tensor(x):
            return tf.square(x) * tf.cos(math.pi * x)
        x = np.asarray(x)
        return x**2 * np.cos(math.pi * x)

    @staticmethod
    def initial_xx(x):
        """The second derivative of the initial condition, 2 cos(pi x) - 4 pi x sin(pi x) - pi^2 x^2 cos(pi x)."""
        x = np.asarray(x, "float64")
        return (2.0 - (math.pi * x) ** 2) * np.cos(math.pi * x) - 4.0 * math.pi * x * np.sin(math.pi * x)

    def residuals(self, x, t, fields):
        u = fields["u"]
        residual = fields["u_y"] - self.diffusion * fields["u_xx"] + self.reaction * (u**3 - u)
        initial = self.initial_mask(x, t)
        error = u - self.initial(x)
        if self.means == "own":
            return [own_mean(tf.square(residual), 1.0 - initial), own_mean(tf.square(error), initial)]
        return [tf.square(residual), tf.square(initial * error)]

    # -- reference solution ----------------------------------------------------

    def _reference(self, x, t):
        """u, u_t and u_xx of the reference at the points, remembered for the last 4 point sets."""
        x = np.asarray(x, "float64").reshape(-1)
        t = np.asarray(t, "float64").reshape(-1)
        key = (x.tobytes(), t.tobytes())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        (t0, t1) = self.domain[1]
        if np.any((t < t0) | (t > t1)):
            raise ValueError(f"{type(self).__name__}: the reference covers t in [{t0}, {t1}]; "
                             f"received t from {np.min(t)} to {np.max(t)}.")
        times, coefficients, rates = allen_cahn_reference(
            self.diffusion, self.reaction, self.reference_modes, self.reference_dt, t1
        )
        dt = self.reference_dt
        x = np.mod(x + 1.0, 2.0) - 1.0
        out = np.empty((x.size, 3))
        for start in range(0, x.size, 2048):
            part = slice(start, start + 2048)
            index = np.clip(np.floor(t[part] / dt).astype(int), 0, times.size - 2)
            s = ((t[part] - times[index]) / dt)[:, None]
            # Cubic Hermite basis on [t_n, t_n+1] from the values and the rates.
            h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
            h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
            blended = (h00 * coefficients[index] + h10 * dt * rates[index]
                       + h01 * coefficients[index + 1] + h11 * dt * rates[index + 1])
            u = evaluate_fourier(blended, x[part], self.reference_modes)
            u_xx = evaluate_fourier(blended, x[part], self.reference_modes, order=2)
            # At t0 the initial condition itself (the series blurs its kink at x = +-1).
            start_time = t[part] == t0
            u = np.where(start_time, self.initial(x[part]), u)
            u_xx = np.where(start_time, self.initial_xx(x[part]), u_xx)
            u_t = self.diffusion * u_xx - self.reaction * (u**3 - u)
            out[part] = np.stack([u, u_t, u_xx], axis=1)
        self._cache[key] = out
        while len(self._cache) > 4:
            self._cache.popitem(last=False)
        return out

    def exact(self, x, t):
        """The reference solution at `x`, `t` (arrays, or tensors: then through `tf.numpy_function`)."""
        if tf.is_tensor(x) or tf.is_tensor(t):
            x, t = tf.convert_to_tensor(x), tf.convert_to_tensor(t)
            values = tf.numpy_function(lambda a, b: self.exact(a, b), [x, tf.cast(t, x.dtype)], tf.float64)
            return tf.reshape(values, tf.shape(x))
        return self._reference(x, t)[:, 0].reshape(np.shape(x))

    def exact_preds(self, x, t):
        """The reference u, u_t (from the equation) and u_xx, an (N, 3) float64 array."""
        return self._reference(x, t).copy()
