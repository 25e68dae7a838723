"""L-BFGS fine-tuning with frozen balancer weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance import bench, lbfgs


class Quadratic(kb.BalancedModel):
    """Two quadratic terms of one kernel: a = |k - 1|^2, b = |k + 2|^2 (+ a NaN switch)."""

    term_names = ("a", "b")

    def __init__(self, nan_after=None, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
        self.nan_after = nan_after
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=False):
        return self.dense(x)

    def compute_loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        kernel = self.dense.kernel
        a = tf.reduce_sum(tf.square(kernel - 1.0)) + 0.0 * tf.reduce_sum(y_pred)
        b = tf.reduce_sum(tf.square(kernel + 2.0))
        if self.nan_after is not None:
            self.calls.assign_add(1.0)
            a = tf.where(self.calls > self.nan_after, tf.constant(np.nan, a.dtype), a)
        return [a, b]


def trained_quadratic(weights=(3.0, 1.0), nan_after=None):
    x = np.ones((4, 3), "float32")
    model = Quadratic(nan_after=nan_after, balancer=kb.balancers.get("sum", weights=list(weights)))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    return model, x


def test_quadratic_reaches_the_weighted_minimum():
    model, x = trained_quadratic()
    result = lbfgs.finetune(model, x, max_steps=50, verbose=0)
    # 3 (k - 1)^2 + (k + 2)^2 is smallest at k = 1/4: 3 * 0.75^2 + 2.25^2 = 6.75 per entry.
    np.testing.assert_allclose(model.dense.kernel.numpy().ravel(), 0.25, atol=1e-4)
    np.testing.assert_allclose(result.final_loss, 3 * 6.75, rtol=1e-5)
    assert result.final_loss < result.initial_loss
    assert result.reason in ("converged", "no_progress") and result.steps <= 50
    assert result.weights == (3.0, 1.0)


def test_objective_uses_the_frozen_weights():
    model, x = trained_quadratic(weights=(0.5, 2.0))
    kernel = model.dense.kernel.numpy()
    expected = 0.5 * np.sum((kernel - 1.0) ** 2) + 2.0 * np.sum((kernel + 2.0) ** 2)
    result = lbfgs.finetune(model, x, max_steps=1, verbose=0)
    np.testing.assert_allclose(result.initial_loss, expected, rtol=1e-6)
    np.testing.assert_allclose(lbfgs.frozen_weights(model), [0.5, 2.0])
    # The minimum of the frozen objective, not of the plain sum (k = -1.5 vs -0.5).
    lbfgs.finetune(model, x, max_steps=30, verbose=0)
    np.testing.assert_allclose(model.dense.kernel.numpy().ravel(), (0.5 * 1.0 - 2.0 * 2.0) / 2.5, atol=1e-4)


def test_respects_max_steps_and_reports_chunks(capsys):
    model, x = trained_quadratic()
    seen = []
    result = lbfgs.finetune(model, x, max_steps=1, chunk=1, verbose=1, callback=lambda s, v: seen.append(s))
    assert result.steps == 1 and result.reason in ("max_steps", "converged")
    assert seen == [1]
    assert "L-BFGS 1/1" in capsys.readouterr().out


def test_stops_on_nan_and_restores_finite_parameters():
    model, x = trained_quadratic(nan_after=4)
    before = model.dense.kernel.numpy().copy()
    result = lbfgs.finetune(model, x, max_steps=20, chunk=1, verbose=0)
    assert result.reason == "nan"
    kernel = model.dense.kernel.numpy()
    assert np.all(np.isfinite(kernel))
    assert np.isfinite(result.final_loss) and result.steps < 20
    if result.steps == 0:
        np.testing.assert_array_equal(kernel, before)


@pytest.mark.slow
def test_float64_finetuning_runs_on_a_copy_and_writes_back():
    keras.utils.set_random_seed(0)
    pde = kb.pde.HelmholtzPDE()
    model = kb.PINNModel(pde, kb.pinn.build_pinn(pde, width=8, depth=2, seed=0), balancer="relobralo")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    points = pde.sample(64, 16, seed=0)
    model.fit(points, epochs=5, batch_size=len(points), verbose=0)
    copy = lbfgs.precision_copy(model, "float64")
    assert all(v.dtype == "float64" for v in lbfgs.trainable_parameters(copy))
    assert copy.solution is not model.solution and copy.balancer is not model.balancer
    for a, b in zip(lbfgs.trainable_parameters(copy), lbfgs.trainable_parameters(model)):
        np.testing.assert_array_equal(a.numpy(), b.numpy().astype("float64"))
    grid = pde.grid(11)
    np.testing.assert_allclose(copy.solution.predict_field(grid), model.solution.predict_field(grid),
                               rtol=1e-5, atol=1e-6)
    before = [v.numpy().copy() for v in lbfgs.trainable_parameters(model)]
    reference = lbfgs.finetune(model, points, max_steps=1, verbose=0, weights=[2.0, 0.5])
    for v, value in zip(lbfgs.trainable_parameters(model), before):  # back to the trained parameters
        v.assign(value)
    seen = []

    def check(steps, loss):  # the model holds the chunk's parameters, cast
        seen.append(steps)
        first = lbfgs.trainable_parameters(model)[0]
        assert not np.array_equal(first.numpy(), before[0])

    result = lbfgs.finetune(model, points, max_steps=30, chunk=10, verbose=0, dtype="float64",
                            weights=[2.0, 0.5], callback=check)
    assert seen and seen[-1] == result.steps
    assert result.dtype == "float64" and result.summary()["dtype"] == "float64"
    # The float64 objective at the start is the float32 one, to float32 round-off.
    np.testing.assert_allclose(result.initial_loss, reference.initial_loss, rtol=1e-5)
    assert result.model is not model
    assert result.final_loss < result.initial_loss
    # The model keeps its float32 variables, which now hold the fine-tuned parameters.
    for variable, tuned in zip(lbfgs.trainable_parameters(model), lbfgs.trainable_parameters(result.model)):
        assert variable.dtype == "float32"
        np.testing.assert_array_equal(variable.numpy(), tuned.numpy().astype("float32"))
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(lbfgs.trainable_parameters(model), before))
    assert reference.dtype == "float32"
    # Same dtype: no copy.
    assert lbfgs.finetune(model, points, max_steps=1, verbose=0, dtype="float32").model is model
    with pytest.raises(ValueError, match="`dtype`.*received dtype='float128'"):
        lbfgs.finetune(model, points, dtype="float128")


def test_float64_finetuning_needs_a_model_that_can_be_rebuilt():
    model, x = trained_quadratic()
    def no_config():
        raise NotImplementedError("no config")

    model.get_config = no_config
    with pytest.raises(ValueError, match="dtype='float64'.*rebuilt from its configuration"):
        lbfgs.finetune(model, x, dtype="float64")


def test_bad_arguments_are_clear():
    model, x = trained_quadratic()
    with pytest.raises(ValueError, match="`max_steps`.*received max_steps=0"):
        lbfgs.finetune(model, x, max_steps=0)
    with pytest.raises(ValueError, match="`tolerance`"):
        lbfgs.finetune(model, x, tolerance=-1.0)
    with pytest.raises(ValueError, match="`weights` must have 2 entries"):
        lbfgs.finetune(model, x, weights=[1.0, 2.0, 3.0])


def test_learned_balancer_variables_are_not_fine_tuned():
    model, x = trained_quadratic()
    names = {v.path for v in lbfgs.trainable_parameters(model)}
    assert names == {model.dense.kernel.path}


def test_small_pinn_loss_goes_down_after_adam():
    result = bench.train("helmholtz", "relobralo", steps=20, seed=0, verbose=0, jit_compile=False,
                         n_interior=64, n_boundary=16, width=8, depth=2, lbfgs_steps=20,
                         lbfgs_options={"chunk": 10})
    summary = result.lbfgs
    assert 0 < summary["steps"] <= 20
    assert summary["final_loss"] < summary["initial_loss"]
    assert summary["reason"] in lbfgs.STOP_REASONS
    assert np.isfinite(result.rel_l2) and np.isfinite(result.rel_l2_adam)
    assert result.rel_l2 != result.rel_l2_adam
    weights = [result.final_weights[n] for n in result.term_names]
    np.testing.assert_allclose(summary["weights"], weights, rtol=1e-6)
    assert {"rel_l2_adam", "mse_adam", "lbfgs"} <= set(result.summary())
    assert summary["dtype"] == "float32"
    history = summary["history"]  # [step, loss, rel. L2, seconds] after every chunk of 10
    assert [row[0] for row in history] == list(range(10, summary["steps"] + 1, 10))
    assert history[-1][1] == pytest.approx(summary["final_loss"])
    assert all(np.isfinite(row[2]) and row[2] > 0 for row in history)
    assert history[-1][2] == pytest.approx(result.rel_l2, rel=0.2)  # 51 x 51 grid vs 101 x 101
