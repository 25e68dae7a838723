"""Tests of `keras_balance.balancers.excess_mtl.ExcessMTL`: the excess-risk estimate and the weight update by hand."""

import numpy as np
import pytest
from helpers import assert_refused

from keras_balance.balancers import ExcessMTL


def reference(jacobians, step_size, total=1.0, first_step="ratio", warmup=0, epsilon=1e-7):
    k = len(jacobians[0])
    weights = np.full(k, total / k)
    accumulated = np.zeros_like(jacobians[0])
    warmup_sum, baseline, out = np.zeros(k), None, []
    for t, jacobian in enumerate(jacobians):
        accumulated = accumulated + jacobian**2
        excess = (jacobian**2 / np.sqrt(accumulated + epsilon)).sum(axis=1)
        if t < warmup:
            warmup_sum += excess
        else:
            if t == warmup:
                baseline = warmup_sum / warmup if warmup else excess
                ratio = excess if (first_step == "raw" and not warmup) else excess / (baseline + epsilon)
            else:
                ratio = excess / (baseline + epsilon)
            weights = weights * np.exp(step_size * ratio)
            weights = total * weights / weights.sum()
        out.append(weights.copy())
    return out


def test_two_steps_by_hand():
    balancer = ExcessMTL(robust_step_size=1.0, epsilon=1e-12)
    first = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(balancer.weigh(first).numpy(), [0.5, 0.5])
    # Baselines: E_0 = 1 / 1 = 1 and 4 / 2 = 2. Step 2: S = [[5, 0], [0, 5]] for g = [2, 0], [0, 1]:
    # E = 4 / sqrt(5) and 1 / sqrt(5); ratios 4 / sqrt(5) and 1 / (2 sqrt(5)).
    second = np.array([[2.0, 0.0], [0.0, 1.0]])
    ratios = np.array([4.0, 0.5]) / np.sqrt(5.0)
    expected = np.exp(ratios) / np.exp(ratios).sum()
    np.testing.assert_allclose(balancer.weigh(second).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(balancer.aggregate(second).numpy().shape, (2,))


@pytest.mark.parametrize("options", [
    dict(), dict(total="num_terms"), dict(first_step="raw"), dict(warmup_steps=2), dict(warmup_steps=3, total="num_terms"),
])
def test_sequences_follow_the_formula(options):
    rng = np.random.default_rng(2)
    jacobians = [rng.normal(size=(3, 4)) * [[1.0], [3.0], [0.3]] for _ in range(6)]
    balancer = ExcessMTL(robust_step_size=0.7, **options)
    expected = reference(jacobians, 0.7, total=3.0 if options.get("total") == "num_terms" else 1.0,
                         first_step=options.get("first_step", "ratio"), warmup=options.get("warmup_steps", 0))
    for jacobian, weights in zip(jacobians, expected):
        np.testing.assert_allclose(balancer.weigh(jacobian).numpy(), weights, rtol=2e-6)
        assert abs(balancer.term_weights.numpy().sum() - weights.sum()) < 1e-5


def test_weights_multiply_every_gradient_of_their_term():
    assert ExcessMTL.weights_all_parameters and ExcessMTL.combines_rows and ExcessMTL.column_state
    balancer = ExcessMTL()
    balancer.weigh(np.ones((2, 5)))
    clone = ExcessMTL.from_config(balancer.get_config())
    assert clone.squared_gradient_sum.shape == (2, 5)


@pytest.mark.parametrize("arguments, name", [
    (dict(robust_step_size=0.0), "robust_step_size"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(first_step="paper"), "first_step"), (dict(total="two"), "total"), (dict(update_every=2), "update_every"),
])
def test_bad_arguments_are_refused(arguments, name):
    assert_refused(ExcessMTL, arguments, name)
