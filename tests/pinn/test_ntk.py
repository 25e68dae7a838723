"""NTK weighting: the traces of `keras_balance.pinn.ntk` and the rule of `NTKWeighting`.

Hand values: for a linear model `r_j = w . x_j + b` the NTK diagonal is
`||d r_j / d(w, b)||^2 = ||x_j||^2 + 1`, whatever the parameters; the weights
`w_k = sum_j tr_j / tr_k` follow from the traces by hand. A PINN's diagonal
is checked against one `tape.gradient` per point and term, and a
`PINNModel` trains with the balancer under XLA, saves, resumes and skips a
non-finite step like every other balancer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb
from keras_balance.balancers import NTKWeighting
from keras_balance.pinn.ntk import ntk_diagonal, safe_sqrt, subset_rows, term_traces

# -- the traces ------------------------------------------------------------------------------

X = np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 0.0], [3.0, 1.0], [-2.0, 0.5]], np.float32)
EDGE = np.array([0.0, 0.0, 1.0, 1.0, 0.0], np.float32)  # the "boundary" rows of term 1
NORMS = (X**2).sum(axis=1) + 1.0  # ||x_j||^2 + 1 = 6, 2.25, 1, 11, 5.25


def linear_terms():
    layer = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.3),
                               bias_initializer=keras.initializers.Constant(0.2))
    layer.build((None, 2))

    def point_terms(x):
        r = layer(x)
        return [tf.square(r), tf.square(edge_of(x) * (r - 1.0))]

    return layer, point_terms


def edge_of(x):
    # Row j of X is an edge row when EDGE[j] = 1 (matched by its coordinates, so one row alone works).
    hits = tf.reduce_all(tf.equal(x[:, None, :], tf.constant(X)[None, :, :]), axis=2)
    return tf.reduce_sum(tf.cast(hits, tf.float32) * tf.constant(EDGE)[None, :], axis=1, keepdims=True)


def test_linear_model_diagonal_is_the_squared_input_norm_plus_one():
    layer, point_terms = linear_terms()
    diagonal, values = ntk_diagonal(point_terms, X, layer.trainable_variables)
    np.testing.assert_allclose(diagonal.numpy()[:, 0], NORMS, rtol=1e-6)
    np.testing.assert_allclose(diagonal.numpy()[:, 1], NORMS * EDGE, rtol=1e-6)
    r = X @ np.array([0.3, 0.3]) + 0.2
    np.testing.assert_allclose(values.numpy()[:, 0], r**2, rtol=1e-6)


def test_linear_model_traces_batch_and_own_means():
    layer, point_terms = linear_terms()
    variables = layer.trainable_variables
    # "batch": the diagonal's sum over the term's points divided by N = 5.
    np.testing.assert_allclose(term_traces(point_terms, X, variables).numpy(),
                               [NORMS.sum() / 5, (1.0 + 11.0) / 5], rtol=1e-6)
    # "own": the mean over the rows where the term is not zero (all 5; the 2 edge rows).
    np.testing.assert_allclose(term_traces(point_terms, X, variables, means="own").numpy(),
                               [NORMS.sum() / 5, (1.0 + 11.0) / 2], rtol=1e-6)


def test_a_batch_factor_of_the_terms_enters_the_diagonal():
    # `own_mean` (a PDE with means="own") scales an edge term by N / n_k = 5 / 2: so does its diagonal.
    layer, point_terms = linear_terms()

    def scaled(x):
        interior, edge = point_terms(x)
        return [interior, kb.pde.base.own_mean(edge, edge_of(x))]

    diagonal, _ = ntk_diagonal(scaled, X, layer.trainable_variables)
    np.testing.assert_allclose(diagonal.numpy()[:, 1], 2.5 * NORMS * EDGE, rtol=1e-6)


def test_safe_sqrt_has_a_zero_gradient_at_zero():
    values = tf.constant([0.0, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(values)
        roots = safe_sqrt(values)
    np.testing.assert_array_equal(roots.numpy(), [0.0, 2.0])
    np.testing.assert_array_equal(tape.gradient(roots, values).numpy(), [0.0, 0.25])


def test_subset_rows_is_seeded_and_distinct():
    x = tf.reshape(tf.range(40.0), (20, 2))
    first = subset_rows(x, 6, tf.constant(3, tf.int64), tf.constant(0, tf.int64)).numpy()
    assert first.shape == (6, 2) and len(set(first[:, 0])) == 6
    np.testing.assert_array_equal(first, subset_rows(x, 6, tf.constant(3, tf.int64), tf.constant(0, tf.int64)))
    assert not np.array_equal(first, subset_rows(x, 6, tf.constant(3, tf.int64), tf.constant(1, tf.int64)))
    graph = tf.function(lambda: subset_rows(x, 6, tf.constant(3, tf.int64), tf.constant(0, tf.int64)),
                        jit_compile=True)
    np.testing.assert_array_equal(first, graph())  # the same rows under XLA
    assert subset_rows(x, 20, 0, 0) is x


def test_traces_on_a_subset_are_those_of_its_rows():
    layer, point_terms = linear_terms()
    seed, step = tf.constant(7, tf.int64), tf.constant(2, tf.int64)
    rows = subset_rows(tf.constant(X), 3, seed, step).numpy()
    chosen = [int(np.flatnonzero((X == row).all(axis=1))[0]) for row in rows]
    traces = term_traces(point_terms, X, layer.trainable_variables, points=3, seed=seed, step=step).numpy()
    np.testing.assert_allclose(traces, [NORMS[chosen].sum() / 3, (NORMS * EDGE)[chosen].sum() / 3], rtol=1e-6)


def test_pinn_diagonal_matches_one_gradient_per_point():
    # ||grad r_j||^2 = ||grad e_j||^2 / (4 e_j) from the batch's own graph, one point at a time.
    pde = kb.HelmholtzPDE()
    model = kb.PINNModel(pde, kb.build_pinn(pde, width=8, depth=2, seed=1))
    x = tf.constant(pde.sample(5, 4, seed=2))
    variables = model.trainable_variables
    diagonal, values = ntk_diagonal(lambda rows: model.point_terms(rows)[1], x, variables)
    with tf.GradientTape(persistent=True) as tape:
        terms = model.point_terms(x)[1]
        entries = [[term[j, 0] for j in range(9)] for term in terms]
    expected = np.zeros((9, 2))
    for k, row in enumerate(entries):
        for j, entry in enumerate(row):
            if float(entry) > 0.0:
                grads = tape.gradient(entry, variables)
                expected[j, k] = sum(float(tf.reduce_sum(g**2)) for g in grads) / (4.0 * float(entry))
    np.testing.assert_allclose(diagonal.numpy(), expected, rtol=2e-4, atol=1e-6)
    assert (expected[:5, 1] == 0.0).all() and (expected[5:, 1] > 0.0).all()  # the boundary term's points


# -- the rule --------------------------------------------------------------------------------


def test_without_traces_it_is_sum():
    balancer = NTKWeighting(update_every=1, num_terms=3)
    for _ in range(3):
        np.testing.assert_array_equal(balancer([1.0, 5.0, 0.1]).numpy(), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("numerator, expected", [("sum", [6.0, 3.0, 2.0]), ("mean", [2.0, 1.0, 2.0 / 3.0])])
def test_weights_are_the_trace_ratios(numerator, expected):
    balancer = NTKWeighting(update_every=1, numerator=numerator, num_terms=3)
    balancer.update_traces([1.0, 2.0, 3.0])
    np.testing.assert_allclose(balancer([1.0, 1.0, 1.0]).numpy(), expected, rtol=1e-6)


def test_held_between_updates_and_momentum():
    balancer = NTKWeighting(update_every=3, momentum=0.5, num_terms=2)
    balancer.update_traces([1.0, 3.0])  # fresh weights 4, 4/3; averaged from 1: 2.5, 7/6
    assert bool(balancer.needs_traces())
    np.testing.assert_allclose(balancer([1.0, 1.0]).numpy(), [2.5, 7.0 / 6.0], rtol=1e-6)
    balancer.update_traces([3.0, 1.0])  # not an update step: ignored until step 3
    for _ in range(2):
        assert not bool(balancer.needs_traces())
        np.testing.assert_allclose(balancer([1.0, 1.0]).numpy(), [2.5, 7.0 / 6.0], rtol=1e-6)
    assert bool(balancer.needs_traces())  # step 3: 0.5 w + 0.5 (4/3, 4)
    np.testing.assert_allclose(balancer([1.0, 1.0]).numpy(), [1.25 + 2.0 / 3.0, 7.0 / 12.0 + 2.0], rtol=1e-6)
    assert int(balancer.step.numpy()) == 4


def test_a_zero_trace_keeps_its_weight():
    balancer = NTKWeighting(update_every=1, num_terms=3)
    balancer.update_traces([1.0, 0.0, 4.0])
    np.testing.assert_allclose(balancer([1.0, 1.0, 1.0]).numpy(), [5.0, 1.0, 1.25], rtol=1e-6)
    balancer.update_traces([np.nan, 0.0, 0.0])
    np.testing.assert_allclose(balancer([1.0, 1.0, 1.0]).numpy(), [5.0, 1.0, 1.25], rtol=1e-6)


def test_a_non_finite_loss_leaves_the_state():
    balancer = NTKWeighting(update_every=1, num_terms=2)
    balancer.update_traces([1.0, 3.0])
    balancer([1.0, 1.0])
    balancer.update_traces([3.0, 1.0])
    np.testing.assert_allclose(balancer([np.nan, 1.0]).numpy(), [4.0, 4.0 / 3.0], rtol=1e-6)
    assert int(balancer.step.numpy()) == 1
    np.testing.assert_allclose(balancer([1.0, 1.0]).numpy(), [4.0 / 3.0, 4.0], rtol=1e-6)


def test_config_round_trip_and_arguments():
    balancer = NTKWeighting(update_every=5, momentum=0.9, numerator="mean", means="own", points=64, seed=4)
    copy = NTKWeighting.from_config(balancer.get_config())
    assert (copy.update_every, copy.momentum, copy.numerator, copy.means, copy.points, copy.seed) == \
        (5, 0.9, "mean", "own", 64, 4)
    assert kb.balancers.get("ntk").update_every == 1000
    for kwargs, name in [({"update_every": 0}, "update_every"), ({"momentum": 1.0}, "momentum"),
                         ({"numerator": "max"}, "numerator"), ({"means": "all"}, "means"),
                         ({"points": 0}, "points")]:
        with pytest.raises(ValueError, match=f"`{name}`.*received {name}="):
            NTKWeighting(**kwargs)


# -- in a model ------------------------------------------------------------------------------

PDE = kb.HelmholtzPDE()
POINTS = PDE.sample(24, 16, seed=0)


def pinn_model(jit_compile=False, **options):
    keras.utils.set_random_seed(0)
    options = {"update_every": 2, "momentum": 0.5, **options}
    model = kb.PINNModel(PDE, kb.build_pinn(PDE, width=6, depth=1, seed=0), balancer=NTKWeighting(**options))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    return model


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.balancer.term_weights.numpy().copy())


def fit(model, epochs, initial_epoch=0, callbacks=()):
    recorder = Recorder()
    model.fit(POINTS, POINTS, batch_size=len(POINTS), epochs=epochs, initial_epoch=initial_epoch, verbose=0,
              shuffle=False, callbacks=[recorder, *callbacks])
    return recorder.weights


def test_pinn_model_trains_under_xla_and_skips_a_non_finite_step():
    model = pinn_model(jit_compile=True, momentum=0.0)
    traces = model.ntk_traces(POINTS).numpy()
    weights = fit(model, 3)
    # Step 0 updates from the traces at the initial parameters; step 1 holds; step 2 updates.
    np.testing.assert_allclose(weights[0], traces.sum() / traces, rtol=1e-4)
    np.testing.assert_array_equal(weights[1], weights[0])
    assert not np.allclose(weights[2], weights[0], rtol=1e-6)
    assert int(model.balancer.step.numpy()) == 3 and np.isfinite(model.balancer.traces.numpy()).all()
    # A non-finite step (an infinite coordinate: NaN terms and gradients) on an update step (step 4,
    # after one more clean step) leaves the balancer's state and the parameters as they were.
    fit(model, 1)
    assert bool(model.balancer.needs_traces())
    state = [v.numpy().copy() for v in model.balancer.variables if v is not model.balancer.term_losses]
    parameters = [v.numpy().copy() for v in model.trainable_variables]
    poisoned = POINTS.copy()
    poisoned[3, 0] = np.inf
    history = model.fit(poisoned, poisoned, batch_size=len(POINTS), epochs=1, verbose=0, shuffle=False)
    assert history.history["skipped_steps"] == [1.0]
    after = [v.numpy() for v in model.balancer.variables if v is not model.balancer.term_losses]
    for a, b in zip(after, state):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.trainable_variables, parameters):
        np.testing.assert_array_equal(a.numpy(), b)


def test_plain_balanced_model_and_keras_loss_refuse_ntk():
    inputs = keras.Input((2,))
    model = kb.BalancedModel(inputs, keras.layers.Dense(1)(inputs), balancer="ntk", term_names=("a", "b"))
    with pytest.raises(ValueError, match="'ntk'.*PINNModel"):
        model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="'ntk'.*Keras loss cannot.*PINNModel"):
        kb.BalancedLoss(PDE, "ntk")


@pytest.mark.slow
def test_save_load_and_backup_resume_exactly(tmp_path):
    reference = pinn_model(points=30, seed=5)
    expected = fit(reference, 5)
    first = pinn_model(points=30, seed=5)
    weights = fit(first, 3)
    first.save(tmp_path / "run.keras")
    resumed = keras.models.load_model(tmp_path / "run.keras")
    weights += fit(resumed, 5, initial_epoch=3)
    np.testing.assert_allclose(np.array(weights), np.array(expected), rtol=1e-6)
    for a, b in zip(resumed.balancer.variables, reference.balancer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(pinn_model(points=30, seed=5), 5, callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
    again = pinn_model(points=30, seed=5)
    fit(again, 5, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    for a, b in zip(again.balancer.variables, reference.balancer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    for a, b in zip(again.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
