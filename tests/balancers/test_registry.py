"""Tests of the balancer registry and of the gradient-level contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_balance.balancers as kb
from keras_balance.balancers import registry
from keras_balance.balancers import (
    GRADIENT_LEVEL,
    LOSS_LEVEL,
    Balancer,
    GradientBalancer,
    LossBalancer,
    ReLoBRaLo,
    Sum,
)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register names without leaking them into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.parametrize(
    "name, cls",
    [("relobralo", ReLoBRaLo), ("ReLoBRaLo", ReLoBRaLo), ("RELOBRALO", ReLoBRaLo), ("sum", Sum), ("Sum", Sum)],
)
def test_get_by_name(name, cls):
    balancer = kb.get(name)
    assert type(balancer) is cls
    assert kb.get(name) is not balancer  # a new instance each time


def test_get_passes_kwargs():
    balancer = kb.get("relobralo", alpha=0.5, rho=0.25, seed=3, num_terms=2)
    assert (balancer.alpha, balancer.rho, balancer.seed, balancer.num_terms) == (0.5, 0.25, 3, 2)
    fixed = kb.get("sum", weights=[1.0, 4.0])
    np.testing.assert_array_equal(fixed([1.0, 1.0]).numpy(), [1.0, 4.0])
    with pytest.raises(ValueError, match="alpha"):
        kb.get("relobralo", alpha=2.0)


def test_get_instance_returns_it():
    balancer = ReLoBRaLo()
    assert kb.get(balancer) is balancer
    with pytest.raises(ValueError, match="alpha"):
        kb.get(balancer, alpha=0.5)


def test_get_class_instantiates():
    balancer = kb.get(ReLoBRaLo, temperature=2.0)
    assert type(balancer) is ReLoBRaLo
    assert balancer.temperature == 2.0
    assert type(kb.get(Sum)) is Sum


@pytest.mark.parametrize(
    "original",
    [lambda: ReLoBRaLo(alpha=0.7, seed=9, num_terms=3), lambda: Sum(weights=[2.0, 1.0])],
    ids=["relobralo", "sum"],
)
def test_get_config_dict(original):
    original = original()
    rebuilt = kb.get(kb.serialize(original))
    assert type(rebuilt) is type(original)
    assert rebuilt is not original
    assert rebuilt.get_config() == original.get_config()


def test_unknown_name():
    with pytest.raises(ValueError) as info:
        kb.get("gradnorm_typo")
    message = str(info.value)
    assert "gradnorm_typo" in message
    for known in ("relobralo", "sum"):
        assert known in message


@pytest.mark.parametrize("identifier", [3, None, 1.5, ["sum"], len, keras.layers.Dense], ids=str)
def test_wrong_type(identifier):
    with pytest.raises(TypeError, match="balancer"):
        kb.get(identifier)


def test_non_balancer_class_rejected_by_get():
    with pytest.raises(TypeError, match="balancer"):
        kb.get(dict)


def test_available():
    found = kb.available()
    assert found["sum"] is Sum
    assert found["relobralo"] is ReLoBRaLo
    assert list(found) == sorted(found)
    for name in ("sum", "relobralo"):
        cls = found[name]
        assert issubclass(cls, LossBalancer)
        assert cls.kind == LOSS_LEVEL == "loss"
        assert isinstance(cls.summary, str) and cls.summary.strip()
    # A copy: mutating it does not change the registry.
    found.pop("sum")
    assert "sum" in kb.available()


@pytest.mark.parametrize(
    "candidate", [int, object, Sum(), "Sum", keras.layers.Dense], ids=["int", "object", "instance", "str", "Dense"]
)
def test_register_rejects_non_balancers(isolated_registry, candidate):
    with pytest.raises(TypeError, match="Balancer"):
        kb.register("bogus", candidate)
    assert "bogus" not in kb.available()


def test_register_rejects_duplicate_name(isolated_registry):
    class Other(LossBalancer):
        summary = "test only"

        def compute_weights(self, losses):
            return tf.ones_like(losses)

    for name in ("sum", "SUM", "ReLoBRaLo"):
        with pytest.raises(ValueError, match=name):
            kb.register(name, Other)
    assert kb.available()["sum"] is Sum
    assert kb.available()["relobralo"] is ReLoBRaLo
    # Registering the same class again is allowed.
    assert kb.register("sum", Sum) is Sum


def test_register_new_balancer(isolated_registry):
    @kb.register("Halves")
    class Halves(LossBalancer):
        summary = "test only"

        def compute_weights(self, losses):
            return 0.5 * tf.ones_like(losses)

    assert kb.available()["halves"] is Halves
    balancer = kb.get("HALVES", num_terms=2)
    assert type(balancer) is Halves
    np.testing.assert_array_equal(balancer([1.0, 2.0]).numpy(), [0.5, 0.5])


# -- gradient-level contract ------------------------------------------------------------


class UniformMean(GradientBalancer):
    """Test-only gradient balancer: weights 1/K, so the direction is the row mean."""

    summary = "test only"

    def gramian_weights(self, gramian):
        k = tf.shape(gramian)[0]
        return tf.ones([k], dtype=gramian.dtype) / tf.cast(k, gramian.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 7), (1, 4), (5, 1)])
def test_gradient_balancer_aggregate(dtype, shape):
    jacobian = np.random.default_rng(0).normal(size=shape).astype(dtype)
    balancer = UniformMean()
    assert isinstance(balancer, Balancer)
    assert balancer.kind == GRADIENT_LEVEL == "gradient"
    direction = balancer.aggregate(jacobian)
    assert tuple(direction.shape) == (shape[1],)
    assert direction.dtype == tf.as_dtype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(direction), jacobian.mean(axis=0), rtol=rtol, atol=rtol)
    # The weights are kept in a float32 variable whatever the Jacobian's dtype.
    weights = np.asarray(balancer.last_weights)
    assert weights.shape == (shape[0],)
    np.testing.assert_allclose(weights, np.full(shape[0], 1.0 / shape[0]), rtol=1e-6)
    assert balancer.num_terms == shape[0]


def test_gradient_balancer_checks_rows_and_rank():
    balancer = UniformMean(num_terms=3)
    with pytest.raises(ValueError, match=r"built for 3 loss terms.*\b2\b"):
        balancer.aggregate(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="rank"):
        balancer.aggregate(np.ones((3,), np.float32))
    direction = balancer.aggregate(np.arange(12, dtype=np.int32).reshape(3, 4))
    assert direction.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(direction), [4.0, 5.0, 6.0, 7.0], rtol=1e-6)


def test_gradient_balancer_needs_gramian_weights():
    class Incomplete(GradientBalancer):
        pass

    with pytest.raises(NotImplementedError, match="gramian_weights"):
        Incomplete().aggregate(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_gradient_balancer_skips_a_non_finite_jacobian(bad):
    balancer = UniformMean()
    jacobian = np.arange(6, dtype="float32").reshape(2, 3)
    balancer.aggregate(jacobian)
    previous = np.asarray(balancer.last_weights).copy()
    broken = jacobian.copy()
    broken[1, 2] = bad
    direction = np.asarray(balancer.aggregate(broken))
    np.testing.assert_array_equal(direction, np.zeros(3))
    np.testing.assert_array_equal(np.asarray(balancer.last_weights), previous)
    with pytest.raises(tf.errors.InvalidArgumentError):
        UniformMean(nan_policy="raise").aggregate(broken)
