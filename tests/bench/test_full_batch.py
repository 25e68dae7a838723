"""Full-batch training: `full_batch` and BalancedModel's fast path for `fit(x, batch_size=len(x), epochs=N)`."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance as kb


def pinn_model(problem, balancer="relobralo"):
    keras.utils.set_random_seed(0)
    model = kb.PINNModel(problem, kb.build_pinn(problem, width=8, depth=2, seed=0), balancer=balancer)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    return model


def weights(model):
    return [v.numpy() for v in model.trainable_variables + model.balancer.non_trainable_variables]


def test_full_batch_arrays_train_as_the_repeated_dataset():
    """`fit(xy, batch_size=len(xy), epochs=3)` gives the same model and History as `full_batch`, 1 step/epoch."""
    problem = kb.HelmholtzPDE()
    xy = problem.sample(64, 32, seed=0)
    arrays, dataset = pinn_model(problem), pinn_model(problem)
    log_a = arrays.fit(xy, batch_size=len(xy), epochs=3, verbose=0)
    log_d = dataset.fit(kb.full_batch(xy), steps_per_epoch=1, epochs=3, verbose=0)
    for a, d in zip(weights(arrays), weights(dataset)):
        np.testing.assert_array_equal(a, d)
    assert log_a.history.keys() == log_d.history.keys()
    np.testing.assert_array_equal(log_a.history["loss"], log_d.history["loss"])
    assert len(log_a.history["loss"]) == 3 and int(arrays.optimizer.iterations.numpy()) == 3


def test_the_fast_path_matches_keras_own_array_path_up_to_rounding():
    """Keras shuffles the rows of the one batch; the means differ only in rounding."""
    problem = kb.HelmholtzPDE()
    xy = problem.sample(64, 32, seed=0)
    ours, keras_own = pinn_model(problem), pinn_model(problem)
    ours.fit(xy, batch_size=len(xy), epochs=4, verbose=0)
    keras.Model.fit(keras_own, xy, batch_size=len(xy), epochs=4, verbose=0)  # Keras' per-epoch iterator
    for a, b in zip(weights(ours), weights(keras_own)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs, steps", [(dict(batch_size=32), 3), (dict(batch_size=200, validation_split=0.25), 1),
                                           (dict(batch_size=32, steps_per_epoch=2), 2)],
                         ids=["mini-batches", "validation-split", "steps-per-epoch"])
def test_other_array_fits_keep_keras_behaviour(kwargs, steps):
    problem = kb.HelmholtzPDE()
    xy = problem.sample(64, 32, seed=0)  # 96 rows
    model = pinn_model(problem, "sum")
    history = model.fit(xy, epochs=1, verbose=0, **kwargs)
    assert int(model.optimizer.iterations.numpy()) == steps
    assert ("val_loss" in history.history) == ("validation_split" in kwargs)


def test_positional_arguments_and_targets_are_kept():
    inputs = keras.Input((2,))
    model = kb.BalancedModel(inputs, {"a": keras.layers.Dense(1)(inputs), "b": keras.layers.Dense(1)(inputs)})
    model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"}, balancer="dwa")
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    y = {"a": x[:, :1], "b": x[:, 1:]}
    history = model.fit(x, y, 16, 3, 0)  # batch_size, epochs, verbose as positional arguments
    assert len(history.history["loss"]) == 3 and int(model.optimizer.iterations.numpy()) == 3
    assert int(model.balancer.epochs_seen.numpy()) == 3  # DWA's per-epoch callback still runs


def test_fit_arguments_given_twice_or_too_many_are_errors():
    problem = kb.HelmholtzPDE()
    model = pinn_model(problem, "sum")
    xy = problem.sample(16, 8, seed=0)
    with pytest.raises(TypeError, match="multiple values for argument 'batch_size'"):
        model.fit(xy, None, 24, batch_size=24)
    with pytest.raises(TypeError, match="at most 5 positional arguments"):
        model.fit(xy, None, 24, 1, 0, [])


def test_a_dataset_fit_does_not_warn_about_shuffle():
    problem = kb.HelmholtzPDE()
    model = pinn_model(problem, "sum")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(kb.full_batch(problem.sample(16, 8, seed=0)), steps_per_epoch=2, verbose=0)


def test_full_batch_elements():
    x, y, w = np.ones((4, 2)), np.zeros((4, 1)), np.arange(4.0)
    assert tf.data.Dataset.cardinality(kb.full_batch(x)).numpy() == tf.data.INFINITE_CARDINALITY
    element = next(iter(kb.full_batch(x, y, w)))
    assert [tuple(t.shape) for t in element] == [(4, 2), (4, 1), (4,)]
    assert tuple(next(iter(kb.full_batch({"a": x}))).keys()) == ("a",)


@pytest.mark.parametrize("call, message", [
    (lambda: kb.full_batch(None), "`x` must be the training inputs.*x=None"),
    (lambda: kb.full_batch(np.ones((4, 2)), np.ones((3, 1))), "`y` must have one row per row of `x` \\(4\\)"),
    (lambda: kb.full_batch(np.ones((4, 2)), sample_weight=np.ones(4)), "`sample_weight` needs `y`"),
    (lambda: kb.full_batch(np.ones((0, 2))), "`x` must have at least one row"),
    (lambda: kb.full_batch(tf.data.Dataset.range(3)), "not a `tf.data.Dataset`"),
])
def test_full_batch_bad_input(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


class BatchSeen(keras.callbacks.Callback):
    """Records, at every training batch, whether the model trains on a `full_batch` batch directly."""

    def __init__(self, model):
        super().__init__()
        self.balanced, self.seen = model, []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(kb.models._FIT_BATCHES.get(self.balanced) is not None)


@pytest.mark.parametrize("balancer, jit", [("relobralo", True), ("sum", False), ("lr_annealing", True)],
                         ids=["loss-level-xla", "sum-graph", "held-weights-xla"])
def test_a_full_batch_fit_takes_the_batch_directly_and_trains_as_the_iterator(balancer, jit):
    """The direct path (no iterator) gives the trajectory of the same data through Keras' iterator, bitwise."""
    problem = kb.HelmholtzPDE()
    xy = problem.sample(64, 32, seed=0)
    direct, iterated = pinn_model(problem, balancer), pinn_model(problem, balancer)
    for model in (direct, iterated):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
    probe, control = BatchSeen(direct), BatchSeen(iterated)
    log_d = direct.fit(kb.full_batch(xy), steps_per_epoch=7, epochs=2, verbose=0, callbacks=[probe])
    plain = tf.data.Dataset.from_tensors(xy).repeat()  # the same batch, not made by full_batch
    log_i = iterated.fit(plain, steps_per_epoch=7, epochs=2, verbose=0, callbacks=[control])
    assert probe.seen == [True] * 14 and control.seen == [False] * 14
    assert kb.models._FIT_BATCHES.get(direct) is None  # only during fit
    for a, b in zip(weights(direct), weights(iterated)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(log_d.history["loss"], log_i.history["loss"])
    assert int(direct.optimizer.iterations.numpy()) == 14


def test_the_direct_path_ends_with_the_fit_even_when_it_fails():
    problem = kb.HelmholtzPDE()
    model = pinn_model(problem, "sum")

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(kb.full_batch(problem.sample(16, 8, seed=0)), steps_per_epoch=3, verbose=0, callbacks=[Stop()])
    assert kb.models._FIT_BATCHES.get(model) is None
    history = model.fit(tf.data.Dataset.from_tensors(problem.sample(16, 8, seed=0)).repeat(), steps_per_epoch=2,
                        verbose=0)
    assert len(history.history["loss"]) == 1
