"""Faults at the edges of the balancer contracts, each with its clear error or documented behaviour.

- what a balancer is called with: scalars, strings, booleans, None terms,
  nested lists and ragged rows;
- hyper-parameters that are not numbers;
- negative losses, per method (skipped like a non-finite step where the
  formula needs non-negative losses, magnitudes or plain arithmetic elsewhere);
- Aligned-MTL's rank tolerance;
- seeds of unseeded balancers from Keras' global seed, across processes;
- calls to one balancer from several threads.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import LOSS_LEVEL, assert_same_state, make, state_of

from keras_balance import balancers
from keras_balance.balancers import arguments

# -- what a balancer is called with ------------------------------------------------------------


@pytest.mark.parametrize(
    "losses",
    [3.0, np.float32(3.0), np.array(3.0), tf.constant(3.0)],
    ids=["float", "numpy-scalar", "0-d-array", "0-d-tensor"],
)
def test_a_scalar_loss_is_refused_with_a_clear_error(losses):
    for call in (
        balancers.get("relobralo"),
        balancers.get("relobralo").combine,
        balancers.get("relobralo").evaluate,
        lambda v: balancers.get("gradnorm").aggregate(np.eye(2), v),
    ):
        with pytest.raises(ValueError, match=r"`losses`.*1-D.*received losses=3\.0, of rank 0 \(shape \(\)\)"):
            call(losses)


@pytest.mark.parametrize(
    "losses, fragment",
    [
        (["a", "b"], "'a'"),
        ([1.0, "2"], "'2'"),
        (np.array(["a", "b"]), "dtype str"),
        ([True, False], "dtype bool"),
        ([1j, 2.0], "dtype complex"),
        (None, "losses=None"),
    ],
    ids=["strings", "one-string", "string-array", "booleans", "complex", "none"],
)
def test_losses_that_are_not_real_numbers_are_refused(losses, fragment):
    with pytest.raises(TypeError, match="`losses`") as info:
        balancers.get("relobralo")(losses)
    assert fragment in str(info.value)


def test_a_none_term_names_its_position():
    for call in (balancers.get("softadapt"), lambda v: balancers.get("upgrad").aggregate(np.eye(3), v)):
        with pytest.raises(TypeError, match=r"`losses`.*term 1 = None"):
            call([1.0, None, 2.0])


def test_a_term_that_is_not_a_scalar_is_refused():
    with pytest.raises(ValueError, match=r"term 0 = \[1\.0, 2\.0\].*each term must be one scalar"):
        balancers.get("rlw")([[1.0, 2.0], 3.0])
    with pytest.raises(ValueError, match="K >= 1"):
        balancers.get("rlw")([])


def test_scalar_tensors_and_size_one_arrays_are_terms():
    weights = balancers.get("sum")([tf.constant(1.0), np.float64(2.0), np.array([3.0]), 4])
    np.testing.assert_array_equal(weights.numpy(), [1.0, 1.0, 1.0, 1.0])


def test_nested_lists_are_a_jacobian():
    nested = [[3.0, 0.0], [0.0, 1.0]]
    np.testing.assert_allclose(balancers.AlignedMTL().aggregate(nested).numpy(), [0.5, 0.5], rtol=1e-6)
    # Calling the layer itself converts too (Keras would take a list for several inputs).
    np.testing.assert_allclose(balancers.AlignedMTL()(nested).numpy(), [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(balancers.UPGrad()([[1, 0], [0, 1]]).numpy(), [0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "jacobian, error, fragment",
    [
        ([[1.0, 0.0], [0.0]], ValueError, "not a rectangular array"),
        ([["a", "b"], ["c", "d"]], TypeError, "not a number"),
        ([[1.0, None], [0.0, 1.0]], TypeError, "not a number"),
        (None, TypeError, "jacobian=None"),
        (3.0, ValueError, r"shape \(\)"),
        ([1.0, 2.0], ValueError, r"shape \(2,\)"),
        (np.ones((2, 2), dtype=bool), TypeError, "dtype bool"),
    ],
    ids=["ragged", "strings", "none-entry", "none", "scalar", "vector", "booleans"],
)
def test_a_jacobian_that_is_not_a_matrix_of_numbers_is_refused(jacobian, error, fragment):
    for call in (balancers.get("mgda").aggregate, balancers.get("pcgrad").weigh, balancers.get("imtl_g")):
        with pytest.raises(error, match="`jacobian`") as info:
            call(jacobian)
        assert fragment in str(info.value) or fragment.replace("\\", "") in str(info.value)


def test_checked_inputs_still_work_in_a_graph():
    balancer = balancers.get("relobralo", rho=1.0)
    step = tf.function(lambda a, b: balancer([a, b]))
    for values in ([2.0, 1.0], [1.0, 1.0]):
        weights = step(tf.constant(values[0]), tf.constant(values[1]))
    assert int(balancer.step.numpy()) == 2 and bool(weights[1] > weights[0])


# -- hyper-parameters that are not numbers -----------------------------------------------------


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda v: balancers.ReLoBRaLo(alpha=v), "alpha"),
        (lambda v: balancers.ReLoBRaLo(temperature=v), "temperature"),
        (lambda v: balancers.DWA(temperature=v), "temperature"),
        (lambda v: balancers.SoftAdapt(beta=v), "beta"),
        (lambda v: balancers.CAGrad(c=v), "c"),
        (lambda v: balancers.AlignedMTL(rtol=v), "rtol"),
        (lambda v: balancers.GradNorm(learning_rate=v), "learning_rate"),
        (lambda v: balancers.InitialLoss(epsilon=v), "epsilon"),
    ],
)
@pytest.mark.parametrize("value", ["0.9", True, np.bool_(True), [0.9]], ids=["str", "bool", "np-bool", "list"])
def test_numeric_arguments_refuse_strings_and_booleans(build, name, value):
    with pytest.raises(TypeError, match=f"`{name}`") as info:
        build(value)
    assert repr(value) in str(info.value)


def test_check_range_names_the_argument_and_the_type():
    with pytest.raises(TypeError, match=r"Argument `alpha` must be a number.*received alpha='0\.9' \(of type str\)"):
        arguments.check_range("alpha", "0.9", 0.0, 1.0)
    with pytest.raises(TypeError, match=r"received temperature=None"):
        arguments.check_positive("temperature", None)


@pytest.mark.parametrize("value", [1, np.float32(0.5), np.float64(0.5), np.int64(1), np.float16(0.5)])
def test_numeric_arguments_accept_ints_floats_and_numpy_numbers(value):
    balancer = balancers.ReLoBRaLo(alpha=value, rho=value)
    assert type(balancer.alpha) is float and balancer.alpha == float(value)
    assert arguments.check_positive("temperature", value) == float(value)


# -- negative losses ---------------------------------------------------------------------------

#: Methods (and options) whose formula needs non-negative losses: a negative loss is skipped like a
#: non-finite one.
NEEDS_NON_NEGATIVE = [
    ("relobralo", {}),
    ("dwa", {"per": "step"}),
    ("dwa", {}),
    ("softadapt", {"variant": "loss_weighted"}),
    ("generalized_mean", {}),
    ("generalized_mean", {"gamma": 2.5}),
    ("uncertainty", {}),
    ("famo", {}),
    ("stch", {"normalization": "log_nadir", "warmup_epochs": 1}),
    ("imtl_l", {}),
]


@pytest.mark.parametrize("name, options", NEEDS_NON_NEGATIVE)
def test_a_negative_loss_is_skipped_where_the_method_needs_non_negative_losses(name, options):
    balancer = make(name, 3, **options)
    assert balancer.needs_non_negative_losses
    for losses in ([1.0, 2.0, 0.5], [0.8, 1.0, 0.6], [0.5, 0.9, 0.7]):
        balancer(losses)
    before, previous = state_of(balancer), balancer.term_weights.numpy()
    returned = balancer([0.4, -0.5, 0.6]).numpy()
    np.testing.assert_array_equal(returned, previous)
    assert_same_state(state_of(balancer), before)


@pytest.mark.parametrize("name, options", NEEDS_NON_NEGATIVE)
def test_a_negative_loss_fails_the_step_under_raise(name, options):
    balancer = make(name, 3, nan_policy="raise", **options)
    balancer([1.0, 2.0, 0.5])
    before = state_of(balancer)
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs non-negative losses"):
        balancer([0.4, -0.5, 0.6])
    assert_same_state(state_of(balancer), before)


def test_relobralo_no_longer_weights_negative_losses():
    # The reported case: negative terms gave weights such as [2.0, 6e-7].
    balancer = balancers.ReLoBRaLo(rho=1.0, seed=0)
    balancer([1.0, 1.0])
    weights = balancer([1.0, 0.5]).numpy()
    np.testing.assert_array_equal(balancer([-1.0, 2.0]).numpy(), weights)
    np.testing.assert_array_equal(balancer([-2.0, 3.0]).numpy(), weights)
    assert int(balancer.step.numpy()) == 2


def test_gradnorm_skips_negative_losses():
    balancer = balancers.GradNorm(optimizer="sgd")
    jacobian = np.array([[3.0, 0.0], [0.0, 1.0]])
    balancer.aggregate(jacobian, [1.0, 1.0])
    before, previous = state_of(balancer), balancer.term_weights.numpy()
    direction = balancer.aggregate(jacobian, [-1.0, 0.5]).numpy()
    np.testing.assert_array_equal(direction, [0.0, 0.0])
    np.testing.assert_array_equal(balancer.term_weights.numpy(), previous)
    assert_same_state(state_of(balancer), before)
    assert np.all(np.isfinite(balancer.task_weights.numpy()))


def test_generalized_mean_total_leaves_a_negative_term_out():
    balancer = balancers.GeneralizedMean(gamma=0.0)
    losses = tf.Variable([4.0, -1.0, 1.0])
    with tf.GradientTape() as tape:
        total, _ = balancer.combine(losses)
    np.testing.assert_allclose(float(total), 2.0, rtol=1e-6)  # sqrt(4 * 1)
    gradient = tape.gradient(total, losses).numpy()
    assert gradient[1] == 0.0 and np.all(np.isfinite(gradient))
    evaluated, _ = balancer.evaluate([4.0, -1.0, 1.0])
    np.testing.assert_allclose(float(evaluated), 2.0, rtol=1e-6)


@pytest.mark.parametrize("gamma, expected", [(float("inf"), -1.0), (-float("inf"), -3.0)])
def test_generalized_mean_max_and_min_take_negative_terms(gamma, expected):
    balancer = balancers.GeneralizedMean(gamma=gamma)
    assert not balancer.needs_non_negative_losses
    total, weights = balancer.combine([-1.0, -3.0])
    assert float(total) == expected
    assert weights.numpy().tolist() == ([1.0, 0.0] if gamma > 0 else [0.0, 1.0])


def test_uncertainty_total_on_a_negative_step_trains_no_noise_parameter():
    balancer = balancers.UncertaintyWeighting()
    losses = tf.constant([1.0, -2.0])
    with tf.GradientTape() as tape:
        total, weights = balancer.combine(losses)
    gradient = tape.gradient(total, balancer.log_variance)
    assert gradient is None or not np.any(gradient.numpy())
    np.testing.assert_allclose(float(total), 0.5 * 1.0 + 0.5 * -2.0, rtol=1e-6)


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_every_loss_level_method_has_a_negative_loss_policy(name):
    """A negative loss is either skipped (the method needs non-negative losses) or weighted
    finitely and non-negatively (magnitudes, differences, or values the weights ignore)."""
    balancer = make(name, 3)
    balancer([1.0, 2.0, 0.5])
    before, previous = state_of(balancer), balancer.term_weights.numpy()
    weights = balancer([0.5, -1.5, 0.25]).numpy()
    if balancer.needs_non_negative_losses:
        np.testing.assert_array_equal(weights, previous)
        assert_same_state(state_of(balancer), before)
    else:
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0.0), (name, weights)


@pytest.mark.parametrize("name", ["initial_loss", "real_time"])
def test_scaling_methods_weight_negative_losses_by_their_magnitude(name):
    np.testing.assert_allclose(make(name, 2)([-2.0, 0.5]).numpy(), [0.5, 2.0], rtol=1e-6)


def test_softadapt_original_takes_negative_losses():
    balancer = balancers.SoftAdapt(beta=1.0)
    assert not balancer.needs_non_negative_losses
    balancer([-1.0, 1.0])
    weights = balancer([-2.0, 1.0]).numpy()  # term 0 fell by 1, term 1 stayed
    assert weights[1] > weights[0] and int(balancer.history_count.numpy()) == 2


# -- found by the fuzz suite (test_fuzz.py) ---------------------------------------------------


def test_pcgrad_weights_stay_finite_for_rows_far_apart():
    # Projecting g_0 off a conflicting row 1e30 times shorter takes a coefficient of about 5e59,
    # beyond float32: it overflowed to inf, and J^T w gave inf * 0 = NaN.
    jacobian = np.array([[1e30, 0.0], [-1e-30, 1e-30]], "float32")
    direction = balancers.PCGrad(seed=0).aggregate(jacobian).numpy()
    assert not np.any(np.isnan(direction)), direction
    balancer = balancers.PCGrad(seed=0)
    weights = balancer.weigh(jacobian).numpy()
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(balancer.term_weights.numpy())), weights


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradnorm_weights_stay_finite_when_a_loss_grows_from_a_tiny_initial_value(optimizer):
    # L(t) / L(0) = 1e30 / 1e-30 overflowed float32; the rates became inf / inf = NaN.
    balancer = balancers.GradNorm(optimizer=optimizer)
    jacobian = np.array([[1e30, 0.0], [0.0, 1.0]], "float32")
    for losses in ([1e-30, 1.0], [1e30, 1.0], [1e30, 0.5]):
        balancer.aggregate(jacobian, losses)
        assert np.all(np.isfinite(balancer.task_weights.numpy())), balancer.task_weights.numpy()
        assert np.all(np.isfinite(balancer.term_weights.numpy()))
    assert abs(balancer.task_weights.numpy().sum() - 2.0) < 1e-5


# -- Aligned-MTL's rank tolerance --------------------------------------------------------------


@pytest.mark.parametrize("jacobian", [[[1e4, 0.0], [0.0, 1.0]], np.diag([1e4, 1.0]), np.diag([1e6, 1.0])])
def test_aligned_mtl_keeps_a_small_but_real_direction(jacobian):
    balancer = balancers.AlignedMTL()
    np.testing.assert_allclose(balancer.aggregate(jacobian).numpy(), [0.5, 0.5], rtol=1e-5)
    large = np.asarray(jacobian, "float64")[0, 0]
    np.testing.assert_allclose(balancer.term_weights.numpy(), [0.5 / large, 0.5], rtol=1e-5)


def test_aligned_mtl_authors_tolerance_is_an_option():
    balancer = balancers.AlignedMTL(rtol=2 * 1.1920929e-7)
    np.testing.assert_allclose(balancer.aggregate(np.diag([1e4, 1.0])).numpy(), [5000.0, 0.0], rtol=1e-6)


def test_aligned_mtl_still_finds_the_rank_of_rank_deficient_jacobians():
    """Zero eigenvalues of the float64 Gramian come out at rounding level (up to a few times
    K * eps * lambda_max); none may count as a direction, which would shrink every aligned
    component to its size. Reference: the SVD of J with its true rank."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        k = int(rng.integers(2, 7))
        rank = int(rng.integers(1, k))
        jacobian = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, int(rng.integers(rank, 9))))
        jacobian *= np.exp(2.0 * rng.normal(size=(k, 1)))
        if trial % 3 == 0:
            jacobian[-1] = jacobian[0]  # a duplicate row
        jacobian = jacobian.astype("float32" if trial % 2 else "float64")
        weights = balancers.AlignedMTL().weigh(jacobian).numpy().astype("float64")
        u, s, _ = np.linalg.svd(jacobian.astype("float64"), full_matrices=False)
        r = int(np.sum(s > 1e-6 * s[0]))
        expected = s[r - 1] * u[:, :r] @ ((u[:, :r].T @ np.full(k, 1.0 / k)) / s[:r])
        tolerance = 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=tolerance, err_msg=f"trial {trial}")


# -- seeds of unseeded balancers ---------------------------------------------------------------

SEED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras, numpy as np
    from keras_balance import balancers

    unseeded = balancers.RLW()
    unseeded([1.0, 2.0])
    keras.utils.set_random_seed(0)
    out = {"before_global_seed": int(unseeded.draw_seed.numpy())}
    for name in ("relobralo", "rlw", "pcgrad"):
        first, second = balancers.get(name), balancers.get(name)
        weights = []
        for step in range(6):
            losses = [1.0 + step, 2.0, 0.5 * step + 0.1]
            for balancer in (first, second):
                if balancer.kind == "loss":
                    result = balancer(losses)
                else:
                    result = balancer.weigh(np.array([[1.0, -1.0, 0.0], [-1.0, 0.5, 1.0], [0.2, -1.0, 1.0]]))
                weights.append(result.numpy().tolist())
        seed = {"relobralo": "lookback_seed", "rlw": "draw_seed", "pcgrad": "order_seed"}[name]
        out[name] = {"seeds": [int(getattr(b, seed).numpy()) for b in (first, second)], "weights": weights}
    print(json.dumps(out))
    """
)


def test_unseeded_balancers_follow_the_global_seed_across_processes(tmp_path):
    script = tmp_path / "seeded.py"
    script.write_text(SEED_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outputs = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    first, second = outputs
    for name in ("relobralo", "rlw", "pcgrad"):
        assert first[name] == second[name], name
        # Two balancers built one after the other in a process get different seeds.
        assert first[name]["seeds"][0] != first[name]["seeds"][1], name
    # Without a global seed, each process draws its own.
    assert first["before_global_seed"] != second["before_global_seed"]


def test_two_unseeded_balancers_in_one_process_draw_different_seeds():
    keras.utils.set_random_seed(123)
    seeds = [int(balancers.get("rlw", num_terms=2).draw_seed.numpy()) for _ in range(5)]
    assert len(set(seeds)) == 5
    keras.utils.set_random_seed(123)
    assert [int(balancers.get("rlw", num_terms=2).draw_seed.numpy()) for _ in range(5)] == seeds


@pytest.mark.parametrize("seed", [0, 7, 2**40])
def test_an_explicit_seed_draws_as_before(seed):
    """Seeded balancers are untouched by the global seed: the draws are the stateless functions
    of (seed, step) they always were."""
    keras.utils.set_random_seed(99)
    balancer = balancers.RLW(seed=seed)
    for step in range(3):
        logits = tf.random.stateless_normal((3,), seed=tf.constant([seed, step], "int64"))
        np.testing.assert_array_equal(balancer([1.0, 2.0, 3.0]).numpy(), (3.0 * tf.nn.softmax(logits)).numpy())
    assert int(balancer.draw_seed.numpy()) == seed
    relobralo = balancers.ReLoBRaLo(seed=seed, num_terms=2)
    pcgrad = balancers.PCGrad(seed=seed, num_terms=2)
    assert int(relobralo.lookback_seed.numpy()) == seed and int(pcgrad.order_seed.numpy()) == seed


# -- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relobralo", "initial_loss", "upgrad", "dwa"])
def test_calls_from_several_threads_each_take_one_whole_step(name):
    balancer = make(name, 3, **({"per": "step"} if name == "dwa" else {}))
    calls, threads = 25, 4
    jacobian = np.array([[1.0, -1.0, 0.0], [-1.0, 0.5, 1.0], [0.2, -1.0, 1.0]])
    start = threading.Barrier(threads)
    errors = []

    def work():
        start.wait()
        try:
            for _ in range(calls):
                if balancer.kind == "loss":
                    balancer([1.0, 2.0, 0.5])
                else:
                    balancer.aggregate(jacobian)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    assert int(balancer.step.numpy()) == calls * threads
    assert np.all(np.isfinite(balancer.term_weights.numpy()))
