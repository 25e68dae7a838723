"""Pointwise (RBA, self-adaptive) and causal weights inside the terms of a PINNModel."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.pinn import RBA, CausalWeighting, PINNModel, SelfAdaptiveWeights

POINTS = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], "float32")
VALUES = np.array([1.0, 4.0, 9.0, 0.0], "float32")  # e = r^2, |r| = 1, 2, 3, 0


def terms_of(values, other=None):
    other = np.ones_like(values) if other is None else other
    return [tf.constant(values.reshape(-1, 1)), tf.constant(other.reshape(-1, 1))]


def built(weighting, rows=4):
    weighting.build_points(rows, ("L_f", "L_b"), "L_f")
    return weighting


# -- RBA -------------------------------------------------------------------------


def test_rba_update_by_hand():
    rba = built(RBA(eta=0.1, gamma=0.5))
    out = rba.apply_weights(POINTS, terms_of(VALUES))
    first = 0.1 * np.array([1, 2, 3, 0]) / 3.0
    np.testing.assert_allclose(rba.point_weights.numpy()[:, 0], first, rtol=1e-6)
    # This step's loss uses the updated weights: (lambda r)^2; the other term is untouched.
    np.testing.assert_allclose(out[0].numpy()[:, 0], first**2 * VALUES, rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy()[:, 0], 1.0)
    rba.apply_weights(POINTS, terms_of(4 * VALUES))  # the relative residuals are unchanged
    np.testing.assert_allclose(rba.point_weights.numpy()[:, 0], 0.5 * first + first, rtol=1e-6)


def test_rba_bounded_by_eta_over_one_minus_gamma():
    rba = built(RBA(eta=0.2, gamma=0.9))
    for _ in range(300):
        rba.apply_weights(POINTS, terms_of(VALUES))
    weights = rba.point_weights.numpy()[:, 0]
    assert weights.max() <= 0.2 / (1 - 0.9) + 1e-5
    np.testing.assert_allclose(weights[2], 2.0, rtol=1e-4)  # the largest residual reaches the bound


def test_rba_resets_a_redrawn_point_only():
    rba = built(RBA(eta=0.1, gamma=0.5, initial=0.0))
    rba.apply_weights(POINTS, terms_of(VALUES))
    before = rba.point_weights.numpy()[:, 0].copy()
    moved = POINTS.copy()
    moved[1] = [0.9, 0.9]
    rba.apply_weights(moved, terms_of(VALUES))
    after = rba.point_weights.numpy()[:, 0]
    relative = np.array([1, 2, 3, 0]) / 3.0
    expected = 0.5 * before + 0.1 * relative
    expected[1] = 0.1 * relative[1]  # started again from the initial weight 0
    np.testing.assert_allclose(after, expected, rtol=1e-6)


def test_evaluation_does_not_advance_the_state():
    rba = built(RBA(eta=0.1, gamma=0.5))
    rba.apply_weights(POINTS, terms_of(VALUES))
    before = rba.point_weights.numpy().copy()
    out = rba.apply_weights(POINTS, terms_of(VALUES), training=False)
    np.testing.assert_array_equal(rba.point_weights.numpy(), before)
    np.testing.assert_allclose(out[0].numpy()[:, 0], before[:, 0] ** 2 * VALUES, rtol=1e-6)


def test_every_term_and_named_terms():
    rba = built(RBA(eta=0.1, gamma=0.0, terms=None))
    out = rba.apply_weights(POINTS, terms_of(VALUES, np.array([0, 0, 0, 4.0], "float32")))
    np.testing.assert_allclose(out[1].numpy()[:, 0], [0, 0, 0, 0.1**2 * 4], rtol=1e-6)
    assert built(RBA(terms=["L_b"])).indices == (1,)
    with pytest.raises(ValueError, match="names terms the problem does not have"):
        built(RBA(terms=["L_x"]))


# -- self-adaptive -----------------------------------------------------------------


def test_self_adaptive_first_ascent_step_by_hand():
    sa = built(SelfAdaptiveWeights(learning_rate=0.01))
    out = sa.apply_weights(POINTS, terms_of(VALUES))
    # The loss of the step uses the weights before the ascent: m(1) = 1.
    np.testing.assert_allclose(out[0].numpy()[:, 0], VALUES)
    # Adam's first step moves by the learning rate in the direction of the gradient 2 lambda e / N
    # (a zero gradient does not move).
    np.testing.assert_allclose(sa.point_weights.numpy()[:, 0], [1.01, 1.01, 1.01, 1.0], rtol=1e-6)


def test_self_adaptive_second_step_matches_adam():
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-7
    sa = built(SelfAdaptiveWeights(learning_rate=lr, epsilon=eps))
    weights, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    for step, values in enumerate([VALUES, 2 * VALUES[::-1].copy()], start=1):
        sa.apply_weights(POINTS, terms_of(values))
        gradient = 2 * weights * values / 4
        m = b1 * m + (1 - b1) * gradient
        v = b2 * v + (1 - b2) * gradient**2
        weights = weights + lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)
    np.testing.assert_allclose(sa.point_weights.numpy()[:, 0], weights, rtol=1e-5)


def test_self_adaptive_sigmoid_mask():
    sa = built(SelfAdaptiveWeights(mask="sigmoid", initial=0.0))
    out = sa.apply_weights(POINTS, terms_of(VALUES))
    np.testing.assert_allclose(out[0].numpy()[:, 0], 0.5 * VALUES, rtol=1e-6)


# -- causal ------------------------------------------------------------------------


def causal_case():
    t = np.array([[0.05], [0.1], [0.3], [0.6], [0.9], [0.95]], "float32")
    values = np.array([[1.0], [3.0], [2.0], [4.0], [6.0], [2.0]], "float32")
    return t, values


def test_causal_weights_by_hand():
    t, values = causal_case()
    causal = CausalWeighting(chunks=4, epsilon=0.5)
    term = causal.reduce(tf.constant(t), tf.constant(values), (0.0, 1.0)).numpy()
    # Chunks of [0, 1]: {0.05, 0.1} -> 0, {0.3} -> 1, {0.6} -> 2, {0.9, 0.95} -> 3; chunk means 2, 2, 4, 4.
    weights = np.exp(-0.5 * np.array([0.0, 2.0, 4.0, 8.0]))
    sums = np.array([4.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(causal.causal_weights.numpy(), weights, rtol=1e-6)
    np.testing.assert_allclose(term, np.sum(weights * sums) / 6, rtol=1e-6)


def test_causal_without_effect_is_the_plain_mean():
    t, values = causal_case()
    causal = CausalWeighting(chunks=3, epsilon=1e-12)
    term = causal.reduce(tf.constant(t), tf.constant(values), (0.0, 1.0)).numpy()
    np.testing.assert_allclose(term, values.mean(), rtol=1e-6)


def test_causal_schedule_moves_on_only_when_every_weight_is_high():
    t, values = causal_case()
    causal = CausalWeighting(chunks=4, epsilon=[0.001, 0.01, 10.0], threshold=0.9)
    causal.reduce(tf.constant(t), tf.constant(values), (0.0, 1.0))
    assert causal.stage.numpy() == 1  # min w = exp(-0.008) > 0.9
    causal.reduce(tf.constant(t), tf.constant(values), (0.0, 1.0))
    assert causal.stage.numpy() == 2  # min w = exp(-0.08) > 0.9
    causal.reduce(tf.constant(t), tf.constant(values), (0.0, 1.0))
    assert causal.stage.numpy() == 2  # the last value is kept
    np.testing.assert_allclose(causal.epsilon().numpy(), 10.0)


def test_causal_gradient_flows_through_the_values_only():
    t, values = causal_case()
    causal = CausalWeighting(chunks=4, epsilon=0.5)
    values = tf.Variable(values)
    with tf.GradientTape() as tape:
        term = causal.reduce(tf.constant(t), values, (0.0, 1.0))
    weights = causal.causal_weights.numpy()
    chunk = [0, 0, 1, 2, 3, 3]
    np.testing.assert_allclose(tape.gradient(term, values).numpy()[:, 0], weights[chunk] / 6, rtol=1e-6)


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RBA(eta=0.0), "`eta`"),
        (lambda: RBA(gamma=1.0), "`gamma`"),
        (lambda: RBA(terms=[1]), "`terms`"),
        (lambda: SelfAdaptiveWeights(mask="cubic"), "`mask`"),
        (lambda: SelfAdaptiveWeights(initial=-1.0), "`initial`"),
        (lambda: CausalWeighting(chunks=0), "`chunks`"),
        (lambda: CausalWeighting(epsilon=[1.0, 0.1]), "`epsilon`"),
        (lambda: CausalWeighting(threshold=1.5), "`threshold`"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="time-dependent"):
        PINNModel(kb.pde.HelmholtzPDE(), causal=CausalWeighting())
    with pytest.raises(TypeError, match="`pointwise`"):
        PINNModel(kb.pde.HelmholtzPDE(), pointwise="rba")
    model = PINNModel(kb.pde.HelmholtzPDE(), pointwise=RBA())
    model.compile(optimizer="adam")
    xy = kb.pde.HelmholtzPDE().sample(32, 8, seed=0)
    with pytest.raises(ValueError, match="batch_size=40"):
        model.fit(xy, xy, epochs=1, verbose=0)


# -- in a model ----------------------------------------------------------------------


def burgers_model(balancer="sum", pointwise=None, causal=None, seed=0):
    keras.utils.set_random_seed(seed)
    pde = kb.pde.BurgersPDE()
    solution = kb.pinn.build_pinn(pde, width=8, depth=2, seed=seed)
    return pde, PINNModel(pde, solution, balancer=balancer, pointwise=pointwise, causal=causal)


def weighting_state(model):
    return [v.numpy().copy() for v in model.step_state_variables()]


@pytest.mark.parametrize("balancer", ["relobralo", "pcgrad"])
def test_trains_compiled_and_logs_the_weights(balancer):
    pde, model = burgers_model(balancer, RBA(eta=0.01), CausalWeighting(chunks=3, epsilon=[0.01, 1.0]))
    model.compile(optimizer="adam", jit_compile=True)
    xy = pde.sample(48, 12, seed=0)
    history = model.fit(kb.full_batch(xy), steps_per_epoch=4, verbose=0).history
    assert {"rba_L_f", "w_L_f_t0", "w_L_f_t2", "causal_epsilon"} <= set(history)
    np.testing.assert_allclose(history["rba_L_f"][-1], model.pointwise.point_weights.numpy().mean(), rtol=1e-6)
    assert history["rba_L_f"][-1] > 0
    np.testing.assert_allclose(history["w_L_f_t2"][-1], model.causal.causal_weights.numpy()[2], rtol=1e-6)
    assert history["causal_epsilon"][-1] == 1.0  # Burgers' residual starts small: the schedule moved on


def test_evaluate_leaves_the_state_alone():
    pde, model = burgers_model("sum", SelfAdaptiveWeights(), CausalWeighting(chunks=2))
    model.compile(optimizer="adam")
    xy = pde.sample(48, 12, seed=0)
    model.fit(kb.full_batch(xy), steps_per_epoch=2, verbose=0)
    before = weighting_state(model)
    model.evaluate(xy, xy, batch_size=len(xy), verbose=0)
    for a, b in zip(before, weighting_state(model)):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_step_leaves_the_weighting_state_as_it_was():
    pde, model = burgers_model("relobralo", RBA(eta=0.01), CausalWeighting(chunks=2))
    model.compile(optimizer="adam")
    xy = pde.sample(48, 12, seed=0)
    model.fit(kb.full_batch(xy), steps_per_epoch=2, verbose=0)
    before = weighting_state(model)
    poisoned = xy.copy()
    poisoned[3, 0] = np.nan
    logs = model.fit(kb.full_batch(poisoned), steps_per_epoch=1, verbose=0).history
    assert logs["skipped_steps"][-1] == 1
    for a, b in zip(before, weighting_state(model)):
        np.testing.assert_array_equal(a, b)


def test_save_load_and_resume_continue_exactly(tmp_path):
    xy = kb.pde.BurgersPDE().sample(48, 12, seed=0)

    def fresh():
        pde, model = burgers_model("relobralo", RBA(eta=0.01), CausalWeighting(chunks=2, epsilon=[0.1, 1.0]))
        model.compile(optimizer="adam")
        return model

    straight = fresh()
    straight.fit(kb.full_batch(xy), steps_per_epoch=6, verbose=0)
    first = fresh()
    first.fit(kb.full_batch(xy), steps_per_epoch=3, verbose=0)
    path = tmp_path / "model.keras"
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed.pointwise, RBA) and resumed.pointwise.num_points == len(xy)
    for a, b in zip(weighting_state(first), weighting_state(resumed)):
        np.testing.assert_array_equal(a, b)
    resumed.fit(kb.full_batch(xy), steps_per_epoch=3, verbose=0)
    for a, b in zip(weighting_state(straight), weighting_state(resumed)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_backup_and_restore_continues_the_state(tmp_path):
    xy = kb.pde.BurgersPDE().sample(48, 12, seed=0)
    _, straight = burgers_model("sum", SelfAdaptiveWeights())
    straight.compile(optimizer="adam")
    straight.fit(kb.full_batch(xy), steps_per_epoch=2, epochs=4, verbose=0)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    _, interrupted = burgers_model("sum", SelfAdaptiveWeights())
    interrupted.compile(optimizer="adam")
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(kb.full_batch(xy), steps_per_epoch=2, epochs=4, verbose=0, callbacks=[backup, Stop()])
    _, resumed = burgers_model("sum", SelfAdaptiveWeights())
    resumed.compile(optimizer="adam")
    resumed.fit(kb.full_batch(xy), steps_per_epoch=2, epochs=4, verbose=0, callbacks=[backup])
    for a, b in zip(weighting_state(straight), weighting_state(resumed)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_rba_on_helmholtz_puts_weight_where_the_residual_is_large():
    keras.utils.set_random_seed(1)
    pde = kb.pde.HelmholtzPDE()
    model = PINNModel(pde, kb.pinn.build_pinn(pde, width=16, depth=2, seed=1), pointwise=RBA(eta=0.05, gamma=0.9))
    model.compile(optimizer="adam")
    xy = pde.sample(200, 40, seed=0)
    model.fit(kb.full_batch(xy), steps_per_epoch=20, verbose=0)
    _, terms = model.point_terms(tf.constant(xy), training=False)
    residual = np.sqrt(terms[0].numpy()[:, 0])
    weights = model.pointwise.point_weights.numpy()[:, 0]
    assert np.corrcoef(residual, weights)[0, 1] > 0.8
    assert math.isclose(float(weights.max()), 0.05 / 0.1, rel_tol=0.2)


def test_docstring_examples_run():
    import doctest

    from keras_balance.pinn import weighting

    result = doctest.testmod(weighting, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 9 and result.failed == 0
