"""Properties every registered loss-level balancer must have.

Each test runs over every registered loss-level method (`helpers.LOSS_LEVEL`),
most of them with its defaults and with each set of options of
`helpers.OPTIONS`: the NaN policy (skip and raise), finite weights on extreme
terms, and the same weights in eager mode, in a `tf.function` and under XLA.
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import LOSS_LEVEL, assert_same_state, make, random_sequence, state_of, takes_seed, variants

from keras_balance.balancers import LossBalancer

K = 3
NAN, INF = float("nan"), float("inf")


def run(balancer, sequence):
    out = []
    for losses in sequence:
        total, weights = balancer.combine(tf.constant(losses, "float32"))
        out.append((float(total), np.asarray(weights, "float64")))
    return out


def draws_random_numbers(name, options):
    """XLA draws other (reproducible) random numbers than TensorFlow's kernels.

    A method that takes a seed draws, unless its lookback probability `rho` is 1.
    """
    return takes_seed(name) and options.get("rho") != 1.0


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
    for total, weights in run(make(name, K), case):
        assert weights.shape == (K,)
        assert np.all(np.isfinite(weights)), (name, weights)
        assert np.isfinite(total), (name, total)


# (value, step, built beforehand): a non-finite term at the first step of an
# unbuilt or a built balancer, and at later steps.
BAD_STEPS = [
    pytest.param(NAN, 0, False, id="nan-first-step"),
    pytest.param(INF, 0, True, id="inf-first-step-built"),
    pytest.param(-INF, 1, False, id="-inf-second-step"),
    pytest.param(NAN, 3, True, id="nan-fourth-step"),
    pytest.param(INF, 4, False, id="inf-fifth-step"),
]


@pytest.mark.parametrize("bad, bad_step, built", BAD_STEPS)
@pytest.mark.parametrize("name, options", variants(LOSS_LEVEL))
def test_a_non_finite_step_changes_nothing(name, options, bad, bad_step, built):
    """Skip policy: the step returns the previous weights and leaves every variable as it was;
    the run then goes on exactly as a run that never saw it."""
    sequence = random_sequence(7, K, seed=8).astype("float32")
    extra = {"num_terms": K} if built else {}
    clean, dirty = make(name, K, **options, **extra), make(name, K, **options, **extra)
    expected, got = [], []
    for t, losses in enumerate(sequence):
        if t == bad_step:
            # Before the first step, the state is that of a new balancer.
            reference = dirty if dirty.built else make(name, K, num_terms=K, **options)
            before, previous = state_of(reference), reference.term_weights.numpy()
            broken = losses.copy()
            broken[1] = bad
            returned = dirty(tf.constant(broken)).numpy()
            assert np.all(np.isfinite(returned))
            np.testing.assert_array_equal(returned, previous)
            assert_same_state(state_of(dirty), before)
        expected.append(clean(tf.constant(losses)).numpy())
        got.append(dirty(tf.constant(losses)).numpy())
        if clean.needs_epoch_end and t % 2:
            clean.end_epoch()
            dirty.end_epoch()
    np.testing.assert_array_equal(np.array(got), np.array(expected))
    assert_same_state(state_of(dirty), state_of(clean))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_raise_policy(name, graph):
    """Raise policy: the step fails and changes nothing; finite steps go on as if it never came."""
    sequence = random_sequence(4, K, seed=14).astype("float32")
    clean = make(name, K, num_terms=K)
    balancer = make(name, K, nan_policy="raise", num_terms=K)
    fn = tf.function(lambda losses: balancer(losses)) if graph else balancer
    got = []
    for t, losses in enumerate(sequence):
        if t == 2:
            before = state_of(balancer)
            with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite"):
                fn(tf.constant([NAN, 1.0, 0.5]))
            assert_same_state(state_of(balancer), before)
        got.append(fn(tf.constant(losses)).numpy())
    expected = [clean(tf.constant(losses)).numpy() for losses in sequence]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, options", variants(LOSS_LEVEL))
def test_graph_and_xla_agree_with_eager(name, options):
    sequence = random_sequence(8, K, seed=13).astype("float32")
    sequence[4, 1] = NAN  # a skipped step too
    results = {}
    for mode in ("eager", "graph", "xla"):
        balancer = make(name, K, **{"seed": 1, **options})  # built on the first (traced) call

        def step(losses, balancer=balancer):
            return balancer.combine(losses)

        if mode != "eager":
            step = tf.function(step, jit_compile=mode == "xla")
        totals, weights = [], []
        for t, losses in enumerate(sequence):
            total, used = step(tf.constant(losses))
            totals.append(float(total))
            weights.append(used.numpy())
            if balancer.needs_epoch_end and t % 3 == 2:
                balancer.end_epoch()
        weights = np.array(weights)
        assert np.all(np.isfinite(weights)), mode
        np.testing.assert_array_equal(weights[4], weights[3], err_msg=mode)  # the skipped step
        results[mode] = np.array(totals), weights, state_of(balancer)
    compared = ["graph"] if draws_random_numbers(name, options) else ["graph", "xla"]
    eager_totals, eager_weights, eager_state = results["eager"]
    for mode in compared:
        totals, weights, state = results[mode]
        np.testing.assert_allclose(weights, eager_weights, rtol=1e-5, atol=1e-7, err_msg=mode)
        np.testing.assert_allclose(totals, eager_totals, rtol=1e-5, err_msg=mode)
        for (key, value), eager_value in zip(state.items(), eager_state.values()):
            np.testing.assert_allclose(value, eager_value, rtol=1e-5, atol=1e-7, err_msg=f"{mode} {key}")
    # Counters advance alike in every mode.
    _, _, xla_state = results["xla"]
    for (key, value), eager_value in zip(xla_state.items(), eager_state.values()):
        if value.dtype.kind == "i":
            np.testing.assert_array_equal(value, eager_value, err_msg=key)


@pytest.mark.parametrize("name, options", variants(LOSS_LEVEL))
def test_evaluate_changes_nothing(name, options):
    balancer = make(name, K, **options)
    for losses in random_sequence(3, K, seed=15).astype("float32"):
        balancer(losses)
    before = state_of(balancer)
    total, weights = balancer.evaluate([0.1, 0.2, 0.3])
    assert_same_state(state_of(balancer), before)
    assert weights.shape == (K,) and np.all(np.isfinite(weights.numpy())) and np.isfinite(total.numpy())
    if type(balancer).evaluate is LossBalancer.evaluate:
        # The weights of the latest step, applied to the given losses.
        np.testing.assert_array_equal(weights.numpy(), balancer.term_weights.numpy())
        np.testing.assert_allclose(total.numpy(), np.dot(weights.numpy(), [0.1, 0.2, 0.3]), rtol=1e-6)


@pytest.mark.parametrize("name, options", variants(LOSS_LEVEL))
def test_the_gradient_of_the_total_is_the_weights(name, options):
    balancer = make(name, K, **options)
    balancer([2.0, 1.0, 3.0])
    x = tf.Variable([1.5, 0.7, 2.0])
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(x * x)  # the losses depend on x
    weights = weights.numpy()
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), weights * 2 * x.numpy(), rtol=1e-6)
    if type(balancer).combine is LossBalancer.combine:
        # The weights are constants of the total.
        np.testing.assert_allclose(total.numpy(), np.sum(weights * x.numpy() ** 2), rtol=1e-6)


def test_keras_loss_adapters_exist_for_every_method():
    from keras_balance import losses

    adapters = {
        cls.method: cls
        for cls in vars(losses).values()
        if isinstance(cls, type) and issubclass(cls, losses.MethodLoss) and cls.method
    }
    for name in LOSS_LEVEL:
        if name in ("sum", "relobralo"):
            continue  # BalancedLoss(terms, "sum") and ReLoBRaLoLoss
        if name == "ntk":
            continue  # needs a PINNModel's NTK traces: a Keras loss refuses it
        assert name in adapters, name
