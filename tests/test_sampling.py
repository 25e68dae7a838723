"""Collocation sampling: uniform (unchanged), Sobol and Halton, fixed or resampled every step."""

import numpy as np
import pytest

from keras_balance import bench
from keras_balance.pde import HelmholtzPDE, KirchhoffPDE

METHODS = ("uniform", "sobol", "halton")


def reference_uniform(pde, n_interior, n_boundary, seed):
    """The original uniform sampler, written out: x, y of the interior, then each edge."""
    rng = np.random.default_rng(seed)
    (x0, x1), (y0, y1) = pde.domain
    margin = 2.0 * pde.boundary_tolerance
    interior = np.column_stack([rng.uniform(x0 + margin, x1 - margin, n_interior),
                                rng.uniform(y0 + margin, y1 - margin, n_interior)])
    counts = [n_boundary // 4 + (1 if i < n_boundary % 4 else 0) for i in range(4)]
    parts = [interior]
    for edge, count in zip(("left", "right", "bottom", "top"), counts):
        t = rng.uniform(0.0, 1.0, count)
        xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        parts.append(np.column_stack({"left": (np.full(count, x0), ys), "right": (np.full(count, x1), ys),
                                      "bottom": (xs, np.full(count, y0)), "top": (xs, np.full(count, y1))}[edge]))
    return np.concatenate(parts).astype("float32")


def star_discrepancy(unit_points, grid=32):
    """max over anchored boxes [0, a) x [0, b) on a grid of |fraction inside - a b|."""
    edges = np.linspace(0.0, 1.0, grid + 1)[1:]
    inside_x = unit_points[:, :1] < edges[None, :]
    inside_y = unit_points[:, 1:] < edges[None, :]
    fraction = (inside_x[:, :, None] & inside_y[:, None, :]).mean(axis=0)
    return float(np.abs(fraction - edges[:, None] * edges[None, :]).max())


@pytest.mark.parametrize("pde", [HelmholtzPDE(), KirchhoffPDE()])
@pytest.mark.parametrize("seed", [0, 7])
def test_uniform_is_bit_identical_to_the_original_sampler(pde, seed):
    np.testing.assert_array_equal(pde.sample(100, 22, seed=seed), reference_uniform(pde, 100, 22, seed))
    np.testing.assert_array_equal(pde.sample(100, 22, seed=seed, method="uniform"),
                                  reference_uniform(pde, 100, 22, seed))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pde", [HelmholtzPDE(), KirchhoffPDE()])
def test_shapes_domain_and_edges(method, pde):
    points = pde.sample(200, 42, seed=3, method=method)
    assert points.shape == (242, 2) and points.dtype == np.float32
    (x0, x1), (y0, y1) = pde.domain
    interior, boundary = points[:200], points[200:]
    tol = pde.boundary_tolerance
    assert np.all((interior[:, 0] > x0 + tol) & (interior[:, 0] < x1 - tol))
    assert np.all((interior[:, 1] > y0 + tol) & (interior[:, 1] < y1 - tol))
    on_x = np.isclose(boundary[:, 0], x0) | np.isclose(boundary[:, 0], x1)
    on_y = np.isclose(boundary[:, 1], y0) | np.isclose(boundary[:, 1], y1)
    assert np.all(on_x | on_y)
    assert np.all((boundary >= [x0, y0]) & (boundary <= [x1, y1]))
    # 42 = 11 + 11 + 10 + 10 over left, right, bottom, top
    assert np.sum(np.isclose(boundary[:, 0], x0)) >= 11 and np.sum(np.isclose(boundary[:, 1], y1)) >= 10


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_points_other_seed_other_points(method):
    pde = HelmholtzPDE()
    first = pde.sample(64, 16, seed=5, method=method)
    np.testing.assert_array_equal(first, pde.sample(64, 16, seed=5, method=method))
    assert not np.allclose(first, pde.sample(64, 16, seed=6, method=method))


@pytest.mark.parametrize("method", ["sobol", "halton"])
def test_low_discrepancy_beats_uniform(method):
    pde = HelmholtzPDE()
    (x0, x1), _ = pde.domain

    def unit(points):
        return (points[:1024] - x0) / (x1 - x0)

    uniform = np.median([star_discrepancy(unit(pde.sample(1024, 0, seed=s))) for s in range(5)])
    for seed in (None, 0, 1):
        assert star_discrepancy(unit(pde.sample(1024, 0, seed=seed, method=method))) < 0.5 * uniform


@pytest.mark.parametrize("method", ["sobol", "halton"])
def test_edges_of_low_discrepancy_sets_are_evenly_spread(method):
    pde = HelmholtzPDE()
    points = pde.sample(0, 256, seed=2, method=method)
    left = np.sort(points[:64, 1])  # the left edge: x = -1, y spread over [-1, 1]
    gaps = np.diff(np.concatenate([[-1.0], left, [1.0]]))
    random_gaps = np.diff(np.concatenate([[-1.0], np.sort(pde.sample(0, 256, seed=2)[:64, 1]), [1.0]]))
    assert gaps.max() < random_gaps.max()


@pytest.mark.parametrize("method", METHODS)
def test_steps_give_new_points(method):
    pde = KirchhoffPDE()
    sets = [pde.sample(50, 12, seed=1, method=method, step=k) for k in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.any(np.all(np.isclose(sets[a][:50, None], sets[b][None, :50]), axis=-1))
    if method != "uniform":
        np.testing.assert_array_equal(sets[0], pde.sample(50, 12, seed=1, method=method))
        # consecutive sets are consecutive points of the sequence: together they are one larger set
        two = np.concatenate([sets[0][:50], sets[1][:50]])
        assert two.shape == (100, 2)


def test_bad_sampling_arguments():
    pde = HelmholtzPDE()
    with pytest.raises(ValueError, match="`method`.*received method='random'"):
        pde.sample(8, 4, method="random")
    with pytest.raises(ValueError, match="`step`.*received step=-1"):
        pde.sample(8, 4, step=-1)
    with pytest.raises(ValueError, match="`sampling`.*received sampling='grid'"):
        bench.train("helmholtz", "sum", steps=1, verbose=0, sampling="grid")


@pytest.mark.parametrize("method", METHODS)
def test_resampled_dataset_gives_a_fresh_set_every_step(method):
    pde = HelmholtzPDE()
    dataset, points = bench.point_dataset(pde, 32, 8, seed=4, sampling=method, resample=True)
    iterator = iter(dataset)
    batches = [next(iterator).numpy() for _ in range(3)]
    np.testing.assert_array_equal(batches[0], points)
    assert all(b.shape == (40, 2) for b in batches)
    assert not np.allclose(batches[0], batches[1]) and not np.allclose(batches[1], batches[2])
    # A new iterator (a new `fit` call) continues the sequence instead of restarting it.
    again = next(iter(dataset)).numpy()
    assert not any(np.allclose(again, b) for b in batches)
    fixed, fixed_points = bench.point_dataset(pde, 32, 8, seed=4, sampling=method, resample=False)
    first, second = list(fixed.take(2).as_numpy_iterator())
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, fixed_points)


def test_train_with_resampled_sobol_points():
    result = bench.train("helmholtz", "relobralo", steps=4, seed=0, verbose=0, jit_compile=False,
                         sampling="sobol", resample=True, n_interior=32, n_boundary=8, width=8, depth=2)
    assert result.status == "ok" and np.isfinite(result.rel_l2)
    assert (result.sampling, result.resample) == ("sobol", True)
    assert result.summary()["sampling"] == "sobol"
