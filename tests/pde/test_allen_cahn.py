"""Tests of the Allen-Cahn problem: the ETDRK4 reference against an integrating-factor
RK4 solver, finite differences and finer resolutions; terms, sampling, periodic
networks, serialization and a short training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.pde as pde_lib
from keras_balance.pde import AllenCahnPDE
from keras_balance.pde.allen_cahn import allen_cahn_reference, etdrk4_coefficients
from keras_balance.pinn import PINN, PINNModel, build_pinn, mlp

MODES = AllenCahnPDE.reference_modes


def integrating_factor_rk4(modes, dt, t_end, diffusion=1e-4, reaction=5.0, every=100):
    """Fourier collocation and integrating-factor RK4 (L. N. Trefethen, "Spectral
    methods in MATLAB", 2000, program 27): an independent scheme for the same equation.

    Returns the nodal values at t = 0, every*dt, 2*every*dt, ... as a (S, modes) array.
    """
    x = -1.0 + 2.0 * np.arange(modes) / modes
    k = math.pi * np.fft.fftfreq(modes, 1.0 / modes)
    linear = -diffusion * k**2 + reaction
    half, full = np.exp(linear * dt / 2), np.exp(linear * dt)

    def nonlinear(v):
        return np.fft.fft(-reaction * np.real(np.fft.ifft(v)) ** 3)

    v = np.fft.fft(x**2 * np.cos(np.pi * x))
    out = [np.real(np.fft.ifft(v))]
    for n in range(int(round(t_end / dt))):
        a = dt * nonlinear(v)
        b = dt * nonlinear(half * (v + a / 2))
        c = dt * nonlinear(half * v + b / 2)
        d = dt * nonlinear(full * v + half * c)
        v = full * v + (full * a + 2 * half * (b + c) + d) / 6
        if (n + 1) % every == 0:
            out.append(np.real(np.fft.ifft(v)))
    return np.array(out)


@pytest.fixture(scope="module")
def reference():
    return allen_cahn_reference(1e-4, 5.0, MODES, 1e-3, 1.0)


def nodal(coefficients, modes=MODES):
    return np.fft.irfft(coefficients, modes, axis=-1)


# -- the reference solution ------------------------------------------------------


def test_etdrk4_coefficients_match_closed_forms():
    # Away from z = 0 the contour means equal the closed forms of Cox & Matthews.
    z = np.array([-30.0, -2.0, 1.5])
    e, e2, q, f1, f2, f3 = etdrk4_coefficients(z, 1.0)
    np.testing.assert_allclose(e, np.exp(z), rtol=1e-14)
    np.testing.assert_allclose(q, (np.exp(z / 2) - 1) / z, rtol=1e-12)
    np.testing.assert_allclose(f1, (-4 - z + np.exp(z) * (4 - 3 * z + z**2)) / z**3, rtol=1e-10)
    np.testing.assert_allclose(f2, (2 + z + np.exp(z) * (z - 2)) / z**3, rtol=1e-10)
    np.testing.assert_allclose(f3, (-4 - 3 * z - z**2 + np.exp(z) * (4 - z)) / z**3, rtol=1e-10)
    # And their limits 1/2, 1/6, 1/6, 1/6 at z = 0, where the closed forms cancel.
    np.testing.assert_allclose(etdrk4_coefficients(np.zeros(1), 1.0)[2:], [[0.5], [1 / 6], [1 / 6], [1 / 6]],
                               rtol=1e-12)


def test_reference_agrees_with_integrating_factor_rk4(reference):
    # Same modes, another time integrator: they agree to 1e-9 (measured 4e-10)
    # at t = 0, 0.1, ..., 1.0.
    times, coefficients, _ = reference
    other = integrating_factor_rk4(MODES, 1e-3, 1.0, every=100)
    ours = nodal(coefficients[::100])
    assert ours.shape == other.shape == (11, MODES)
    np.testing.assert_allclose(ours, other, rtol=0, atol=1e-9)
    # The solution has moved: at t = 1 it sits close to the stable states +-1.
    assert np.mean(np.abs(np.abs(ours[-1]) - 1) < 0.05) > 0.75


def test_reference_step_halving_changes_little(reference):
    # Over the fastest part of the evolution, t <= 0.3.
    _, coefficients, _ = reference
    halved = allen_cahn_reference(1e-4, 5.0, MODES, 5e-4, 0.3)[1]
    assert halved.shape[0] == 601
    np.testing.assert_allclose(nodal(halved[::20]), nodal(coefficients[:301:10]), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_reference_against_four_times_the_modes(reference):
    # The kink of u(0, x) at x = +-1 limits the spectral accuracy at early
    # times (see the docstring): measured 4.5e-4 at most (t = 0.003, x = -1),
    # 3.2e-4 at t = 0.01, 1.0e-5 at t = 0.2, 1.6e-9 at t = 1, all next to x = +-1.
    _, coefficients, _ = reference
    fine = allen_cahn_reference(1e-4, 5.0, 4 * MODES, 1e-3, 1.0)[1]
    difference = np.abs(nodal(fine, 4 * MODES)[:, ::4] - nodal(coefficients))
    assert difference.max() < 5e-4
    assert difference[10].max() < 4e-4
    assert difference[200:].max() < 2e-5
    assert difference[-1].max() < 1e-8


def test_exact_satisfies_the_equation_by_finite_differences():
    # Central differences of `exact` (Fourier series in x, Hermite interpolation in t).
    pde = AllenCahnPDE()
    rng = np.random.default_rng(0)
    x, t = rng.uniform(-0.95, 0.95, (80, 1)), rng.uniform(0.2, 0.9, (80, 1))
    ht, hx = 1e-4, 1e-4
    u = pde.exact(x, t)
    u_t = (pde.exact(x, t + ht) - pde.exact(x, t - ht)) / (2 * ht)
    u_xx = (pde.exact(x + hx, t) - 2 * u + pde.exact(x - hx, t)) / hx**2
    residual = u_t - 1e-4 * u_xx + 5 * u**3 - 5 * u
    assert np.max(np.abs(u_t)) > 0.1  # not a trivially constant field
    np.testing.assert_allclose(residual, 0.0, atol=2e-4)
    preds = pde.exact_preds(x, t)
    np.testing.assert_allclose(preds[:, :1], u, atol=1e-15)
    np.testing.assert_allclose(preds[:, 1:2], u_t, atol=2e-4)
    np.testing.assert_allclose(1e-4 * preds[:, 2:3], 1e-4 * u_xx, atol=2e-4)


def test_exact_at_the_initial_time_and_periodicity():
    pde = AllenCahnPDE()
    x = np.linspace(-1, 1, 41).reshape(-1, 1)
    np.testing.assert_allclose(pde.exact(x, np.zeros_like(x)), x**2 * np.cos(np.pi * x), atol=1e-15)
    t = np.linspace(0, 1, 21).reshape(-1, 1)
    np.testing.assert_allclose(pde.exact(-np.ones_like(t), t), pde.exact(np.ones_like(t), t), atol=1e-12)
    # Off the steps, the Hermite interpolant stays between the neighbouring values' scale.
    mid = pde.exact(np.full((3, 1), 0.3), np.array([[0.5], [0.5005], [0.501]]))
    assert abs(mid[1, 0] - (mid[0, 0] + mid[2, 0]) / 2) < 1e-6
    graph = tf.function(lambda a, b: pde.exact(a, b))(tf.constant(x), tf.constant(np.full_like(x, 0.25)))
    np.testing.assert_allclose(graph.numpy(), pde.exact(x, np.full_like(x, 0.25)), atol=1e-15)
    with pytest.raises(ValueError, match="t in"):
        pde.exact(np.zeros((1, 1)), np.full((1, 1), 1.5))


# -- the problem ------------------------------------------------------------------


@pytest.mark.parametrize("means", ["batch", "own"])
def test_terms(means):
    pde = AllenCahnPDE(means=means)
    points = pde.sample(200, 40, seed=2).astype("float64")
    x, t = points[:, :1], points[:, 1:]
    preds = pde.exact_preds(x, t)
    terms = pde.compute_loss(x, t, preds)
    assert [term.shape for term in terms] == [(240, 1)] * 2
    assert max(float(tf.reduce_max(term)) for term in terms) < 1e-20
    wrong = preds.copy()
    wrong[:, 0] += 0.1
    residual, initial = (float(tf.reduce_mean(term)) for term in pde.compute_loss(x, t, wrong))
    np.testing.assert_allclose(initial, 0.01 * (1 if means == "own" else 40 / 240), rtol=1e-10)
    assert residual > 1e-3


def test_time_axis_sampling_and_periodic_network():
    pde = AllenCahnPDE()
    assert pde.time_domain == (0.0, 1.0) and pde.initial_term == "L_i" and pde.periods == (2.0, None)
    points = pde.sample(50, 20, seed=0)
    assert np.all(points[50:, 1] == 0) and np.all(np.abs(points[:, 0]) <= 1)
    assert np.all((points[:50, 1] > 0) & (points[:50, 1] < 1))
    network = build_pinn(pde, width=8, depth=2, seed=0)
    assert network.periods == (2.0, None) and network.network.input_shape == (None, 3)
    t = np.linspace(0, 1, 7).reshape(-1, 1).astype("float32")
    left = network(np.concatenate([-np.ones_like(t), t], axis=1)).numpy()
    right = network(np.concatenate([np.ones_like(t), t], axis=1)).numpy()
    np.testing.assert_allclose(left, right, atol=1e-5)  # u, u_t and u_xx periodic
    again = PINN.from_config(network.get_config())
    assert again.periods == (2.0, None)
    with pytest.raises(ValueError, match="`periods`"):
        PINN(mlp(3, 1, width=4, depth=1), pde.derivatives, pde.domain, periods=(0.0, None))


def test_config_round_trip_and_name():
    pde = AllenCahnPDE(diffusion=2e-4, reaction=4.0, means="own")
    again = pde_lib.deserialize(pde_lib.serialize(pde))
    assert type(again) is AllenCahnPDE and again.get_config() == pde.get_config()
    assert type(pde_lib.get("allen_cahn")) is AllenCahnPDE


@pytest.mark.parametrize("name, value", [("diffusion", 0.0), ("reaction", -1.0), ("means", "x")])
def test_bad_arguments(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        AllenCahnPDE(**{name: value})


def test_a_few_training_steps_reduce_the_loss():
    pde = AllenCahnPDE()
    keras.utils.set_random_seed(0)
    model = PINNModel(pde, build_pinn(pde, width=16, depth=2, seed=0), balancer="sum")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    points = pde.sample(256, 64, seed=0)
    losses = model.fit(points, batch_size=len(points), epochs=20, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses[::5]
