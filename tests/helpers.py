"""Helpers shared by the test modules: balancers built from the registry, and test data.

`tests/conftest.py` puts this folder on the import path, so any test module can
`from helpers import ...`.
"""

import inspect
import math

import numpy as np
import pytest

from keras_balance import balancers

# -- balancers from the registry -------------------------------------------------------------

#: Every registered name, and the names of each kind.
NAMES = sorted(balancers.available())
LOSS_LEVEL = [name for name in NAMES if balancers.available()[name].kind == balancers.LOSS_LEVEL]
GRADIENT_LEVEL = [name for name in NAMES if balancers.available()[name].kind == balancers.GRADIENT_LEVEL]

#: Options other than the defaults, per method, for K = 3 terms: each dict takes
#: the method through code its defaults leave out. Most registry-wide suites run
#: every method with its defaults and with each of these (`variants`).
OPTIONS = {
    "aligned_mtl": [dict(preference=[1.0, 0.5, 2.0], scale="rmse", rtol=1e-6)],
    "cagrad": [dict(c=0.4, rescale=1)],
    "config": [dict(preference=[1.0, 0.5, 2.0], rcond=1e-8)],
    "dualproj": [dict(norm_eps=1e-4, reg_eps=1e-6)],
    "fairgrad": [dict(alpha=2.0), dict(alpha=0.0)],
    "dwa": [dict(temperature=0.7, per="step", epsilon=1e-9), dict(temperature=0.7, epsilon=1e-9)],
    "famo": [dict(min_losses=[0.1, 0.0, 0.2], learning_rate=0.1, weight_decay=1e-5, epsilon=1e-6)],
    "generalized_mean": [
        dict(gamma=-1.5, epsilon=1e-9),
        dict(gamma=float("inf")),
        dict(gamma=-float("inf")),
        dict(gamma=0.5),
        dict(gamma=3.0),
    ],
    "gradient_normalization": [dict(scale="mean_norm", alpha=0.12, epsilon=1e-9), dict(epsilon=0.0),
                               dict(scale="mean_norm", momentum=0.9, update_every=3)],
    "gradvac": [dict(beta=0.01, epsilon=1e-8, seed=3)],
    "gradnorm": [dict(alpha=0.12, learning_rate=0.01, layer="trunk", optimizer="sgd", min_weight=1e-2)],
    "imtl_l": [dict(epsilon=1e-9)],
    "initial_loss": [dict(n_initial=4, epsilon=1e-9)],
    "lr_annealing": [dict(smoothing=0.5, mode="mean", update_every=4, reference=1)],
    "nash_mtl": [dict(max_norm=0.5, update_every=2)],
    "ntk": [dict(update_every=3, momentum=0.9, numerator="mean", means="own", points=16, seed=2)],
    "mgda": [dict(normalization="loss+", solver="frank_wolfe", max_iterations=40, tolerance=1e-5)],
    "pcgrad": [dict(reduction="mean", seed=42)],
    "prior_loss": [dict(prior_losses=[0.25, 3.0, 1.5], epsilon=1e-8)],
    "real_time": [dict(epsilon=1e-6)],
    "relobralo": [dict(alpha=0.8, temperature=0.5, rho=0.7, epsilon=1e-9, seed=5), dict(alpha=0.9, rho=1.0)],
    "rlw": [dict(seed=17)],
    "softadapt": [
        dict(beta=0.5, variant="loss_weighted", window=4, sum_to_k=False, epsilon=1e-9),
        dict(beta=3.0, variant="normalized", window=3),
    ],
    "stch": [
        dict(mu=0.1, preference=[0.5, 0.2, 0.3], ideal_point=[0.1, 0.0, 0.2]),
        dict(mu=0.5, preference=[1.0, 1.0, 1.0], normalization="log_nadir", warmup_epochs=1, epsilon=1e-12),
        dict(preference=[1.0, 2.0, 1.0], normalization="log_nadir", nadir_point=[1.0, 0.5, 2.0]),
    ],
    "sum": [dict(weights=[1.0, 0.5, 2.0])],
    "uncertainty": [dict(regularizer="log1p", epsilon=1e-9)],
    "upgrad": [dict(norm_eps=1e-4, reg_eps=1e-6)],
}

#: The option of a method that gives one value per term, and so fixes K.
ONE_VALUE_PER_TERM = {"aligned_mtl": "preference", "famo": "min_losses", "prior_loss": "prior_losses",
                      "config": "preference", "stch": "preference", "sum": "weights"}


#: Balancers that stand for the registry in the default run of the long per-balancer
#: tests (a stateless, a stateful loss-level, a learned, a projection and a
#: min-norm method); `pytest -m slow` runs every name.
REPRESENTATIVE = ("relobralo", "uncertainty", "pcgrad", "mgda", "lr_annealing")


def default_or_slow(names, default=REPRESENTATIVE):
    """`pytest.param`s of `names`: those in `default` run by default, the others under `-m slow`."""
    return [pytest.param(name, marks=() if name in default else pytest.mark.slow) for name in names]


def variants(names):
    """`pytest.param` pairs `(name, options)`: each method with its defaults, then with its `OPTIONS`."""
    return [
        pytest.param(name, options, id=f"{name}-{index}" if index else name)
        for name in names
        for index, options in enumerate([{}] + OPTIONS.get(name, []))
    ]


def takes_seed(name):
    """Does the method draw random numbers (and so take a `seed`)?"""
    return "seed" in inspect.signature(balancers.available()[name].__init__).parameters


def make(name, terms, /, seed=0, **options):
    """A new registered balancer with the required arguments for `terms` terms (`balancers.example`).

    A method that draws random numbers gets `seed` unless `options` give one
    (None: it draws its own). `options` may hold the constructor's own
    `num_terms`, which builds the state at once.
    """
    if seed is not None and takes_seed(name):
        options.setdefault("seed", seed)
    if "num_terms" not in options:
        return balancers.example(name, terms, **options)
    # `example` names its K `num_terms` too, so the constructor's argument goes in directly.
    cls = balancers.available()[name]
    return cls(**{**cls.required_arguments(terms), **options})


def state_of(balancer):
    """Every variable of a balancer but the record of the latest losses: `{path: value}`."""
    return {
        v.path: np.array(v.numpy(), copy=True) for v in balancer.variables if v is not balancer.term_losses
    }


def assert_same_state(a, b):
    """Two `state_of` results hold the same variables (by name) with the same values."""
    assert [key.split("/")[-1] for key in a] == [key.split("/")[-1] for key in b]
    for (key, x), y in zip(a.items(), b.values()):
        np.testing.assert_array_equal(x, y, err_msg=key)


# -- data ---------------------------------------------------------------------------------------


def random_sequence(steps, num_terms, seed=0, low=0.5, high=2.0, log_uniform=False):
    """`steps` rows of `num_terms` losses, uniform in [low, high) (or uniform in log space)."""
    rng = np.random.default_rng(seed)
    if log_uniform:
        return np.exp(rng.uniform(math.log(low), math.log(high), size=(steps, num_terms)))
    return rng.uniform(low, high, size=(steps, num_terms))


def full_rank(k, p, seed, spread=None):
    """A random (k, p) Jacobian with rows of different norms.

    The rows are scaled by factors uniform in [0.2, 5), or, with `spread`, by
    `exp(spread * N(0, 1))`.
    """
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(k, p))
    if spread is None:
        return rows * rng.uniform(0.2, 5.0, size=(k, 1))
    return rows * np.exp(spread * rng.normal(size=(k, 1)))


def jacobians(seed=0, columns=12):
    """Random (K, P) float64 matrices for K = 2..10; the rank cycles through K, 1 and K // 2."""
    rng = np.random.default_rng(seed)
    out = []
    for num in range(2, 11):
        rank = (num, 1, max(1, num // 2))[num % 3 - 2]
        out.append(rng.normal(size=(num, rank)) @ rng.normal(size=(rank, columns)))
    return out


def sample_matrices(p=12):
    """All-zero, rank 1 .. full, and rows scaled from 1e-10 to 1e10."""
    rng = np.random.default_rng(0)
    out = [np.zeros((3, p))]
    for k in (2, 3, 5, 10):
        for rank in sorted({1, min(2, k), k}):
            base = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, p))
            for scale in (1e-10, 1.0, 1e10):
                out.append(scale * base)
        mixed = rng.normal(size=(k, p)) * np.logspace(-10, 10, k)[:, None]
        mixed[0] = 0.0
        out.append(mixed)
    return out


# -- problems -----------------------------------------------------------------------------------


def domain_points(pde, n, seed):
    """`n` points uniform in the rectangle of `pde`, as two (n, 1) float64 columns x and y."""
    rng = np.random.default_rng(seed)
    (x0, x1), (y0, y1) = pde.domain
    return rng.uniform(x0, x1, (n, 1)), rng.uniform(y0, y1, (n, 1))


def split(points, dtype):
    """The columns x and y of (N, 2) points, in `dtype`."""
    points = np.asarray(points)
    return points[:, :1].astype(dtype), points[:, 1:].astype(dtype)


def near_edge(pde, points):
    """Points off the edges but within `boundary_tolerance` of one: the boundary
    masks count them as boundary points although the solution is not exactly 0 there."""
    (x0, x1), (y0, y1) = pde.domain
    p = np.asarray(points, "float64")
    distance = np.min(np.abs([p[:, 0] - x0, p[:, 0] - x1, p[:, 1] - y0, p[:, 1] - y1]), axis=0)
    return (distance > 0) & (distance <= pde.boundary_tolerance)


def bad_arguments(table):
    """`pytest.param` pairs `(name, value)` from `{argument name: [values the constructor refuses]}`."""
    return [pytest.param(name, value, id=f"{name}-{value}") for name, values in table.items() for value in values]


def assert_refused(build, arguments, name):
    """`build(**arguments)` raises a ValueError whose message names the argument `name` and its value."""
    with pytest.raises(ValueError) as info:
        build(**arguments)
    message = str(info.value)
    assert f"`{name}`" in message and repr(arguments[name]) in message, message
