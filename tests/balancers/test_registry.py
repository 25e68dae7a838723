"""Tests of the balancer registry, of what every registered balancer shares, and of the
gradient-level contract.

The registry-wide tests run over every registered name (`helpers.NAMES`), with
its defaults and with the non-default options of `helpers.OPTIONS`: a new
method is covered by registering it.
"""

import inspect
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    NAMES,
    ONE_VALUE_PER_TERM,
    OPTIONS,
    assert_same_state,
    full_rank,
    make,
    random_sequence,
    state_of,
    variants,
)

import keras_balance.balancers as kb
from keras_balance.balancers import (
    GRADIENT_LEVEL,
    LOSS_LEVEL,
    Balancer,
    GradientBalancer,
    LossBalancer,
    ReLoBRaLo,
    Sum,
)

K = 3
# The attributes of `Balancer` that a model or a loss adapter reads.
CONTRACT = ("kind", "needs_epoch_end", "update_every", "weights_all_parameters", "jacobian_scope", "layer")


def step(balancer, losses, seed=0):
    """One step with the given losses: the weights (loss level) or the direction (gradient level)."""
    losses = np.asarray(losses, "float32")
    if balancer.kind == LOSS_LEVEL:
        return balancer(losses).numpy()
    return balancer.aggregate(full_rank(len(losses), 5, seed=seed), losses).numpy()


def run(balancer, start=0, stop=4):
    """Steps `start` to `stop` of a fixed run (with epochs: one ends every second step)."""
    out = []
    for t, losses in enumerate(random_sequence(stop, K, seed=16)[start:], start):
        out.append(step(balancer, losses, seed=t))
        if balancer.needs_epoch_end and t % 2:
            balancer.end_epoch()
    return np.array(out)


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


def test_unknown_name():
    with pytest.raises(ValueError) as info:
        kb.get("gradnorm_typo")
    message = str(info.value)
    assert "gradnorm_typo" in message
    for known in ("relobralo", "sum"):
        assert known in message


@pytest.mark.parametrize("spelling, name", [
    ("LR-Annealing", "lr_annealing"), ("lrannealing", "lr_annealing"), ("LRAnnealing", "lr_annealing"),
    ("imtl-g", "imtl_g"), ("IMTLG", "imtl_g"), ("Aligned MTL", "aligned_mtl"), ("GeneralizedMean", "generalized_mean"),
    ("UncertaintyWeighting", "uncertainty"), ("ReLoBRaLo", "relobralo"),
])
def test_obvious_spellings_are_aliases(spelling, name):
    assert type(kb.get(spelling)) is kb.available()[name]


def test_aliases_do_not_match_other_names():
    for near in ("imtl", "mgda_", "sum2", "relo-bralo-x"):
        if near == "mgda_":
            assert type(kb.get(near)) is kb.available()["mgda"]  # only separators differ
            continue
        with pytest.raises(ValueError, match="Known balancers"):
            kb.get(near)


def test_register_rejects_a_name_that_reads_as_another(isolated_registry):
    class Other(LossBalancer):
        summary = "test only"

        def compute_weights(self, losses):
            return tf.ones_like(losses)

    with pytest.raises(ValueError, match="lr_annealing"):
        kb.register("LR-annealing", Other)
    assert "lr-annealing" not in kb.available()


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


# -- every registered balancer -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_method_documents_itself(name):
    cls = kb.available()[name]
    assert cls.kind in (LOSS_LEVEL, GRADIENT_LEVEL)
    assert issubclass(cls, LossBalancer if cls.kind == LOSS_LEVEL else GradientBalancer)
    assert isinstance(cls.summary, str) and cls.summary.strip() and "\n" not in cls.summary
    assert cls.__doc__ and "Args:" in cls.__doc__
    # The default layer name is the registered name.
    assert make(name, K).name == name


def test_the_table_of_options_names_registered_methods():
    assert set(OPTIONS) <= set(NAMES)
    assert set(ONE_VALUE_PER_TERM) <= set(NAMES)


@pytest.mark.parametrize("num_terms", [None, K], ids=["unbuilt", "built"])
@pytest.mark.parametrize("name, options", variants(NAMES))
def test_config_round_trip(name, options, num_terms):
    cls = kb.available()[name]
    options = dict(options, nan_policy="raise", name=f"my_{name}")
    arguments = {**cls.required_arguments(K), **options}
    original = make(name, K, num_terms=num_terms, **options)
    config = original.get_config()
    for key, value in options.items():
        assert config[key] == value, key
    # Every constructor argument is part of the config.
    assert set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"} <= set(config)
    fixes_terms = ONE_VALUE_PER_TERM.get(name) in arguments
    assert config["num_terms"] == (K if num_terms or fixes_terms else None)
    assert original.built == (config["num_terms"] is not None)
    copies = [
        cls.from_config(config),
        cls.from_config(json.loads(json.dumps(config))),
        kb.get(name, **config),
        kb.get(kb.serialize(original)),
        kb.deserialize(kb.serialize(original)),
        kb.deserialize({"class_name": name.upper(), "config": config}),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original)),
    ]
    for copy in copies:
        assert type(copy) is cls and copy is not original
        assert copy.get_config() == config
        assert copy.built == original.built
        for attribute in CONTRACT:
            assert getattr(copy, attribute) == getattr(original, attribute), attribute
    # The config carries no state: a copy made after some steps starts where the original did.
    weights = run(original)
    # P, for a method with per-column state, is known after the first step, like K.
    columns = {"num_columns": original.num_columns} if cls.column_state else {}
    assert original.get_config() == dict(config, num_terms=K, **columns)
    np.testing.assert_array_equal(run(cls.from_config(original.get_config())), weights)


@pytest.mark.parametrize("name, options", variants(NAMES))
def test_checkpoint_continues_the_run(name, options, tmp_path):
    # Unseeded (unless the options give a seed): a drawn seed travels with the state.
    balancer = make(name, K, num_terms=K, **{"seed": None, **options})
    run(balancer, 0, 3)
    saved = state_of(balancer)
    checkpoint = tf.train.Checkpoint(balancer=balancer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    after = run(balancer, 3, 7)
    checkpoint.restore(path).assert_consumed()
    assert_same_state(state_of(balancer), saved)
    np.testing.assert_array_equal(run(balancer, 3, 7), after)
    # Into a new balancer.
    other = make(name, K, num_terms=K, **{"seed": None, **options})
    if other.column_state:
        other.build_columns(balancer.num_columns)  # a checkpoint restores into existing variables
    tf.train.Checkpoint(balancer=other).restore(path).assert_consumed()
    assert_same_state(state_of(other), saved)
    np.testing.assert_array_equal(run(other, 3, 7), after)


@pytest.mark.parametrize("built_by", ["constructor", "first step"])
@pytest.mark.parametrize("name", NAMES)
def test_the_number_of_terms_is_checked(name, built_by):
    balancer = make(name, K, num_terms=K) if built_by == "constructor" else make(name, K)
    if built_by == "first step":
        step(balancer, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=rf"built for {K} loss terms.*\b2\b"):
        step(balancer, [1.0, 2.0])
    assert balancer.num_terms == K


@pytest.mark.parametrize("name", NAMES)
def test_bad_common_arguments(name):
    with pytest.raises(ValueError, match=r"`nan_policy`.*received nan_policy='ignore'"):
        make(name, K, nan_policy="ignore")
    for num_terms in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=rf"num_terms.*{num_terms!r}"):
            make(name, K, num_terms=num_terms)
    balancer = make(name, K, num_terms=K)
    with pytest.raises(ValueError, match="rank"):
        if balancer.kind == LOSS_LEVEL:
            balancer(tf.ones((K, 1)))
        else:
            balancer.aggregate(np.ones((K,), np.float32))


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
