"""Tests of the scaling balancers: InitialLoss, PriorLoss, RealTime, RLW, and `prior_loss`.

The references below are written from the formulas (METHODS.md, section A),
in float64 with plain loops, and do not use the package:

    InitialLoss:  w_i(t) = 1 / (m_i(t) + eps),  m_i(t) = mean of L_i(0..min(t, n - 1))
    PriorLoss:    w_i    = 1 / (prior_i + eps)
    RealTime:     w_i(t) = 1 / (L_i(t) + eps)
    RLW:          w(t)   = K * softmax(z(t)),  z(t) = stateless_normal(seed, t)
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_refused, random_sequence

from keras_balance.balancers import RLW, InitialLoss, PriorLoss, RealTime, prior_loss

# float32 package versus float64 reference.
RTOL = 1e-5
ATOL = 1e-7
EPS = 1e-12
PRIORS = [0.5, 2.0, 4.0]


# -- independent references ---------------------------------------------------------


def ref_initial_loss(sequence, n_initial, epsilon=EPS):
    out = []
    for t in range(len(sequence)):
        seen = [[float(v) for v in sequence[s]] for s in range(min(t, n_initial - 1) + 1)]
        means = [sum(row[i] for row in seen) / len(seen) for i in range(len(seen[0]))]
        out.append([1.0 / (abs(m) + epsilon) for m in means])
    return np.array(out, dtype=np.float64)


def ref_prior_loss(sequence, priors, epsilon=EPS):
    return np.array([[1.0 / (p + epsilon) for p in priors] for _ in sequence], dtype=np.float64)


def ref_real_time(sequence, epsilon=EPS):
    return np.array([[1.0 / (abs(float(v)) + epsilon) for v in row] for row in sequence], np.float64)


def ref_draws(seed, steps, num_terms):
    """z(t) for t = 0..steps-1, from the same stateless generator the balancer uses."""
    return np.array(
        [
            tf.random.stateless_normal((num_terms,), seed=tf.constant([seed, t], tf.int64)).numpy()
            for t in range(steps)
        ],
        dtype=np.float64,
    )


def ref_rlw(logits):
    out = []
    for z in logits:
        k = len(z)
        top = max(z)
        exps = [math.exp(float(v) - top) for v in z]
        total = sum(exps)
        out.append([k * e / total for e in exps])
    return np.array(out, dtype=np.float64)


# -- helpers -------------------------------------------------------------------------


def run(balancer, sequence, fn=None):
    fn = balancer if fn is None else fn
    return np.array([np.asarray(fn(tf.constant(np.asarray(row, np.float32)))) for row in sequence])


# One maker per class, K = 3; all deterministic given their arguments.
MAKERS = {
    "initial_loss": lambda **kw: InitialLoss(n_initial=3, **kw),
    "prior_loss": lambda **kw: PriorLoss(PRIORS, **kw),
    "real_time": lambda **kw: RealTime(**kw),
    "rlw": lambda **kw: RLW(seed=3, **kw),
}
ALL = pytest.mark.parametrize("method", sorted(MAKERS))


def reference(method, sequence):
    if method == "initial_loss":
        return ref_initial_loss(sequence, 3)
    if method == "prior_loss":
        return ref_prior_loss(sequence, PRIORS)
    if method == "real_time":
        return ref_real_time(sequence)
    return ref_rlw(ref_draws(3, len(sequence), len(sequence[0])))


# -- InitialLoss ---------------------------------------------------------------------


# n_initial = 1, eps negligible:
#   step 0: L(0) = [2, 0.5]  -> w = [1/2, 1/0.5] = [0.5, 2]
#   step 1: frozen            -> [0.5, 2]   (losses [1, 0.25] do not enter)
#   step 2: frozen            -> [0.5, 2]
# n_initial = 3:
#   step 0: mean([2], [0.5])               = [2, 0.5]   -> [0.5, 2]
#   step 1: mean of [2, 4], [0.5, 1.5]     = [3, 1]     -> [1/3, 1] = [0.33333333, 1]
#   step 2: mean of [2, 4, 0], [.5, 1.5, 1] = [2, 1]    -> [0.5, 1]
#   step 3: frozen at [2, 1]                            -> [0.5, 1]
INITIAL_HAND = {
    1: ([[2.0, 0.5], [1.0, 0.25], [0.5, 4.0]], [[0.5, 2.0], [0.5, 2.0], [0.5, 2.0]]),
    3: (
        [[2.0, 0.5], [4.0, 1.5], [0.0, 1.0], [10.0, 10.0]],
        [[0.5, 2.0], [1.0 / 3.0, 1.0], [0.5, 1.0], [0.5, 1.0]],
    ),
}


@pytest.mark.parametrize("n_initial", sorted(INITIAL_HAND))
def test_initial_loss_hand_computed(n_initial):
    sequence, expected = INITIAL_HAND[n_initial]
    balancer = InitialLoss(n_initial=n_initial)
    np.testing.assert_allclose(run(balancer, sequence), expected, rtol=1e-6)
    np.testing.assert_allclose(ref_initial_loss(sequence, n_initial), expected, rtol=1e-9)
    assert int(balancer.step.numpy()) == len(sequence)
    np.testing.assert_allclose(balancer.initial_losses.numpy(), 1.0 / np.array(expected[-1]), rtol=1e-6)


@pytest.mark.parametrize("n_initial", [1, 4, 10])
@pytest.mark.parametrize("num_terms", [2, 3])
def test_initial_loss_matches_reference(n_initial, num_terms):
    sequence = random_sequence(15, num_terms, seed=n_initial)
    weights = run(InitialLoss(n_initial=n_initial), sequence)
    np.testing.assert_allclose(weights, ref_initial_loss(sequence, n_initial), rtol=RTOL)
    # Frozen from step n_initial on.
    np.testing.assert_array_equal(weights[n_initial:], np.repeat(weights[n_initial - 1 : n_initial], 15 - n_initial, 0))


@pytest.mark.parametrize("n_initial", [1, 5])
@pytest.mark.parametrize("factor", [1e6, 1e-6])
def test_initial_loss_scale_invariance(n_initial, factor):
    # Multiplying term 1 by c divides its weight by c and leaves the weighted
    # terms w_i * L_i (and every other weight) unchanged.
    sequence = random_sequence(10, 3, seed=3)
    scaled = sequence.copy()
    scaled[:, 1] *= factor
    base = run(InitialLoss(n_initial=n_initial), sequence)
    other = run(InitialLoss(n_initial=n_initial), scaled)
    np.testing.assert_allclose(other * scaled, base * sequence, rtol=1e-5)
    np.testing.assert_allclose(other[:, [0, 2]], base[:, [0, 2]], rtol=1e-6)
    np.testing.assert_allclose(other[:, 1] * factor, base[:, 1], rtol=1e-5)


def test_initial_loss_scale_invariant_gradient():
    x = tf.Variable([0.7, 1.3])

    def gradient(scale):
        balancer = InitialLoss(n_initial=2)
        for shift in (0.0, 0.5, 1.0):  # two warm-up steps, then frozen
            with tf.GradientTape() as tape:
                losses = tf.stack([tf.reduce_sum(x**2) + shift, scale * tf.reduce_sum((x - 2.0) ** 2)])
                total, _ = balancer.combine(losses)
            grad = tape.gradient(total, x).numpy()
        return grad

    np.testing.assert_allclose(gradient(1e6), gradient(1.0), rtol=1e-5)


def test_initial_loss_negative_initial_value_gets_positive_weight():
    np.testing.assert_allclose(InitialLoss()([-2.0, 0.5]).numpy(), [0.5, 2.0], rtol=1e-6)


def test_initial_loss_nan_during_warm_up_is_not_counted():
    # n_initial = 2: steps 0 and 2 (finite) make the mean; the NaN step is skipped.
    balancer = InitialLoss(n_initial=2)
    np.testing.assert_allclose(balancer([2.0, 1.0]).numpy(), [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(balancer([float("nan"), 3.0]).numpy(), [0.5, 1.0], rtol=1e-6)
    assert int(balancer.step.numpy()) == 1
    # mean of [2, 6] and [1, 3] = [4, 2] -> [0.25, 0.5]
    np.testing.assert_allclose(balancer([6.0, 3.0]).numpy(), [0.25, 0.5], rtol=1e-6)
    np.testing.assert_allclose(balancer([100.0, 100.0]).numpy(), [0.25, 0.5], rtol=1e-6)


@pytest.mark.parametrize("value", [0, -1, 0.0])
def test_initial_loss_bad_n_initial_value(value):
    error = ValueError if isinstance(value, int) else TypeError
    with pytest.raises(error, match="n_initial") as info:
        InitialLoss(n_initial=value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [2.5, "3", True, None])
def test_initial_loss_non_integer_n_initial(value):
    with pytest.raises(TypeError, match="n_initial"):
        InitialLoss(n_initial=value)


def test_initial_loss_numpy_integer_n_initial():
    assert InitialLoss(n_initial=np.int64(4)).get_config()["n_initial"] == 4


# -- PriorLoss -----------------------------------------------------------------------


# priors [0.5, 2, 4] -> w = [1/0.5, 1/2, 1/4] = [2, 0.5, 0.25] at every step,
# whatever the losses (eps = 1e-12 is negligible at rtol 1e-6).
def test_prior_loss_hand_computed():
    balancer = PriorLoss([0.5, 2.0, 4.0])
    sequence = [[1.0, 1.0, 1.0], [0.1, 5.0, 3.0], [7.0, 0.0, 0.2]]
    expected = [[2.0, 0.5, 0.25]] * 3
    np.testing.assert_allclose(run(balancer, sequence), expected, rtol=1e-6)
    np.testing.assert_allclose(ref_prior_loss(sequence, PRIORS), expected, rtol=1e-9)


def test_prior_loss_matches_reference():
    priors = [1e-3, 0.7, 42.0, 3e4]
    sequence = random_sequence(12, 4, seed=1)
    np.testing.assert_allclose(run(PriorLoss(priors), sequence), ref_prior_loss(sequence, priors), rtol=RTOL)


def test_prior_loss_fixes_num_terms_and_initial_weights():
    balancer = PriorLoss([0.5, 2.0], num_terms=2)
    assert balancer.built and balancer.num_terms == 2
    np.testing.assert_allclose(balancer.term_weights.numpy(), [2.0, 0.5], rtol=1e-6)
    total, weights = balancer.evaluate([1.0, 4.0])  # 2 * 1 + 0.5 * 4 = 4
    np.testing.assert_allclose(total.numpy(), 4.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"built for 2 loss terms.*\b3\b"):
        balancer([1.0, 2.0, 3.0])


def test_prior_loss_num_terms_disagrees():
    with pytest.raises(ValueError, match=r"num_terms.*\b3\b.*\b2\b.*prior_losses"):
        PriorLoss([1.0, 2.0], num_terms=3)


@pytest.mark.parametrize(
    "priors",
    [[0.0, 1.0], [-1.0, 1.0], [float("nan"), 1.0], [float("inf"), 1.0], [], [[1.0, 2.0]], 2.0],
    ids=["zero", "negative", "nan", "inf", "empty", "2-D", "scalar"],
)
def test_prior_loss_bad_priors(priors):
    with pytest.raises(ValueError, match="prior_losses"):
        PriorLoss(priors)


def test_prior_loss_non_numeric_priors():
    with pytest.raises(TypeError, match="prior_losses"):
        PriorLoss(["a", "b"])


def test_prior_loss_from_labels_end_to_end():
    classes = np.array([0, 0, 0, 1])  # entropy 0.56233514 (see below)
    targets = np.array([[1.0], [3.0]])  # variance 1
    balancer = PriorLoss([prior_loss(classes, "cross_entropy"), prior_loss(targets, "squared_error")])
    np.testing.assert_allclose(balancer([0.3, 0.3]).numpy(), [1 / 0.56233514, 1.0], rtol=1e-6)


# -- prior_loss ----------------------------------------------------------------------

LN2 = 0.6931471805599453
# -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.75 * 0.28768207 + 0.25 * 1.38629436
#                                = 0.21576155 + 0.34657359 = 0.56233514
H_3_1 = 0.5623351446188083


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([0, 0, 1, 1], LN2),
        ([0, 0, 0, 1], H_3_1),
        ([2, 2, 2], 0.0),  # one class: no uncertainty
        ([0, 5, 5, 0], LN2),  # classes 1..4 never occur and contribute 0
        ([[0], [1], [1], [1]], H_3_1),  # an (N, 1) column of ids
        ([[0, 1], [1, 1]], H_3_1),  # ids of any shape
        ([True, False, False, False], H_3_1),  # booleans are ids 0 and 1
        # [1/3, 1/3, 1/3]: -3 * (1/3) ln(1/3) = ln 3
        ([0, 1, 2], math.log(3.0)),
    ],
)
def test_prior_cross_entropy_class_ids(labels, expected):
    assert prior_loss(labels, "cross_entropy") == pytest.approx(expected, rel=1e-12)
    assert prior_loss(np.asarray(labels), "cross_entropy") == pytest.approx(expected, rel=1e-12)
    assert prior_loss(tf.constant(labels), "cross_entropy") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], H_3_1),  # one-hot, p = [.75, .25]
        ([[0.5, 0.5], [1.0, 0.0]], H_3_1),  # mean row [0.75, 0.25]
        ([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], LN2),  # p = [0, .5, .5]
        ([[[1.0, 0.0]], [[0.0, 1.0]]], LN2),  # rows on the last axis of a 3-D array
    ],
)
def test_prior_cross_entropy_rows(labels, expected):
    assert prior_loss(labels, "cross_entropy") == pytest.approx(expected, rel=1e-12)
    assert prior_loss(np.asarray(labels, np.float32), "cross_entropy") == pytest.approx(expected, rel=1e-6)


def test_prior_cross_entropy_explicit_format():
    # Integer one-hot rows need one_hot=True; float ids need one_hot=False.
    assert prior_loss([[1, 0, 0], [0, 0, 1]], "cross_entropy", one_hot=True) == pytest.approx(LN2)
    assert prior_loss([0.0, 1.0, 1.0, 1.0], "cross_entropy", one_hot=False) == pytest.approx(H_3_1)
    assert prior_loss([[1.0, 0.0]], "cross_entropy", one_hot=True) == 0.0


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        ([0.0, 1.0, 1.0], {}, "one_hot=False"),  # 1-D floats are ambiguous
        ([[1.0, 1.0], [0.0, 1.0]], {}, "sum to 1"),  # not probability rows
        ([[-0.5, 1.5]], {}, "non-negative"),
        ([0.5, 1.0], {"one_hot": False}, "whole numbers"),
        ([0, -1, 2], {}, "non-negative"),
        ([[0.5, float("nan")]], {}, "NaN"),
        ([0.0, float("inf")], {"one_hot": False}, "NaN or infinite"),
        ([0, 1], {"one_hot": "yes"}, "one_hot"),
    ],
)
def test_prior_cross_entropy_bad_labels(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prior_loss(labels, "cross_entropy", **kwargs)


@pytest.mark.parametrize(
    "targets, expected",
    [
        # mean 2; ((1 - 2)^2 + (3 - 2)^2) / 2 = 1
        ([[1.0], [3.0]], 1.0),
        ([1.0, 3.0], 1.0),  # (N,): one scalar per sample
        ([1, 3], 1.0),  # integers are read as numbers
        # means [1, 2]; per-dimension variances [(1 + 1)/2, (4 + 4)/2] = [1, 4]; sum 5
        ([[0.0, 0.0], [2.0, 4.0]], 5.0),
        # means [2, 0]; variances [(1 + 0 + 1)/3, (1 + 0 + 1)/3] = [2/3, 2/3]; sum 4/3
        ([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0]], 4.0 / 3.0),
        # (N, 2, 1): trailing dims flattened into the sum; means [1, 2]; variances [1, 4]
        ([[[0.0], [0.0]], [[2.0], [4.0]]], 5.0),
        ([[5.0, 5.0]] * 4, 0.0),  # constant targets
        (7.0, 0.0),  # a single sample
    ],
)
def test_prior_squared_error(targets, expected):
    assert prior_loss(targets, "squared_error") == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert prior_loss(tf.constant(targets), "squared_error") == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_prior_squared_error_matches_numpy_and_scales_quadratically():
    targets = np.random.default_rng(0).normal(3.0, [1.0, 2.0, 0.5], size=(50, 3))
    expected = float(np.sum(np.var(targets, axis=0)))  # population variance (ddof=0)
    assert prior_loss(targets, "squared_error") == pytest.approx(expected, rel=1e-12)
    assert prior_loss(10.0 * targets, "squared_error") == pytest.approx(100.0 * expected, rel=1e-12)
    assert prior_loss(targets + 1e3, "squared_error") == pytest.approx(expected, rel=1e-9)


def test_prior_unknown_kind():
    with pytest.raises(ValueError, match=r"`kind`.*'hinge'"):
        prior_loss([0, 1], "hinge")


@pytest.mark.parametrize("kind", ["cross_entropy", "squared_error"])
@pytest.mark.parametrize(
    "labels",
    [[], np.zeros((0, 3)), tf.zeros((0,), tf.int32), tf.data.Dataset.from_tensor_slices(np.zeros((0, 2))).batch(2)],
    ids=["list", "array", "tensor", "dataset"],
)
def test_prior_empty_labels(kind, labels):
    with pytest.raises(ValueError, match="empty"):
        prior_loss(labels, kind)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_prior_squared_error_non_finite(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        prior_loss([[1.0], [bad]], "squared_error")


def test_prior_non_numeric_labels():
    with pytest.raises(ValueError, match="numbers"):
        prior_loss(["cat", "dog"], "cross_entropy")
    with pytest.raises(TypeError, match="labels"):
        prior_loss(object(), "squared_error")


@pytest.mark.parametrize(
    "labels, kind",
    [
        (np.random.default_rng(0).integers(0, 4, size=23), "cross_entropy"),
        (np.random.default_rng(1).integers(0, 3, size=(23, 1)), "cross_entropy"),
        (np.eye(4, dtype=np.float32)[np.random.default_rng(2).integers(0, 4, size=23)], "cross_entropy"),
        (np.random.default_rng(3).dirichlet([1.0, 2.0, 3.0], size=23), "cross_entropy"),
        (np.random.default_rng(4).normal(2.0, 3.0, size=23), "squared_error"),
        (np.random.default_rng(5).normal(-1.0, [1.0, 4.0], size=(23, 2)), "squared_error"),
        (np.random.default_rng(6).normal(0.0, 1.0, size=(23, 2, 3)), "squared_error"),
    ],
    ids=["ids", "id-column", "one-hot", "probabilities", "scalar-targets", "2-D-targets", "3-D-targets"],
)
def test_prior_batched_equals_array(labels, kind):
    expected = prior_loss(labels, kind)
    assert expected > 0
    dataset = tf.data.Dataset.from_tensor_slices(labels).batch(5)  # batches 5, 5, 5, 5, 3
    assert prior_loss(dataset, kind) == pytest.approx(expected, rel=1e-5)
    generator = (labels[i : i + 4] for i in range(0, len(labels), 4))
    assert prior_loss(generator, kind) == pytest.approx(expected, rel=1e-12)
    # Empty batches are skipped.
    with_empty = [labels[:0], labels[:10], labels[:0], labels[10:]]
    assert prior_loss(iter(with_empty), kind) == pytest.approx(expected, rel=1e-12)


def test_prior_dataset_of_pairs_is_an_error():
    x = np.zeros((6, 2), np.float32)
    y = np.array([0, 1, 1, 0, 1, 1])
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    with pytest.raises(ValueError, match=r"map\(lambda x, y: y\)"):
        prior_loss(pairs, "cross_entropy")
    labels_only = pairs.map(lambda x, y: y)
    assert prior_loss(labels_only, "cross_entropy") == pytest.approx(prior_loss(y, "cross_entropy"))


def test_prior_inconsistent_batches():
    with pytest.raises(ValueError, match="classes"):
        prior_loss(iter([np.eye(2), np.eye(3)]), "cross_entropy")
    with pytest.raises(ValueError, match="shapes"):
        prior_loss(iter([np.zeros((2, 2)), np.zeros((2, 3))]), "squared_error")


# -- RealTime ------------------------------------------------------------------------


# w = 1 / L (eps negligible):
#   step 0: [2, 0.5]  -> [1/2, 1/0.5]   = [0.5, 2]
#   step 1: [4, 0.25] -> [1/4, 1/0.25]  = [0.25, 4]
#   step 2: [0.1, 8]  -> [1/0.1, 1/8]   = [10, 0.125]
# and every weighted term w_i L_i is 1, so the total is K = 2.
def test_real_time_hand_computed():
    sequence = [[2.0, 0.5], [4.0, 0.25], [0.1, 8.0]]
    expected = [[0.5, 2.0], [0.25, 4.0], [10.0, 0.125]]
    balancer = RealTime()
    np.testing.assert_allclose(run(balancer, sequence), expected, rtol=1e-6)
    np.testing.assert_allclose(ref_real_time(sequence), expected, rtol=1e-9)
    for row in sequence:
        total, _ = balancer.combine(tf.constant(row))
        np.testing.assert_allclose(total.numpy(), 2.0, rtol=1e-6)


@pytest.mark.parametrize("num_terms", [2, 5])
def test_real_time_matches_reference(num_terms):
    sequence = random_sequence(20, num_terms, seed=num_terms, low=1e-3, high=1e3)
    np.testing.assert_allclose(run(RealTime(), sequence), ref_real_time(sequence), rtol=RTOL)


def test_real_time_gradient_is_sum_of_log_gradients():
    x = tf.Variable([0.7, -1.2, 2.0])
    balancer = RealTime()
    with tf.GradientTape(persistent=True) as tape:
        terms = [
            tf.reduce_sum(x**2),
            tf.reduce_sum(tf.exp(x)),
            1e4 * tf.reduce_sum((x - 1.0) ** 2),
        ]
        total = balancer.combine(terms)[0]
    gradient = tape.gradient(total, x).numpy()
    expected = sum(tape.gradient(t, x).numpy() / t.numpy() for t in terms)
    np.testing.assert_allclose(gradient, expected, rtol=1e-5)
    # Written out: d/dx [sum x^2] / sum x^2 = 2x / sum x^2, etc.
    xv = x.numpy().astype(np.float64)
    by_hand = 2 * xv / np.sum(xv**2) + np.exp(xv) / np.sum(np.exp(xv)) + 2 * (xv - 1) / np.sum((xv - 1) ** 2)
    np.testing.assert_allclose(gradient, by_hand, rtol=1e-5)
    np.testing.assert_allclose(total.numpy(), 3.0, rtol=1e-6)


@pytest.mark.parametrize("factor", [1e6, 1e-6])
def test_real_time_scale_invariance(factor):
    sequence = random_sequence(10, 3, seed=4)
    scaled = sequence.copy()
    scaled[:, 2] *= factor
    base = run(RealTime(), sequence)
    other = run(RealTime(), scaled)
    np.testing.assert_allclose(other * scaled, base * sequence, rtol=1e-5)  # all 1
    np.testing.assert_allclose(other * scaled, 1.0, rtol=1e-5)
    np.testing.assert_allclose(other[:, :2], base[:, :2], rtol=1e-6)

    x = tf.Variable([0.3, 1.1])

    def gradient(scale):
        with tf.GradientTape() as tape:
            losses = tf.stack([tf.reduce_sum(x**2), scale * tf.reduce_sum((x + 1.0) ** 2)])
            total, _ = RealTime().combine(losses)
        return tape.gradient(total, x).numpy()

    np.testing.assert_allclose(gradient(factor), gradient(1.0), rtol=1e-5)


def test_real_time_negative_loss_gets_positive_weight():
    np.testing.assert_allclose(RealTime()([-2.0, 0.5]).numpy(), [0.5, 2.0], rtol=1e-6)


# -- RLW -----------------------------------------------------------------------------


def rlw_run(balancer, steps, num_terms, fn=None):
    """Weights and drawn logits z(t) per step (the losses do not matter)."""
    fn = balancer if fn is None else fn
    weights, logits = [], []
    for t in range(steps):
        weights.append(np.asarray(fn(tf.constant(np.full(num_terms, 1.0 + t, np.float32)))))
        logits.append(balancer.last_logits.numpy().copy())
    return np.array(weights), np.array(logits)


def test_rlw_recomputed_softmax_three_steps():
    # z(t) comes from tf.random.stateless_normal with seed (11, t); the weights
    # are 3 * exp(z_i) / sum_j exp(z_j), recomputed here in float64.
    balancer = RLW(seed=11)
    weights, logits = rlw_run(balancer, 3, 3)
    for t in range(3):
        z = tf.random.stateless_normal((3,), seed=tf.constant([11, t], tf.int64)).numpy().astype(np.float64)
        np.testing.assert_array_equal(logits[t], z.astype(np.float32))
        expected = 3.0 * np.exp(z) / np.sum(np.exp(z))
        np.testing.assert_allclose(weights[t], expected, rtol=1e-6)
    assert int(balancer.step.numpy()) == 3
    assert not np.allclose(weights[0], weights[1])


# K * softmax by hand, for z = [0, ln 2, ln 3]:
#   exp(z) = [1, 2, 3], sum 6 -> 3 * [1/6, 2/6, 3/6] = [0.5, 1, 1.5]
# and for z = [ln 4, 0]: exp(z) = [4, 1], sum 5 -> 2 * [4/5, 1/5] = [1.6, 0.4].
def test_rlw_k_softmax_hand_computed():
    np.testing.assert_allclose(ref_rlw([[0.0, math.log(2.0), math.log(3.0)]]), [[0.5, 1.0, 1.5]], rtol=1e-12)
    np.testing.assert_allclose(ref_rlw([[math.log(4.0), 0.0]]), [[1.6, 0.4]], rtol=1e-12)


@pytest.mark.parametrize("num_terms", [2, 3, 6])
def test_rlw_matches_reference(num_terms):
    balancer = RLW(seed=5)
    weights, logits = rlw_run(balancer, 20, num_terms)
    np.testing.assert_allclose(logits, ref_draws(5, 20, num_terms), rtol=1e-6)
    np.testing.assert_allclose(weights, ref_rlw(ref_draws(5, 20, num_terms)), rtol=RTOL)
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), num_terms, rtol=1e-6)


def test_rlw_same_seed_same_sequence_different_seed_differs():
    w1, _ = rlw_run(RLW(seed=7), 10, 3)
    w2, _ = rlw_run(RLW(seed=7), 10, 3)
    np.testing.assert_array_equal(w1, w2)
    w3, _ = rlw_run(RLW(seed=8), 10, 3)
    assert not np.allclose(w1, w3, rtol=1e-3)
    np.testing.assert_array_equal(rlw_run(RLW(seed=np.int64(7)), 10, 3)[0], w1)


def test_rlw_no_seed_draws_one_and_keeps_it():
    balancer = RLW(num_terms=3)
    seed = int(balancer.draw_seed.numpy())
    weights, _ = rlw_run(balancer, 5, 3)
    assert int(balancer.draw_seed.numpy()) == seed
    np.testing.assert_array_equal(weights, rlw_run(RLW(seed=seed), 5, 3)[0])


def test_rlw_mean_weight_is_one():
    steps, num_terms = 2000, 3
    balancer = RLW(seed=0, num_terms=num_terms)
    losses = tf.constant([1.0, 10.0, 100.0])

    @tf.function
    def many(n):
        out = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            out = out.write(i, balancer(losses))
        return out.stack()

    weights = many(tf.constant(steps)).numpy()
    assert int(balancer.step.numpy()) == steps
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), num_terms, rtol=1e-5)
    spread = weights.std(axis=0)
    assert np.all(spread > 0.2), spread  # the draws really vary
    assert len(np.unique(weights[:, 0])) > steps // 2
    standard_error = spread / math.sqrt(steps)
    assert np.all(np.abs(weights.mean(axis=0) - 1.0) < 4 * standard_error), weights.mean(axis=0)


def test_rlw_xla_follows_rule_and_is_reproducible():
    # XLA's stateless RNG draws other numbers than the TF kernels; the rule
    # K * softmax(z) holds for the z actually drawn, and the sequence repeats.
    results = []
    for _ in range(2):
        balancer = RLW(seed=2, num_terms=4)
        fn = tf.function(lambda losses, b=balancer: b(losses), jit_compile=True)
        results.append(rlw_run(balancer, 6, 4, fn=fn))
    (weights, logits), (weights2, logits2) = results
    np.testing.assert_allclose(weights, ref_rlw(logits), rtol=RTOL)
    np.testing.assert_array_equal(weights, weights2)
    np.testing.assert_array_equal(logits, logits2)
    assert len(np.unique(logits[:, 0])) == 6


@pytest.mark.parametrize("seed", [1.5, "3", True, [1]])
def test_rlw_bad_seed_type(seed):
    with pytest.raises(TypeError, match="seed"):
        RLW(seed=seed)


def test_rlw_seed_out_of_range():
    with pytest.raises(ValueError, match=r"seed.*64-bit.*" + str(2**63)):
        RLW(seed=2**63)


# -- common to the four balancers ----------------------------------------------------


@ALL
def test_matches_reference_common(method):
    sequence = random_sequence(12, 3, seed=12)
    np.testing.assert_allclose(run(MAKERS[method](), sequence), reference(method, sequence), rtol=RTOL)


@ALL
@pytest.mark.parametrize(
    "sequence",
    [
        [[0.0, 1.0, 2.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0]],
        [[1e-12, 1e12, 1.0], [1e12, 1e-12, 1.0], [1e-12, 1e12, 1e-30]],
    ],
    ids=["zero", "1e-12-vs-1e12"],
)
def test_weights_finite_for_extreme_losses(method, sequence):
    balancer = MAKERS[method]()
    weights = run(balancer, sequence)
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)
    for row in sequence:
        total, _ = balancer.combine(tf.constant(row, tf.float32))
        assert np.isfinite(total.numpy())


def test_zero_loss_weight_is_one_over_epsilon():
    # A term of exactly 0 gets 1 / eps: 1e12 with the default, 1e6 with eps = 1e-6.
    np.testing.assert_allclose(RealTime()([0.0, 1.0]).numpy(), [1e12, 1.0], rtol=1e-6)
    np.testing.assert_allclose(InitialLoss(epsilon=1e-6)([0.0, 1.0]).numpy(), [1e6, 1.0 / (1 + 1e-6)], rtol=1e-6)
    # With eps = 0 the weight of a zero term is capped at the largest float32.
    capped = RealTime(epsilon=0.0)([0.0, 2.0]).numpy()
    np.testing.assert_array_equal(capped, [np.finfo(np.float32).max, 0.5])


@pytest.mark.parametrize("method", ["initial_loss", "prior_loss", "real_time"])
@pytest.mark.parametrize("epsilon", [-1e-3, float("nan"), float("inf")])
def test_bad_epsilon(method, epsilon):
    assert_refused(MAKERS[method], {"epsilon": epsilon}, "epsilon")


@pytest.mark.parametrize("method", ["initial_loss", "prior_loss", "real_time"])
def test_non_numeric_epsilon(method):
    with pytest.raises(TypeError, match="epsilon"):
        MAKERS[method](epsilon="small")
