"""GradNorm, LR annealing and gradient normalization against independent implementations.

Three fixtures, each written once by a generator in `tests/fixtures/` that
runs another library's code in an environment of its own (this module
needs none of them, only the JSON):

- `authors_reference_gradnorm.json`: LibMTL's `GradNorm` (PyTorch), driven
  through 25 steps (one per epoch) on seeded per-term gradients (K = 3,
  P = 10) and losses, with its logits trained by SGD (lr 0.02) and by Adam
  (lr 0.01); alpha = 1.5.
- `authors_reference_lr_annealing.json`: the adaptive constant of the
  authors' TensorFlow 1 Helmholtz code (Wang, Teng & Perdikaris), run by its
  own training loop on a small network for seven updates with beta = 0.9,
  with the per-layer kernel gradients it was computed from.
- `authors_reference_gradient_normalization.json`: jaxpi's `grad_norm`
  weighting (`compute_weights` and `update_weights`, JAX) on three seeded
  sequences of Jacobians, with momentum 0.9 (its examples') and 0.

What agrees, and by how much (measured when the fixtures were written):

- GradNorm: the gradient of `L_grad` with respect to the weights,
  `sign(G_i - G_bar r_i^alpha) ||g_i||`, is LibMTL's to 2e-7 at every step
  (LibMTL's value is read through the softmax of its logits). The two
  libraries then update different parameters: LibMTL steps the logits s of
  `w = K softmax(s)`, keras_balance the weights (the paper's Algorithm 1),
  and renormalizes them to sum K. For a small step the two moves are
  `-lr M M^T a` and `-lr (I - w 1^T / K) a`, with `M = diag(w) - w w^T / K`
  the Jacobian of the softmax map: equal at w = 1 to first order, different
  elsewhere. With SGD the paths separate: 1.3e-3 apart after the first
  update, 0.39 at most (step 18); at the end keras_balance's smallest
  weight is 0.061, LibMTL's 0.37. With Adam, whose steps are close to a
  sign and forget the metric, they stay within 0.011 (1.5 % of the
  weights) and the directions `J^T w` agree to a cosine of 0.99994 or more;
  the remainder is the parametrization and Adam's bookkeeping (LibMTL's
  first epoch leaves the logits without a gradient, so its first Adam step
  is step 1 with bias correction 1; keras_balance counts the equal-norm
  step 0, so its first real step is Adam's second; epsilon 1e-8 against 1e-7).
  Also deliberately different: LibMTL learns nothing during the first epoch
  and takes `L_i(0)` as the first epoch's mean loss; keras_balance updates
  from the first step, with `L_i(0)` that step's loss. The fixture uses one
  step per epoch and a first step with equal gradient norms (so
  keras_balance's first update is zero), which makes the two coincide.
- LR annealing: `LRAnnealing(mode="max")` with the default
  `convention="authors"`, given the per-layer blocks as `segments`,
  reproduces the constants the authors' loop kept, to 1.1e-7 relative.
  `convention="paper"` differs as documented: the unweighted boundary
  gradient and statistics over all parameters at once. On the same
  gradients its weight ends at 363 after seven updates, the authors' at 23.2.
- Gradient normalization: jaxpi's `compute_weights`,
  `mean_j ||g_j|| / ||g_i||`, is `GradientNormalization(scale="mean_norm")`
  to 1.2e-7 relative (the default `epsilon=1e-12` changes the weights by
  about 1e-12), and so is jaxpi with momentum 0. With its momentum 0.9 jaxpi
  keeps a moving average of the weights, starting from 1:
  `GradientNormalization(scale="mean_norm", momentum=0.9)` reproduces it
  (1e-6 relative). Without momentum the weights differ from jaxpi's by up
  to 9.0 times the weight on these sequences (the directions `J^T w` down
  to a cosine of 0.28). With a constant Jacobian the average approaches
  the weight without momentum as `0.9^k`.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from keras_balance.balancers import GradientNormalization, GradNorm, LRAnnealing

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load(name):
    return json.loads((FIXTURES / name).read_text())


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- GradNorm against LibMTL ------------------------------------------------------------------

GRADNORM = load("authors_reference_gradnorm.json")
GN_JACOBIANS = [np.asarray(j, np.float32) for j in GRADNORM["jacobians"]]
GN_LOSSES = [np.asarray(v, np.float32) for v in GRADNORM["losses"]]
GN_ALPHA = GRADNORM["reference"]["alpha"]
GN_TERMS = len(GN_LOSSES[0])


def libmtl_weights(optimizer):
    return np.array([step["weights"] for step in GRADNORM["runs"][optimizer]["steps"]])


def keras_gradnorm_path(optimizer):
    """keras_balance's weights at every step, with LibMTL's alpha, learning rate and optimizer."""
    learning_rate = GRADNORM["runs"][optimizer]["arguments"]["lr"]
    balancer = GradNorm(alpha=GN_ALPHA, learning_rate=learning_rate, optimizer=optimizer)
    return np.array([balancer.weigh(j, losses=v).numpy() for j, v in zip(GN_JACOBIANS, GN_LOSSES)])


def test_gradnorm_fixture_conventions():
    assert GN_ALPHA == 1.5
    assert GRADNORM["runs"]["sgd"]["arguments"] == {"lr": 0.02, "weight_decay": 0.0}
    assert GRADNORM["runs"]["adam"]["arguments"] == {"lr": 0.01, "weight_decay": 0.0}
    # Step 0: equal gradient norms, so GradNorm's first update is zero in keras_balance.
    norms = np.linalg.norm(GN_JACOBIANS[0].astype(np.float64), axis=1)
    assert np.all(norms == norms[0])
    for optimizer in ("sgd", "adam"):
        steps = GRADNORM["runs"][optimizer]["steps"]
        # LibMTL learns nothing in the first epoch: weights 1 at steps 0 and 1.
        assert steps[0]["weights"] == [1.0] * GN_TERMS and steps[1]["weights"] == [1.0] * GN_TERMS
        for step in steps[1:]:
            # Its logit gradient is the weight gradient through w = K softmax(s):
            # dL/ds = w * a - (w / K) (w . a).
            w = np.asarray(step["weights"])
            a = np.asarray(step["grad_weights"])
            np.testing.assert_allclose(step["grad_logits"], w * a - w / GN_TERMS * (w @ a),
                                       rtol=0, atol=1e-6 * np.abs(a).max())
            np.testing.assert_allclose(np.sum(step["weights_after"]), GN_TERMS, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradnorm_weight_gradient_matches_libmtl(optimizer):
    # From LibMTL's weights and L(0), one SGD step of keras_balance moves the
    # weights along LibMTL's dL_grad/dw: w' = K (w - lr a) / sum(w - lr a).
    learning_rate = 1e-3
    steps = GRADNORM["runs"][optimizer]["steps"]
    balancer = GradNorm(alpha=GN_ALPHA, learning_rate=learning_rate, optimizer="sgd",
                        num_terms=GN_TERMS)
    worst = 0.0
    for t in range(1, len(steps)):
        weights = np.asarray(steps[t]["weights"], np.float32)
        balancer.task_weights.assign(weights)
        balancer.initial_losses.assign(GN_LOSSES[0])
        balancer.step.assign(1)
        used = balancer.weigh(GN_JACOBIANS[t], losses=GN_LOSSES[t]).numpy()
        np.testing.assert_array_equal(used, weights)
        moved = weights - learning_rate * np.asarray(steps[t]["grad_weights"])
        assert moved.min() > balancer.min_weight
        expected = GN_TERMS * moved / moved.sum()
        worst = max(worst, np.abs(balancer.task_weights.numpy() - expected).max())
        # The step is large enough for a wrong gradient to show: at least 1e-4 here.
        assert np.abs(expected - weights).max() > 1e-4
    assert worst < 1e-6


def test_gradnorm_sgd_parametrizations_differ():
    # The documented difference: SGD on the weights (keras_balance, the paper)
    # against SGD on the logits of K softmax(s) (LibMTL).
    ours, theirs = keras_gradnorm_path("sgd"), libmtl_weights("sgd")
    np.testing.assert_array_equal(ours[:2], theirs[:2])  # both 1
    # First update: equal to first order in the step; 1.3e-3 apart.
    assert np.abs(ours[2] - theirs[2]).max() < 2e-3
    gap = np.abs(ours - theirs).max(axis=1)
    assert 0.3 < gap.max() < 0.45 and int(np.argmax(gap)) == 18
    # LibMTL's logit steps shrink with the weight (dw_i ~ w_i ds_i): its smallest
    # weight ends at 0.37, keras_balance's at 0.061.
    assert ours[-1].min() < 0.08 and theirs[-1].min() > 0.3
    np.testing.assert_allclose(ours.sum(axis=1), GN_TERMS, rtol=1e-6)


def test_gradnorm_adam_close_to_libmtl():
    ours, theirs = keras_gradnorm_path("adam"), libmtl_weights("adam")
    gap = np.abs(ours - theirs)
    assert gap.max() < 0.015 and np.max(gap / theirs) < 0.02
    # Not equal: the parametrization and Adam's step count differ (module docstring).
    assert gap.max() > 5e-3
    worst = min(cosine(j.T @ a, j.T @ b) for j, a, b in zip(GN_JACOBIANS, ours, theirs))
    assert worst >= 0.9999


# -- LR annealing against the authors' TensorFlow 1 code ---------------------------------------

LRA = load("authors_reference_lr_annealing.json")
SEGMENTS = LRA["layer_sizes"]
BETA = LRA["settings"]["beta"]


def lra_jacobian(update):
    """Rows: the residual's and the unweighted boundary loss's kernel gradients, layer by layer."""
    return np.stack([np.concatenate(update["grad_res"]),
                     np.concatenate(update["grad_bcs_unweighted"])]).astype(np.float32)


def test_lr_annealing_fixture_records_the_authors_loop():
    assert BETA == 0.9 and len(LRA["updates"]) == 7 and len(SEGMENTS) == 4
    previous = 1.0
    for update in LRA["updates"]:
        assert update["lambda_before"] == previous
        # The graph differentiates the weighted boundary loss lambda L_b ...
        weighted = np.concatenate(update["grad_bcs_weighted"])
        np.testing.assert_allclose(weighted, previous * np.concatenate(update["grad_bcs_unweighted"]),
                                   rtol=1e-6, atol=1e-6 * np.abs(weighted).max())
        # ... and takes per-layer statistics: max of the layers' max |grad L_r| over
        # mean of the layers' mean |grad (lambda L_b)|.
        numerator = max(np.abs(g).max() for g in update["grad_res"])
        denominator = np.mean([np.abs(g).mean() for g in update["grad_bcs_weighted"]])
        np.testing.assert_allclose(update["estimate"], numerator / denominator, rtol=1e-5)
        np.testing.assert_allclose(update["lambda_after"],
                                   (1 - BETA) * update["estimate"] + BETA * previous, rtol=1e-6)
        previous = update["lambda_after"]


def test_lr_annealing_authors_convention_matches():
    balancer = LRAnnealing(mode="max", smoothing=BETA, update_every=1)
    assert balancer.convention == "authors" and balancer.jacobian_scope == "kernels"
    for update in LRA["updates"]:
        weights = balancer.weigh(lra_jacobian(update), segments=SEGMENTS).numpy()
        assert weights[0] == 1.0
        np.testing.assert_allclose(weights[1], update["lambda_after"], rtol=1e-6)


def test_lr_annealing_paper_convention_differs():
    # The paper's formula: statistics of the unweighted gradients over all
    # parameters at once (no layers, no lambda in the denominator).
    paper = LRAnnealing(mode="max", smoothing=BETA, update_every=1, convention="paper")
    single_layer = LRAnnealing(mode="max", smoothing=BETA, update_every=1)
    expected = 1.0
    for k, update in enumerate(LRA["updates"]):
        jacobian = lra_jacobian(update).astype(np.float64)
        expected = BETA * expected + (1 - BETA) * np.abs(jacobian[0]).max() / np.abs(jacobian[1]).mean()
        weight = paper.weigh(lra_jacobian(update), segments=SEGMENTS).numpy()[1]
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
        if k == 0:
            # With lambda = 1 and one block, the authors' statistics are the paper's.
            np.testing.assert_allclose(single_layer.weigh(lra_jacobian(update)).numpy()[1], weight,
                                       rtol=1e-6)
            # The per-layer mean alone moves the first estimate (9.13 against 6.29 here).
            assert weight > 1.3 * update["lambda_after"]
    # After seven updates: 363 against the authors' 23.2.
    assert 340 < weight < 390 and weight > 10 * LRA["updates"][-1]["lambda_after"]


# -- Gradient normalization against jaxpi's grad_norm ------------------------------------------

JAXPI = load("authors_reference_gradient_normalization.json")
JAXPI_CASES = {case["name"]: case for case in JAXPI["cases"]}


def keras_weights(case, **options):
    balancer = GradientNormalization(scale="mean_norm", **options)
    return np.array([balancer.weigh(np.asarray(j, np.float32)).numpy() for j in case["jacobians"]])


@pytest.mark.parametrize("name", sorted(JAXPI_CASES))
def test_gradient_normalization_is_jaxpi_without_momentum(name):
    case = JAXPI_CASES[name]
    assert JAXPI["reference"]["init_weights"] == 1.0
    assert case["runs"]["0.9"]["momentum"] == 0.9 and case["runs"]["0.0"]["momentum"] == 0.0
    raw = np.asarray(case["runs"]["0.9"]["raw"])
    np.testing.assert_array_equal(raw, case["runs"]["0.0"]["raw"])
    for options in ({}, {"epsilon": 0.0}):
        ours = keras_weights(case, **options)
        np.testing.assert_allclose(ours, raw, rtol=5e-7)
        np.testing.assert_allclose(ours, case["runs"]["0.0"]["ema"], rtol=5e-7)
        for jacobian, a, b in zip(case["jacobians"], ours, raw):
            jacobian = np.asarray(jacobian)
            assert cosine(jacobian.T @ a, jacobian.T @ b) >= 0.9999


@pytest.mark.parametrize("name", sorted(JAXPI_CASES))
def test_jaxpi_momentum_is_a_moving_average(name):
    # jaxpi with momentum 0.9 = the moving average, from 1, of keras_balance's
    # weights without momentum, which `momentum=0.9` keeps.
    case = JAXPI_CASES[name]
    ours = keras_weights(case)
    average = np.ones(ours.shape[1])
    for weights, theirs in zip(ours, case["runs"]["0.9"]["ema"]):
        average = 0.9 * average + 0.1 * weights
        np.testing.assert_allclose(average, theirs, rtol=1e-6)
    ema = np.asarray(case["runs"]["0.9"]["ema"])
    assert np.max(np.abs(ours - ema) / ema) > 0.5
    # The option reproduces jaxpi's momentum-0.9 run, weights and directions.
    averaged = keras_weights(case, momentum=0.9)
    np.testing.assert_allclose(averaged, ema, rtol=1e-6)
    for jacobian, a, b in zip(case["jacobians"], averaged, ema):
        jacobian = np.asarray(jacobian)
        assert cosine(jacobian.T @ a, jacobian.T @ b) >= 0.9999
    # And momentum 0 is the default.
    np.testing.assert_array_equal(keras_weights(case, momentum=0.0), ours)


def test_jaxpi_momentum_difference_sizes():
    # Up to 9.0 times jaxpi's weight on these sequences; with a constant
    # Jacobian the gap is (1 - w) 0.9^k after k + 1 updates.
    gaps = {}
    for name, case in JAXPI_CASES.items():
        ema = np.asarray(case["runs"]["0.9"]["ema"])
        gaps[name] = np.max(np.abs(keras_weights(case) - ema) / ema)
    assert 8.5 < max(gaps.values()) < 9.5
    case = JAXPI_CASES["constant_K2_P8"]
    ours = keras_weights(case)
    ema = np.asarray(case["runs"]["0.9"]["ema"])
    steps = np.arange(len(ema))[:, None]
    np.testing.assert_allclose(ema - ours, (1.0 - ours) * 0.9 ** (steps + 1), rtol=1e-5)
