"""Tests of the shared PDE machinery: sampling, grids, `compute_loss` input checks,
`error()`, `validation_loss` and the `keras_balance.pde.get` registry."""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras_balance.pde as pde_lib
from keras_balance.pde import PDE, HelmholtzPDE, KirchhoffPDE

PROBLEMS = {
    "helmholtz": lambda: HelmholtzPDE(),
    "helmholtz_per_edge": lambda: HelmholtzPDE(boundary="per_edge"),
    "kirchhoff": lambda: KirchhoffPDE(),
    "kirchhoff_rect": lambda: KirchhoffPDE(width=10.0, height=5.0),
}


@pytest.fixture(params=sorted(PROBLEMS))
def pde(request):
    return PROBLEMS[request.param]()


# -- sample() ------------------------------------------------------------------


def test_sample_shape_dtype_and_interior(pde):
    (x0, x1), (y0, y1) = pde.domain
    points = pde.sample(n_interior=200, n_boundary=40, seed=0)
    assert points.shape == (240, 2)
    assert points.dtype == np.float32
    interior = points[:200]
    assert np.all((interior[:, 0] > x0) & (interior[:, 0] < x1))
    assert np.all((interior[:, 1] > y0) & (interior[:, 1] < y1))
    # The interior points are spread over the domain, not collapsed somewhere.
    assert interior[:, 0].std() > 0.2 * (x1 - x0)
    assert interior[:, 1].std() > 0.2 * (y1 - y0)


@pytest.mark.parametrize("n_boundary, counts", [(40, [10, 10, 10, 10]), (6, [2, 2, 1, 1]), (3, [1, 1, 1, 0])])
def test_sample_boundary_points_lie_on_edges_split_evenly(pde, n_boundary, counts):
    (x0, x1), (y0, y1) = pde.domain
    points = pde.sample(n_interior=5, n_boundary=n_boundary, seed=1)
    assert points.shape == (5 + n_boundary, 2)
    boundary = points[5:]
    starts = np.cumsum([0] + counts)
    left, right, bottom, top = (boundary[starts[i] : starts[i + 1]] for i in range(4))
    for block, count in zip((left, right, bottom, top), counts):
        assert len(block) == count
    # The fixed coordinate is exactly the edge; the free one lies within the edge.
    assert np.all(left[:, 0] == np.float32(x0)) and np.all(right[:, 0] == np.float32(x1))
    assert np.all(bottom[:, 1] == np.float32(y0)) and np.all(top[:, 1] == np.float32(y1))
    for block in (left, right):
        assert np.all((block[:, 1] >= y0) & (block[:, 1] <= y1))
    for block in (bottom, top):
        assert np.all((block[:, 0] >= x0) & (block[:, 0] <= x1))
    # And the boundary masks see each block on its own edge.
    masks = pde.boundary_masks(tf.constant(boundary[:, :1]), tf.constant(boundary[:, 1:]))
    for edge, block_start, count in zip(("left", "right", "bottom", "top"), starts, counts):
        mask = masks[edge].numpy().ravel()
        assert np.all(mask[block_start : block_start + count] == 1.0)


def test_sample_boundary_only_and_interior_only(pde):
    assert pde.sample(n_interior=0, n_boundary=8, seed=0).shape == (8, 2)
    assert pde.sample(n_interior=7, n_boundary=0, seed=0).shape == (7, 2)
    assert pde.sample(n_interior=np.int64(3), n_boundary=np.int32(4), seed=0).shape == (7, 2)


def test_sample_defaults(pde):
    assert pde.sample(seed=0).shape == (1024 + 256, 2)


def test_sample_seed_reproducible(pde):
    a = pde.sample(50, 20, seed=123)
    b = pde.sample(50, 20, seed=123)
    c = pde.sample(50, 20, seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:50], c[:50])
    assert not np.array_equal(a[50:], c[50:])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_interior": -1}, "n_interior"),
        ({"n_boundary": -4}, "n_boundary"),
        ({"n_interior": 2.5}, "n_interior"),
        ({"n_interior": 10.0}, "n_interior"),
        ({"n_boundary": "8"}, "n_boundary"),
        ({"n_boundary": True}, "n_boundary"),
        ({"n_interior": None}, "n_interior"),
        ({"n_interior": 0, "n_boundary": 0}, "n_interior=0 and n_boundary=0"),
    ],
)
def test_sample_bad_arguments(pde, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        pde.sample(**kwargs)


# -- grid() --------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 11])
def test_grid_shape_and_corners(pde, n):
    (x0, x1), (y0, y1) = pde.domain
    points = pde.grid(n)
    assert points.shape == (n * n, 2)
    assert points.dtype == np.float32
    rows = {tuple(p) for p in points.tolist()}
    for corner in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
        assert tuple(np.float32(corner).tolist()) in rows
    assert len(rows) == n * n  # all points distinct
    np.testing.assert_allclose(np.unique(points[:, 0]), np.linspace(x0, x1, n), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.unique(points[:, 1]), np.linspace(y0, y1, n), rtol=1e-6, atol=1e-6)


def test_grid_default_size(pde):
    assert pde.grid().shape == (101 * 101, 2)


@pytest.mark.parametrize("n", [1, 0, -3, 2.0, "5", True, None])
def test_grid_bad_n(pde, n):
    with pytest.raises(ValueError, match="`n`"):
        pde.grid(n)


# -- compute_loss input checks -------------------------------------------------


def test_compute_loss_too_few_columns(pde):
    points = pde.sample(4, 4, seed=0)
    x, y = points[:, :1], points[:, 1:]
    too_few = np.zeros((8, len(pde.derivatives) - 1), "float32")
    with pytest.raises(ValueError, match="preds") as info:
        pde.compute_loss(x, y, too_few)
    message = str(info.value)
    assert str(pde.derivatives) in message
    assert f"(N, {len(pde.derivatives)})" in message
    with pytest.raises(ValueError, match="preds"):
        pde.compute_loss(x, y, np.zeros((8,), "float32"))


def test_compute_loss_returns_one_column_per_term(pde):
    points = pde.sample(6, 8, seed=0)
    x, y = points[:, :1], points[:, 1:]
    preds = np.random.default_rng(0).normal(size=(14, len(pde.derivatives))).astype("float32")
    terms = pde.compute_loss(x, y, preds)
    assert isinstance(terms, list)
    assert len(terms) == pde.num_terms == len(pde.term_names)
    for term in terms:
        assert tuple(term.shape) == (14, 1)
        assert term.dtype == tf.float32
        assert np.all(term.numpy() >= 0.0)


def test_compute_loss_accepts_tensors_and_follows_preds_dtype(pde):
    points = pde.sample(3, 4, seed=0)
    preds = pde.exact_preds(points[:, :1], points[:, 1:])
    terms = pde.compute_loss(tf.constant(points[:, :1]), tf.constant(points[:, 1:]), tf.constant(preds))
    assert all(t.dtype == tf.float64 for t in terms)


# -- validation_loss and error() -----------------------------------------------


def test_validation_loss(pde):
    points = pde.sample(10, 8, seed=3)
    x, y = points[:, :1].astype("float64"), points[:, 1:].astype("float64")
    preds = pde.exact_preds(x, y)
    np.testing.assert_allclose(pde.validation_loss(x, y, preds).numpy(), 0.0, atol=1e-24)
    preds[:, 0] += 0.25
    np.testing.assert_allclose(pde.validation_loss(x, y, preds).numpy(), 0.0625, rtol=1e-10)


def _exact64(pde, points):
    points = np.asarray(points, "float64")
    return np.asarray(pde.exact(points[:, :1], points[:, 1:]))


@pytest.mark.parametrize("shape", ["(M,)", "(M,1)", "(M,C)"])
def test_error_of_exact_solution_is_zero(pde, shape):
    def predict(points):
        assert points.shape == (21 * 21, 2) and points.dtype == np.float32
        if shape == "(M,)":
            return _exact64(pde, points).reshape(-1)
        if shape == "(M,1)":
            return _exact64(pde, points).reshape(-1, 1)
        return pde.exact_preds(points[:, :1], points[:, 1:])

    result = pde.error(predict, n=21)
    assert set(result) == {"rel_l2", "mse"}
    assert isinstance(result["rel_l2"], float) and isinstance(result["mse"], float)
    # error() evaluates the reference `exact` on the float32 grid, so agreement is
    # to float32 precision only.
    assert result["rel_l2"] < 1e-6
    assert result["mse"] < 1e-12 * np.mean(_exact64(pde, pde.grid(21)) ** 2)


@pytest.mark.parametrize("shape", ["(M,)", "(M,C)"])
def test_error_of_doubled_solution(pde, shape):
    n = 17
    grid = pde.grid(n)
    exact = _exact64(pde, grid).reshape(-1)

    def predict(points):
        doubled = 2.0 * pde.exact_preds(points[:, :1], points[:, 1:])
        return doubled[:, 0] if shape == "(M,)" else doubled

    result = pde.error(predict, n=n)
    assert result["rel_l2"] == pytest.approx(1.0, rel=1e-6)
    assert result["mse"] == pytest.approx(np.mean(exact**2), rel=1e-6)
    assert result["mse"] > 0


def test_error_of_constant_offset(pde):
    exact = _exact64(pde, pde.grid(11)).reshape(-1)
    # Not a grid of zeros of the solution:
    assert np.max(np.abs(exact)) > 0.5 * np.max(np.abs(_exact64(pde, pde.grid(101))))
    result = pde.error(lambda p: _exact64(pde, p).reshape(-1) + 0.5, n=11)
    assert result["mse"] == pytest.approx(0.25, rel=1e-6)
    assert result["rel_l2"] == pytest.approx(0.5 * np.sqrt(exact.size) / np.linalg.norm(exact), rel=1e-6)


# -- properties shared by all problems -----------------------------------------


def test_field_and_num_terms(pde):
    assert pde.field == pde.derivatives[0]
    assert pde.num_terms == len(pde.term_names)
    assert pde.term_names[0] == "L_f"
    assert repr(pde).startswith(type(pde).__name__ + "(")


def test_boundary_masks():
    pde = HelmholtzPDE()
    x = tf.constant([[-1.0], [1.0], [0.2], [0.3], [-1.0], [0.0], [1.0 - 1e-6], [0.999]])
    y = tf.constant([[0.5], [0.1], [-1.0], [1.0], [-1.0], [0.0], [0.0], [0.0]])
    masks = {k: v.numpy().ravel() for k, v in pde.boundary_masks(x, y).items()}
    np.testing.assert_array_equal(masks["left"], [1, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(masks["right"], [0, 1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(masks["bottom"], [0, 0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(masks["top"], [0, 0, 0, 1, 0, 0, 0, 0])


def test_base_class_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        PDE()

    class OneTerm(PDE):
        derivatives = ("u",)
        term_names = ("L",)

    with pytest.raises(TypeError, match="OneTerm"):
        OneTerm()

    class Complete(OneTerm):
        def residuals(self, x, y, fields):
            return [tf.square(fields["u"] - x)]

        def exact(self, x, y):
            return x

        def exact_preds(self, x, y):
            return np.asarray(x)

    pde = Complete()
    assert pde.num_terms == 1 and pde.get_config() == {}
    xs = np.linspace(0, 1, 5).reshape(-1, 1).astype("float32")
    (term,) = pde.compute_loss(xs, xs, pde.exact_preds(xs, xs))
    np.testing.assert_array_equal(term.numpy(), 0.0)


# -- keras_balance.pde.get -----------------------------------------------------


@pytest.mark.parametrize("name, cls", [("helmholtz", HelmholtzPDE), ("Kirchhoff", KirchhoffPDE),
                                        ("HELMHOLTZ", HelmholtzPDE), ("kirchhoff", KirchhoffPDE)])
def test_get_by_name(name, cls):
    problem = pde_lib.get(name)
    assert type(problem) is cls
    assert problem.get_config() == cls().get_config()


def test_get_with_kwargs_and_instance():
    problem = pde_lib.get("helmholtz", k=2.0, boundary="per_edge")
    assert problem.k == 2.0 and problem.num_terms == 5
    plate = pde_lib.get("kirchhoff", width=4.0, height=2.0)
    assert plate.domain == ((0.0, 4.0), (0.0, 2.0))
    instance = KirchhoffPDE(nu=0.3)
    assert pde_lib.get(instance) is instance
    assert set(pde_lib.PROBLEMS) == {"helmholtz", "kirchhoff", "burgers", "allen_cahn", "poisson", "advection"}


def test_get_unknown_name_lists_known():
    with pytest.raises(ValueError, match="wave") as info:
        pde_lib.get("wave")
    assert "helmholtz" in str(info.value) and "kirchhoff" in str(info.value)
