"""The GradNorm toy example (examples/gradnorm_toy.py): the imbalance exists and GradNorm reduces it."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import gradnorm_toy  # noqa: E402


@pytest.fixture(scope="module")
def two_tasks():
    return gradnorm_toy.make_data(num_tasks=2, seed=0)


@pytest.fixture(scope="module")
def short_runs(two_tasks):
    """Sum and GradNorm on T = 2 (sigma = 1, 100), 300 steps each."""
    return {method: gradnorm_toy.run(method, two_tasks, steps=300, seed=0)
            for method in ("sum", "gradnorm")}


def test_data_has_the_papers_shapes_and_scales(two_tasks):
    x_train, y_train, x_test, y_test, sigmas = two_tasks
    assert x_train.shape == (8192, 250) and x_test.shape == (1024, 250)
    assert sorted(y_train) == ["task_0", "task_1"] and y_train["task_0"].shape == (8192, 100)
    np.testing.assert_allclose(sigmas, [1.0, 100.0])
    # tanh is used in its unsaturated range: the targets are not just +-sigma.
    for i, sigma in enumerate(sigmas):
        scaled = np.abs(y_test[f"task_{i}"]) / sigma
        assert 0.4 < np.std(y_test[f"task_{i}"]) / sigma < 0.8
        assert np.mean(scaled > 0.99) < 0.05


def test_with_sum_the_large_task_dominates(short_runs):
    low, high = short_runs["sum"]["ratios"]
    # sigma = 100 has fallen, sigma = 1 is far behind (its loss has even grown).
    assert high < 0.8, short_runs["sum"]["ratios"]
    assert high < 0.5 * low, short_runs["sum"]["ratios"]
    assert gradnorm_toy.spread(short_runs["sum"]["ratios"]) > 2.0


def test_gradnorm_brings_the_normalized_losses_together(short_runs):
    sum_spread = gradnorm_toy.spread(short_runs["sum"]["ratios"])
    gradnorm_spread = gradnorm_toy.spread(short_runs["gradnorm"]["ratios"])
    assert gradnorm_spread < 0.7 * sum_spread, (gradnorm_spread, sum_spread)
    # Over the whole run, not only at the end: every measurement after the first steps.
    for (step, sum_ratios, _), (_, gradnorm_ratios, _) in zip(short_runs["sum"]["history"][1:],
                                                               short_runs["gradnorm"]["history"][1:]):
        assert gradnorm_toy.spread(gradnorm_ratios) < gradnorm_toy.spread(sum_ratios), step
    # GradNorm moved the weight off the large task; their sum stays T = 2.
    weights = short_runs["gradnorm"]["weights"]
    assert weights[1] < 0.05 * weights[0] and abs(weights.sum() - 2.0) < 1e-3, weights


def test_every_method_starts_from_the_same_network():
    first = gradnorm_toy.build_model(2, "sum", seed=3)
    second = gradnorm_toy.build_model(2, "gradnorm", seed=3)
    assert [w.path for w in first.weights[:10]] == [w.path for w in second.weights[:10]]
    for a, b in zip(first.trainable_weights, second.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_history_is_measured_every_100_steps(short_runs):
    for result in short_runs.values():
        assert [step for step, _, _ in result["history"]] == [0, 100, 200, 300]
        np.testing.assert_array_equal(result["history"][0][1], [1.0, 1.0])


def test_table_for_two_and_ten_tasks():
    two = [{"method": "sum", "sigmas": np.array([1.0, 100.0]), "ratios": np.array([2.0, 0.5]),
            "weights": np.array([1.0, 1.0]), "seconds": 3.0}]
    lines = gradnorm_toy.table(two).splitlines()
    assert lines[0].startswith("| method | L_0/L_0(0), sigma=1 | L_1/L_1(0), sigma=100 | spread")
    assert lines[2] == "| sum | 2.000 | 0.500 | 4.00 | 1, 1 | 3 |"
    ten = [{"method": "gradnorm", "sigmas": np.geomspace(1, 100, 10),
            "ratios": np.linspace(0.5, 1.0, 10), "weights": np.linspace(2.0, 0.0, 10), "seconds": 12.0}]
    lines = gradnorm_toy.table(ten).splitlines()
    expected = "| L_i/L_i(0): min | median | max | spread (max/min) | weights, sigma = 1 ... 100 |"
    assert expected in lines[0]
    assert lines[2].startswith("| gradnorm | 0.500 | 0.750 | 1.000 | 2.00 |")


def test_unregistered_methods_are_skipped_with_a_message(capsys):
    gradnorm_toy.main(["--methods", "no_such_method", "--steps", "100"])
    out = capsys.readouterr().out
    assert "no_such_method: skipped, no balancer of that name is registered" in out
    assert "| method |" not in out


@pytest.mark.slow
def test_default_budget_claims(two_tasks, tmp_path):
    """The example's claims at its default budget: Sum is imbalanced, three balancers are not."""
    methods = ("sum", "gradnorm", "imtl_g", "gradient_normalization")
    results = {method: gradnorm_toy.run(method, two_tasks, seed=0) for method in methods}
    sum_spread = gradnorm_toy.spread(results["sum"]["ratios"])
    assert sum_spread > 2.0
    for method in ("gradnorm", "imtl_g", "gradient_normalization"):
        ratios = results[method]["ratios"]
        assert gradnorm_toy.spread(ratios) < 0.6 * sum_spread, (method, ratios, sum_spread)
    # With these two, both losses have fallen, and by nearly the same factor.
    for method in ("imtl_g", "gradient_normalization"):
        ratios = results[method]["ratios"]
        assert np.all(ratios < 0.9) and gradnorm_toy.spread(ratios) < 1.2, (method, ratios)
    path = tmp_path / "toy.csv"
    gradnorm_toy.write_csv(list(results.values()), str(path))
    assert len(path.read_text().splitlines()) == 1 + 4 * 11 * 2
