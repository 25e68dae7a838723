"""Inputs a problem, a balanced loss or a PINN model must refuse (or handle as documented).

Refused with a message that names the argument, what was expected and what was
received: `preds` / `y_pred` whose rows or columns do not match the points, a
`seed` that is not an integer, a `PINNModel` without a problem or whose network
returns the columns of another problem. Documented: a batch without boundary
points (its boundary terms are 0), an empty batch (every term NaN) and sets of
interior or boundary points alone.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from keras_balance import HelmholtzPDE, KirchhoffPDE, PINN, PINNModel, build_pinn
from keras_balance.losses import BalancedLoss
from keras_balance.pinn import mlp

PROBLEMS = [HelmholtzPDE(), HelmholtzPDE(boundary="per_edge"), KirchhoffPDE()]
IDS = ["helmholtz", "helmholtz_per_edge", "kirchhoff"]


def _points_and_preds(pde, n_interior=8, n_boundary=4, seed=0):
    points = pde.sample(n_interior, n_boundary, seed=seed)
    x, y = points[:, :1], points[:, 1:]
    return points, x, y, pde.exact_preds(x, y).astype("float32")


# -- rows of preds / y_pred ----------------------------------------------------


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_compute_loss_with_a_row_fewer_in_preds_is_a_clear_error(pde):
    _, x, y, preds = _points_and_preds(pde)
    columns = len(pde.derivatives)
    with pytest.raises(ValueError, match="same number of rows") as info:
        pde.compute_loss(x, y, preds[:-1])
    message = str(info.value)
    assert f"{type(pde).__name__}.compute_loss" in message
    assert "`preds`" in message and f"preds of shape (11, {columns})" in message
    assert "x of shape (12, 1)" in message
    with pytest.raises(ValueError, match=re.escape("y of shape (11, 1)")):
        pde.compute_loss(x, y[:-1], preds)


def test_validation_loss_with_a_row_fewer_is_a_clear_error():
    pde = HelmholtzPDE()
    _, x, y, preds = _points_and_preds(pde)
    with pytest.raises(ValueError, match=re.escape("preds of shape (11, 3)")):
        pde.validation_loss(x, y, preds[:-1])


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_balanced_loss_with_a_row_fewer_in_y_pred_is_a_clear_error(pde):
    points, _, _, preds = _points_and_preds(pde)
    loss = BalancedLoss(pde, "sum")
    with pytest.raises(ValueError, match="same number of rows") as info:
        loss(points, preds[:-1])
    message = str(info.value)
    assert "`y_true`" in message and "`y_pred`" in message
    assert "y_true of shape (12, 2)" in message
    assert f"y_pred of shape (11, {len(pde.derivatives)})" in message


def test_rows_unknown_until_the_graph_runs_are_not_refused():
    pde = HelmholtzPDE()
    points, x, y, preds = _points_and_preds(pde)

    @tf.function(input_signature=[tf.TensorSpec((None, 1)), tf.TensorSpec((None, 1)),
                                  tf.TensorSpec((None, 3))])
    def terms(x, y, preds):
        return [tf.reduce_mean(t) for t in pde.compute_loss(x, y, preds)]

    values = [float(v) for v in terms(x, y, preds)]
    assert np.all(np.isfinite(values))


# -- columns of preds / y_pred ---------------------------------------------------


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_preds_with_extra_columns_is_a_clear_error(pde):
    points, x, y, preds = _points_and_preds(pde)
    extra = np.concatenate([preds, preds[:, :1]], axis=1)
    expected = f"`preds` of shape (N, {len(pde.derivatives)}) with the columns {pde.derivatives}"
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        pde.compute_loss(x, y, extra)
    assert f"received shape (12, {len(pde.derivatives) + 1})" in str(info.value)
    with pytest.raises(ValueError, match=re.escape(expected)):
        BalancedLoss(pde, "sum")(points, extra)


def test_kirchhoff_outputs_under_a_helmholtz_loss_are_refused():
    helmholtz, kirchhoff = HelmholtzPDE(), KirchhoffPDE()
    points = helmholtz.sample(8, 4, seed=0)
    outputs = build_pinn(kirchhoff, width=4, depth=1, seed=0)(points)  # (12, 6)
    with pytest.raises(ValueError, match=re.escape("received shape (12, 6)")):
        BalancedLoss(helmholtz, "sum")(points, outputs)


# -- seed of sample() ------------------------------------------------------------


@pytest.mark.parametrize("seed", ["x", 1.5, -1, True, [1, 2]])
@pytest.mark.parametrize("method", ["uniform", "sobol"])
def test_sample_seed_must_be_a_non_negative_integer(seed, method):
    with pytest.raises(ValueError, match=re.escape(f"`seed` must be None or a non-negative integer; "
                                                   f"received seed={seed!r}")):
        HelmholtzPDE().sample(8, 4, seed=seed, method=method)


def test_sample_seed_accepts_numpy_integers():
    pde = HelmholtzPDE()
    np.testing.assert_array_equal(pde.sample(8, 4, seed=np.int64(3)), pde.sample(8, 4, seed=3))
    np.testing.assert_array_equal(pde.sample(8, 4, seed=np.int32(3), step=2), pde.sample(8, 4, seed=3, step=2))


# -- PINNModel -------------------------------------------------------------------


@pytest.mark.parametrize("pde", [None, "helmholtz", object()])
def test_pinn_model_without_a_problem_is_a_clear_error(pde):
    network = build_pinn(HelmholtzPDE(), width=4, depth=1, seed=0)
    with pytest.raises(TypeError, match=re.escape("Argument `pde` must be a `keras_balance.pde.PDE`")) as info:
        PINNModel(pde, network)
    assert f"received pde={pde!r}" in str(info.value)


def test_pinn_model_with_the_network_of_another_problem_is_a_clear_error():
    helmholtz, kirchhoff = HelmholtzPDE(), KirchhoffPDE()
    with pytest.raises(ValueError, match="`solution`") as info:
        PINNModel(helmholtz, build_pinn(kirchhoff, width=4, depth=1, seed=0))
    message = str(info.value)
    assert str(helmholtz.derivatives) in message and str(kirchhoff.derivatives) in message
    with pytest.raises(ValueError, match=re.escape(str(kirchhoff.derivatives))):
        PINNModel(kirchhoff, build_pinn(helmholtz, width=4, depth=1, seed=0))


def test_pinn_model_with_reordered_or_renamed_columns_is_a_clear_error():
    pde = HelmholtzPDE()
    for derivatives in (("u", "u_yy", "u_xx"), ("u", "u_xx"), ("v", "v_xx", "v_yy")):
        solution = PINN(mlp(width=4, depth=1, seed=0), derivatives, pde.domain)
        with pytest.raises(ValueError, match=re.escape(f"received a PINN with derivatives {derivatives}")):
            PINNModel(pde, solution)


def test_pinn_model_with_a_network_of_the_wrong_output_width_is_a_clear_error():
    pde = HelmholtzPDE()
    with pytest.raises(ValueError, match=re.escape("must return 3 columns")) as info:
        PINNModel(pde, mlp(width=4, depth=1, seed=0))  # (N, 1): the field alone
    assert "(None, 1)" in str(info.value)
    # A network that returns the three columns itself is accepted.
    PINNModel(pde, mlp(output_dim=3, width=4, depth=1, seed=0))


def test_pinn_model_with_a_matching_network_still_trains():
    pde = HelmholtzPDE()
    model = PINNModel(pde, build_pinn(pde, width=4, depth=1, seed=0), balancer="sum")
    model.compile(optimizer="adam", jit_compile=False)
    points = pde.sample(8, 4, seed=0)
    logs = model.train_on_batch(points, points, return_dict=True)
    assert np.isfinite(logs["L_f"]) and np.isfinite(logs["L_b"])


# -- documented: batches without boundary points, empty batches, one-sided sets ----


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_batch_without_boundary_points_has_zero_boundary_terms(pde):
    """A boundary term is the batch mean of values that vanish off the edges: 0 on interior points."""
    points = pde.sample(16, 0, seed=1)
    x, y = points[:, :1], points[:, 1:]
    preds = pde.exact_preds(x, y) + 0.5  # wrong everywhere, so a boundary point would count
    terms = [float(np.mean(t)) for t in pde.compute_loss(x, y, preds)]
    assert terms[0] > 0
    assert terms[1:] == [0.0] * (pde.num_terms - 1)


def test_batch_means_of_equal_halves_average_to_the_whole_batch_mean():
    """Why a boundary-free batch gives 0 and not NaN: equal shares (mini-batches, replicas) add up."""
    pde = HelmholtzPDE()
    points = pde.sample(8, 8, seed=2)  # rows 0-7 interior, 8-15 boundary
    x, y = points[:, :1].astype("float64"), points[:, 1:].astype("float64")
    preds = pde.exact_preds(x, y) + 0.25

    def means(rows):
        return np.array([np.mean(t) for t in pde.compute_loss(x[rows], y[rows], preds[rows])])

    first, second = means(slice(0, 8)), means(slice(8, 16))
    assert first[1] == 0.0 and second[1] > 0
    np.testing.assert_allclose((first + second) / 2, means(slice(0, 16)), rtol=1e-12)


def test_pinn_model_step_on_a_batch_without_boundary_points_is_taken():
    pde = HelmholtzPDE()
    model = PINNModel(pde, build_pinn(pde, width=4, depth=1, seed=0), balancer="sum")
    model.compile(optimizer="adam", jit_compile=False)
    points = pde.sample(16, 0, seed=0)
    before = [w.numpy().copy() for w in model.solution.trainable_weights]
    logs = model.train_on_batch(points, points, return_dict=True)
    assert logs["L_b"] == 0.0 and np.isfinite(logs["L_f"]) and logs["L_f"] > 0
    after = [w.numpy() for w in model.solution.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_empty_batch_gives_nan_terms(pde):
    """A mean over no points is NaN; `BalancedModel` skips such a step."""
    empty = np.zeros((0, 1), "float32")
    terms = pde.compute_loss(empty, empty, np.zeros((0, len(pde.derivatives)), "float32"))
    assert len(terms) == pde.num_terms
    assert all(np.isnan(float(tf.reduce_mean(t))) for t in terms)


@pytest.mark.parametrize("pde", PROBLEMS, ids=IDS)
def test_sample_of_boundary_points_alone_and_interior_points_alone(pde):
    boundary = pde.sample(n_interior=0, n_boundary=8, seed=0)
    interior = pde.sample(n_interior=8, n_boundary=0, seed=0)

    def on_edge(points):
        masks = pde.boundary_masks(tf.constant(points[:, :1]), tf.constant(points[:, 1:]))
        return np.max(np.stack([m.numpy() for m in masks.values()]), axis=0).ravel()

    assert boundary.shape == interior.shape == (8, 2)
    assert np.all(on_edge(boundary) == 1.0)
    assert np.all(on_edge(interior) == 0.0)
    np.testing.assert_array_equal(interior, pde.sample(8, 4, seed=0)[:8])
