"""Tests of `keras_balance.balancers.pcgrad.PCGrad` against an independent reference.

The reference below works on the rows of J themselves (not on the Gramian),
in float64 with plain loops, following Algorithm 1 of Yu et al. (2020):

    for each i: g_i^PC = g_i; for j != i in the visiting order of i:
        if g_i^PC . g_j < 0: g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j
    d = sum_i g_i^PC   (or the mean)
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused

from keras_balance.balancers import PCGrad

RTOL = 1e-5
ATOL = 1e-6

# Three pairwise-conflicting rows for which every visiting order gives a
# different projected gradient (checked in `test_every_order_matters_here`).
CONFLICTING3 = np.array([[1.0, 0.0, 0.2], [-0.6, 1.0, 0.1], [-0.5, -0.9, 0.3]])


# -- independent reference ------------------------------------------------------


def ref_projected_row(jacobian, i, order):
    g = np.array(jacobian[i], dtype=np.float64)
    for j in order:
        if j == i:
            continue
        other = np.asarray(jacobian[j], dtype=np.float64)
        squared = float(other @ other)
        dot = float(g @ other)
        if dot < 0.0 and squared > 0.0:
            g = g - dot / squared * other
    return g


def ref_pcgrad(jacobian, orders, reduction="sum"):
    rows = [ref_projected_row(jacobian, i, orders[i]) for i in range(len(jacobian))]
    total = np.sum(rows, axis=0)
    return total / len(jacobian) if reduction == "mean" else total


def ref_two_rows(g1, g2):
    """The order-free closed form for K = 2."""
    dot = g1 @ g2
    if dot >= 0:
        return g1 + g2
    return g1 + g2 - dot / (g2 @ g2) * g2 - dot / (g1 @ g1) * g1


def all_outcomes(jacobian, reduction="sum"):
    """The direction for every combination of visiting orders."""
    k = len(jacobian)
    per_row = [list(itertools.permutations([j for j in range(k) if j != i])) for i in range(k)]
    return [ref_pcgrad(jacobian, combo, reduction) for combo in itertools.product(*per_row)]


def matches_one_of(direction, outcomes, rtol=RTOL, atol=ATOL):
    return any(np.allclose(direction, o, rtol=rtol, atol=atol) for o in outcomes)


def random_rows(k, p, seed):
    return np.random.default_rng(seed).normal(size=(k, p))


# -- closed forms and hand values -------------------------------------------------


def test_hand_example():
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1, ||g1||^2 = 1, ||g2||^2 = 2.
    # g1^PC = g1 + g2 / 2 = (0.5, 0.5);  g2^PC = g2 + g1 = (0, 1);  sum (0.5, 1.5).
    jacobian = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(PCGrad().aggregate(jacobian).numpy(), [0.5, 1.5], rtol=1e-12)
    np.testing.assert_allclose(PCGrad(reduction="mean").aggregate(jacobian).numpy(), [0.25, 0.75], rtol=1e-12)
    # Weights: column sums of C = [[1, 1/2], [1, 1]].
    np.testing.assert_allclose(PCGrad().weigh(jacobian).numpy(), [2.0, 1.5], rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_two_rows_closed_form(reduction):
    balancer = PCGrad(reduction=reduction, seed=0)
    rng = np.random.default_rng(1)
    conflicts = 0
    for _ in range(20):
        g1, g2 = rng.normal(size=(2, 7))
        conflicts += g1 @ g2 < 0
        expected = ref_two_rows(g1, g2) / (2 if reduction == "mean" else 1)
        got = balancer.aggregate(np.stack([g1, g2])).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert 0 < conflicts < 20  # both branches were exercised


def test_two_rows_do_not_conflict_after_projection():
    # For K = 2 the result is non-conflicting: J d >= 0.
    rng = np.random.default_rng(2)
    for _ in range(20):
        jacobian = rng.normal(size=(2, 5))
        direction = PCGrad().aggregate(jacobian).numpy()
        assert np.all(jacobian @ direction >= -1e-12)


def test_matches_reference_with_the_drawn_orders():
    balancer = PCGrad(seed=3)
    for step in range(6):
        jacobian = random_rows(4, 6, seed=step)
        orders = balancer.orders(4).numpy()  # the orders this step will use
        for row in orders:
            assert sorted(row.tolist()) == [0, 1, 2, 3]
        direction = balancer.aggregate(jacobian).numpy()
        np.testing.assert_allclose(direction, ref_pcgrad(jacobian, orders), rtol=1e-10, atol=1e-12)
        assert int(balancer.step.numpy()) == step + 1


def test_no_conflict_gives_the_plain_sum():
    jacobian = np.abs(random_rows(4, 5, seed=4))  # every dot product >= 0
    np.testing.assert_allclose(PCGrad().aggregate(jacobian).numpy(), jacobian.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("reduction, factor", [("sum", 4.0), ("mean", 1.0)])
def test_identical_rows(reduction, factor):
    g = np.array([0.5, -2.0, 1.0])
    direction = PCGrad(reduction=reduction).aggregate(np.tile(g, (4, 1))).numpy()
    np.testing.assert_allclose(direction, factor * g, rtol=1e-12)


# -- randomness ---------------------------------------------------------------------


def test_every_order_matters_here():
    outcomes = all_outcomes(CONFLICTING3)
    assert len(outcomes) == 8
    for a, b in itertools.combinations(outcomes, 2):
        assert not np.allclose(a, b, atol=1e-6)


def run_steps(balancer, jacobian, steps, fn=None):
    fn = fn or (lambda j: balancer.aggregate(j))
    return np.array([fn(tf.constant(jacobian)).numpy() for _ in range(steps)])


def outcome_index(direction, outcomes):
    distances = [np.max(np.abs(direction - o)) for o in outcomes]
    assert min(distances) < 1e-9
    return int(np.argmin(distances))


def test_orders_are_random_and_seeded():
    outcomes = all_outcomes(CONFLICTING3)
    first = run_steps(PCGrad(seed=7), CONFLICTING3, 40)
    seen = {outcome_index(d, outcomes) for d in first}
    assert len(seen) >= 5  # 8 equally likely outcomes: several occur in 40 steps
    again = run_steps(PCGrad(seed=7), CONFLICTING3, 40)
    np.testing.assert_array_equal(again, first)
    other = run_steps(PCGrad(seed=8), CONFLICTING3, 40)
    assert not np.array_equal(other, first)
    # Without a seed, each balancer draws its own.
    unseeded = [run_steps(PCGrad(), CONFLICTING3, 40) for _ in range(2)]
    assert not np.array_equal(unseeded[0], unseeded[1])


def test_orders_change_with_the_step_not_with_the_call():
    balancer = PCGrad(seed=11, num_terms=5)
    draws = []
    for _ in range(10):
        draws.append(balancer.orders(5).numpy())
        assert np.array_equal(balancer.orders(5).numpy(), draws[-1])  # same step, same orders
        balancer.aggregate(random_rows(5, 3, seed=0))
    assert len({d.tobytes() for d in draws}) == 10


def test_tf_function_follows_the_eager_sequence():
    eager = run_steps(PCGrad(seed=5), CONFLICTING3, 12)
    balancer = PCGrad(seed=5)
    fn = tf.function(lambda j: balancer.aggregate(j))
    np.testing.assert_allclose(run_steps(balancer, CONFLICTING3, 12, fn), eager, rtol=1e-12)


def test_xla_draws_valid_orders():
    outcomes = all_outcomes(CONFLICTING3)
    balancer = PCGrad(seed=5)
    fn = tf.function(lambda j: balancer.aggregate(j), jit_compile=True)
    compiled = run_steps(balancer, CONFLICTING3, 20, fn)
    assert len({outcome_index(d, outcomes) for d in compiled}) >= 3
    again = PCGrad(seed=5)
    fn_again = tf.function(lambda j: again.aggregate(j), jit_compile=True)
    np.testing.assert_array_equal(run_steps(again, CONFLICTING3, 20, fn_again), compiled)


def test_permuting_rows_permutes_the_possible_outcomes():
    # A single draw is not permutation invariant, but the set of possible
    # directions (and so their distribution) is: every direction drawn for the
    # permuted rows is one of the original rows' outcomes.
    outcomes = all_outcomes(CONFLICTING3)
    permuted = CONFLICTING3[[2, 0, 1]]
    directions = run_steps(PCGrad(seed=1), permuted, 30)
    assert len({outcome_index(d, outcomes) for d in directions}) >= 4
    # K = 2 is deterministic, hence exactly invariant.
    pair = random_rows(2, 4, seed=9)
    np.testing.assert_allclose(
        PCGrad().aggregate(pair[::-1]).numpy(), PCGrad().aggregate(pair).numpy(), rtol=1e-12
    )


# -- robustness -----------------------------------------------------------------------


def test_scale_equivariance():
    for scale in (1e-10, 1e10):
        a = PCGrad(seed=2).aggregate(scale * CONFLICTING3).numpy()
        b = PCGrad(seed=2).aggregate(CONFLICTING3).numpy()
        np.testing.assert_allclose(a, scale * b, rtol=1e-10)


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [({"reduction": "max"}, "reduction"), ({"reduction": None}, "reduction")],
)
def test_bad_arguments(kwargs, name):
    assert_refused(PCGrad, kwargs, name)


@pytest.mark.parametrize("seed", [1.5, "3", True])
def test_bad_seed(seed):
    with pytest.raises(TypeError, match="seed"):
        PCGrad(seed=seed)
