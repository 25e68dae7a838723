"""Properties every registered loss-level balancer must have."""

import numpy as np
import pytest
import tensorflow as tf

from keras_balance import balancers

K = 3
# Constructor arguments for balancers that cannot be built from defaults alone.
REQUIRED = {"prior_loss": {"prior_losses": [0.5, 2.0, 1.0]}}
LOSS_LEVEL = sorted(name for name, cls in balancers.available().items() if cls.kind == balancers.LOSS_LEVEL)


def make(name, **kwargs):
    return balancers.get(name, **{**REQUIRED.get(name, {}), **kwargs})


def seeded(name, seed=0):
    """A fresh balancer, seeded when the method is random."""
    balancer = make(name)
    return make(name, seed=seed) if "seed" in balancer.get_config() else balancer


def run(balancer, sequence):
    out = []
    for losses in sequence:
        total, weights = balancer.combine(tf.constant(losses, "float32"))
        out.append((float(total), np.asarray(weights, "float64")))
    return out


def test_the_registry_holds_every_method_of_the_family():
    assert set(LOSS_LEVEL) >= {"sum", "relobralo"}
    for name in LOSS_LEVEL:
        cls = balancers.available()[name]
        assert cls.summary and cls.__doc__ and "Args:" in cls.__doc__, name


@pytest.mark.parametrize("name", LOSS_LEVEL)
@pytest.mark.parametrize(
    "case",
    [
        [[1.0, 0.0, 2.0], [0.5, 0.0, 1.5], [0.25, 0.0, 1.0], [0.2, 0.0, 0.9]],
        [[1e-12, 1e12, 1.0], [2e-12, 5e11, 0.9], [1e-12, 2.5e11, 0.8], [5e-13, 1e11, 0.7]],
    ],
    ids=["zero-term", "1e-12-vs-1e12"],
)
def test_weights_stay_finite_on_extreme_terms(name, case):
    for total, weights in run(make(name), case):
        assert weights.shape == (K,)
        assert np.all(np.isfinite(weights)), (name, weights)
        assert np.isfinite(total), (name, total)


@pytest.mark.parametrize("name", LOSS_LEVEL)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_step_does_not_poison_the_state(name, bad):
    sequence = [[1.0, 2.0, 3.0], [0.9, 1.5, 2.0], [0.8, 1.2, 1.5], [0.7, 1.0, 1.2]]
    clean, dirty = seeded(name), seeded(name)
    for i, losses in enumerate(sequence):
        if i == 2:
            before = np.asarray(dirty.term_weights).copy()
            state = [np.asarray(v).copy() for v in dirty.non_trainable_variables if v is not dirty.term_losses]
            weights = np.asarray(dirty(tf.constant([losses[0], bad, losses[2]], "float32")))
            np.testing.assert_array_equal(weights, before)
            for old, var in zip(state, [v for v in dirty.non_trainable_variables if v is not dirty.term_losses]):
                np.testing.assert_array_equal(np.asarray(var), old)
        a = np.asarray(clean(tf.constant(losses, "float32")))
        b = np.asarray(dirty(tf.constant(losses, "float32")))
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_config_round_trip(name):
    balancer = make(name)
    balancer.build_for(K)
    config = balancer.get_config()
    rebuilt = type(balancer).from_config(config)
    assert rebuilt.get_config() == config
    again = balancers.deserialize(balancers.serialize(balancer))
    assert type(again) is type(balancer) and again.get_config() == config
    assert make(name).name == name


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_graph_and_xla_agree_with_eager(name):
    sequence = tf.constant([[1.0, 2.0, 3.0], [0.9, 1.5, 2.0], [0.8, 1.2, 1.5]], "float32")
    results = []
    for mode in ("eager", "graph", "xla"):
        balancer = seeded(name, seed=1)

        def step(losses, balancer=balancer):
            return balancer.combine(losses)

        if mode != "eager":
            step = tf.function(step, jit_compile=mode == "xla")
        results.append(np.array([np.asarray(step(row)[1]) for row in sequence]))
    random = name in ("rlw",)  # XLA draws other (reproducible) random numbers
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, err_msg=name)
    if not random:
        np.testing.assert_allclose(results[2], results[0], rtol=1e-5, err_msg=name)
    assert np.all(np.isfinite(results[2]))


def test_keras_loss_adapters_exist_for_every_method():
    from keras_balance import losses

    adapters = {
        cls.method: cls
        for cls in vars(losses).values()
        if isinstance(cls, type) and issubclass(cls, losses._MethodLoss) and cls.method
    }
    for name in LOSS_LEVEL:
        if name in ("sum", "relobralo"):
            continue  # BalancedLoss(terms, "sum") and ReLoBRaLoLoss
        assert name in adapters, name
