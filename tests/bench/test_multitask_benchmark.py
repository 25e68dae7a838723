"""MultiDigits, the multi-task benchmark: the data, Delta_m%, `keras-balance compare multitask` and its resume."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_balance import cli
from keras_balance.bench import multitask


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return np.asarray(data.images), np.asarray(data.target)


def test_pairs_are_two_source_digits_side_by_side(digits):
    images, labels = digits
    data = multitask.multi_digits(n_train=300, n_test=100)
    assert data.x_train.shape == (300, 8, 16) and data.x_test.shape == (100, 8, 16)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.y_train["left"].shape == (300,) and data.y_train["left"].dtype == np.int32
    assert data.y_train["number"].shape == (300, 1) and data.y_train["number"].dtype == np.float32
    for x, y, sources in ((data.x_train, data.y_train, data.train_sources), (data.x_test, data.y_test, data.test_sources)):
        # The left half is the first source image, the right half the second, both scaled by 1/16.
        np.testing.assert_array_equal(x[:, :, :8] * 16.0, images[sources[:, 0]])
        np.testing.assert_array_equal(x[:, :, 8:] * 16.0, images[sources[:, 1]])
        np.testing.assert_array_equal(y["left"], labels[sources[:, 0]])
        np.testing.assert_array_equal(y["right"], labels[sources[:, 1]])
        np.testing.assert_array_equal(y["number"][:, 0], 10 * labels[sources[:, 0]] + labels[sources[:, 1]])


def test_test_pairs_come_from_held_out_source_images():
    data = multitask.multi_digits(n_train=3000, n_test=1000)
    assert len(np.intersect1d(data.train_images, data.test_images)) == 0
    assert len(data.train_images) + len(data.test_images) == 1797
    assert len(data.test_images) == round(0.3 * 1797)
    assert np.isin(data.train_sources, data.train_images).all()
    assert np.isin(data.test_sources, data.test_images).all()
    assert len(np.intersect1d(data.train_sources, data.test_sources)) == 0
    # Both splits see every class on both sides.
    for y in (data.y_train, data.y_test):
        assert set(y["left"]) == set(range(10)) and set(y["right"]) == set(range(10))


def test_the_split_and_pairs_follow_the_seed():
    a, b = multitask.multi_digits(200, 50, seed=3), multitask.multi_digits(200, 50, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    np.testing.assert_array_equal(a.y_test["number"], b.y_test["number"])
    c = multitask.multi_digits(200, 50, seed=4)
    assert not np.array_equal(a.test_images, c.test_images)
    assert not np.array_equal(a.train_sources, c.train_sources)
    # The benchmark's default split is seed 0.
    np.testing.assert_array_equal(multitask.multi_digits(200, 50).test_images, multitask.multi_digits(200, 50, seed=0).test_images)


def test_the_regression_is_on_a_much_larger_scale_than_the_classifications():
    data = multitask.multi_digits()
    number = data.y_train["number"][:, 0]
    assert number.min() == 0.0 and number.max() == 99.0
    # Two independent uniform digits: 10 * left + right has a variance of about 101 * 8.25 = 833.
    assert 780.0 < number.var() < 880.0
    # The squared error of the best constant is its variance; the cross-entropy of the best
    # constant is the entropy of the classes, about log 10: more than 300 times smaller.
    entropy = -sum(p * np.log(p) for p in np.bincount(data.y_train["left"]) / len(number))
    assert entropy == pytest.approx(np.log(10.0), rel=0.01)
    assert number.var() / entropy > 300.0
    # The prior_loss balancer of the comparison gets these priors from the labels.
    options = multitask.multitask_options("prior_loss", data)
    np.testing.assert_allclose(options["prior_losses"][2], number.var(), rtol=1e-5)
    np.testing.assert_allclose(options["prior_losses"][0], entropy, rtol=1e-5)
    assert multitask.multitask_options("prior_loss", data, {"prior_losses": [1.0, 2.0, 3.0]}) == {
        "prior_losses": [1.0, 2.0, 3.0]}


def test_delta_m_against_hand_computed_values():
    higher = {"left": True, "right": True, "number": False}
    baseline = {"left": 0.95, "right": 0.90, "number": 4.0}
    # Accuracies 5 and 10 points lower (relative losses 0.05/0.95 and 0.1/0.9), MAE a quarter higher:
    value = multitask.delta_m({"left": 0.90, "right": 0.80, "number": 5.0}, baseline, higher)
    assert value == pytest.approx(100.0 / 3.0 * (0.05 / 0.95 + 0.1 / 0.9 + 0.25), rel=1e-12)
    assert value == pytest.approx(13.791423001949318, rel=1e-12)
    # Better on every task is negative: accuracy 0.99 (+4.21 %), MAE 3 (-25 %).
    better = multitask.delta_m({"left": 0.99, "right": 0.90, "number": 3.0}, baseline, higher)
    assert better == pytest.approx(-100.0 / 3.0 * (0.04 / 0.95 + 0.0 + 0.25), rel=1e-12)
    assert multitask.delta_m(baseline, baseline, higher) == 0.0
    # LibMTL's count_improvement (higher is better there) is the negative: its docstring's own
    # example with one metric per task, {'A': 96 -> 93 (higher better), 'B': 0.2 -> 0.5 (lower better)}.
    libmtl = 100.0 * ((93 - 96) / 96 + (0.2 - 0.5) / 0.2) / 2
    assert multitask.delta_m({"A": 93, "B": 0.5}, {"A": 96, "B": 0.2}, {"A": True, "B": False}) == pytest.approx(-libmtl)
    with pytest.raises(ValueError, match="same tasks"):
        multitask.delta_m({"left": 0.9}, baseline, higher)
    with pytest.raises(ValueError, match="'number' is 0"):
        multitask.delta_m(baseline, {**baseline, "number": 0.0}, higher)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="n_train"):
        multitask.multi_digits(n_train=0)
    with pytest.raises(ValueError, match="test_fraction"):
        multitask.multi_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="tasks"):
        multitask.train_multitask(tasks=("depth",))
    with pytest.raises(ValueError, match="baseline"):
        multitask.multitask_comparison(["sum"], seeds=[0], baseline="mean")
    with pytest.raises(ValueError, match="resume"):
        multitask.multitask_comparison(["sum"], seeds=[0], resume=True)


@pytest.fixture
def small(monkeypatch):
    """The benchmark on a tiny budget: 200 training and 100 test pairs, one epoch of two steps, a narrow trunk."""
    monkeypatch.setitem(multitask.MULTITASK_DEFAULTS, "n_train", 200)
    monkeypatch.setitem(multitask.MULTITASK_DEFAULTS, "n_test", 100)
    monkeypatch.setitem(multitask.MULTITASK_DEFAULTS, "batch_size", 100)
    return ["--epochs", "1", "--width", "16", "--depth", "1"]


def _rows(table):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "ok / runs" not in line}


def test_compare_multitask_on_a_tiny_budget_and_resume(small, tmp_path, capsys):
    out = tmp_path / "mt"
    argv = ["compare", "multitask", "--balancers", "pcgrad,dwa", "--seeds", "0,1", "--out", str(out),
            "--json", str(tmp_path / "runs.json"), *small]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "[1/12] sum seed 0" in captured.err and "[12/12] single_task number seed 1" in captured.err
    assert {p.name for p in out.iterdir()} == {"results.md", "results.json", "runs.jsonl"}
    assert len((out / "runs.jsonl").read_text().splitlines()) == 12  # 3 balancers and 3 single-task networks x 2 seeds
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert [r["status"] for r in runs] == ["ok"] * 12
    baseline = result["meta"]["baseline_metrics"]
    for task in multitask.TASKS:  # the baseline is the mean of the single-task networks over the seeds
        alone = [r["metrics"][task] for r in runs if r["balancer"] == "single_task" and r["tasks"] == [task]]
        assert len(alone) == 2 and baseline[task] == pytest.approx(np.mean(alone))
    higher = {t: spec["higher_is_better"] for t, spec in multitask.TASKS.items()}
    for r in runs:
        if r["balancer"] != "single_task":
            assert set(r["metrics"]) == set(multitask.TASKS) and r["steps"] == 2
            assert r["delta_m"] == pytest.approx(multitask.delta_m(r["metrics"], baseline, higher))
    table = (out / "results.md").read_text()
    assert "keras-balance compare multitask --balancers pcgrad,dwa --seeds 0,1" in table
    assert "CPU cores visible" in table and "date:" in table and "single-task networks" in table
    rows = _rows(table)
    assert list(rows)[0] == "single-task baseline"
    assert set(rows) == {"single-task baseline", "sum", "pcgrad", "dwa"}
    dms = [float(rows[name][5].split("±")[0]) for name in list(rows)[1:]]
    assert dms == sorted(dms)  # best (lowest) Delta_m% first
    mean = np.mean([r["delta_m"] for r in runs if r["balancer"] == "pcgrad"])
    assert float(rows["pcgrad"][5].split("±")[0]) == pytest.approx(mean, abs=0.006)
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 12

    # --resume reuses every recorded run; a new balancer runs alone.
    argv = ["compare", "multitask", "--balancers", "pcgrad,dwa,rlw", "--seeds", "0,1", "--out", str(out),
            "--resume", *small]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("reused from") == 12
    assert "rlw seed 0: left" in captured.err
    again = json.loads((out / "results.json").read_text())
    assert again["meta"]["reused_runs"] == 12 and len(again["runs"]) == 14
    before = {(r["balancer"], r["seed"], tuple(r["tasks"])): r["metrics"] for r in runs}
    for r in again["runs"]:
        if r["balancer"] != "rlw":
            assert r["metrics"] == before[(r["balancer"], r["seed"], tuple(r["tasks"]))]
    assert "runs were reused" in (out / "results.md").read_text()


def test_a_failing_balancer_is_recorded_and_sum_baseline(small, tmp_path):
    comparison = multitask.multitask_comparison(
        ["relobralo"], seeds=[0], epochs=1, baseline="sum", width=8, depth=1, verbose=0,
        balancer_options={"relobralo": {"temperature": 1.0}, "sum": {"weights": [1.0, 1.0]}})
    runs = {r["balancer"]: r for r in comparison["runs"]}
    assert set(runs) == {"sum", "relobralo"}  # no single-task networks with the Sum baseline
    # Sum built with two weights for three tasks fails; the comparison goes on and says so.
    assert runs["sum"]["status"].startswith("failed: ValueError") and runs["sum"]["delta_m"] is None
    assert runs["relobralo"]["status"] == "ok"
    assert comparison["meta"]["baseline_metrics"] is None and runs["relobralo"]["delta_m"] is None
    table = multitask.multitask_table(comparison)
    assert "failed: ValueError" in table and "Sum (equal weights)" in table


def test_train_multitask_command(small, tmp_path, capsys):
    argv = ["train", "multitask", "--balancer", "uncertainty", "--quiet", "--out", str(tmp_path / "figures"),
            "--json", str(tmp_path / "run.json"), *small]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "multitask with uncertainty (seed 0, 1 epoch, 2 steps" in printed
    for task, metric in (("left", "accuracy"), ("right", "accuracy"), ("number", "mae")):
        assert any(line.split()[:1] == [task] and metric in line for line in printed.splitlines()), task
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["status"] == "ok" and 0.0 <= summary["metrics"]["left"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "multitask_uncertainty_seed0_losses.png", "multitask_uncertainty_seed0_weights.png"]


@pytest.mark.parametrize("argv, message", [
    (["compare", "multitask", "--steps", "3"], "--steps applies to the PDEs only.*--epochs"),
    (["compare", "multitask", "--sampling", "sobol"], "--sampling applies to the PDEs only"),
    (["train", "multitask", "--lbfgs-steps", "3"], "--lbfgs-steps applies to the PDEs only"),
    (["compare", "helmholtz", "--epochs", "3"], "--epochs applies to the multitask problem only"),
    (["compare", "kirchhoff", "--baseline", "sum"], "--baseline applies to the multitask problem only"),
    (["compare", "multitask", "--balancers", "sum,nope"], "nope"),
    (["train", "multitask", "--balancer", "prior_loss", "--options", '{"prior_losses": [1.0, 2.0]}'],
     "prior_loss.*3 tasks of multitask"),
])
def test_command_line_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)
