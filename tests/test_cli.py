"""The keras-balance command line and the harness behind it."""

import json
import os

import numpy as np
import pytest

from helpers import default_or_slow

from keras_balance import bench, cli, plotting


def test_list_prints_every_balancer_with_its_kind(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.strip().splitlines()}
    assert set(lines) >= {"sum", "relobralo"}
    assert "loss-level" in lines["relobralo"] and "Bischof" in lines["relobralo"]


def test_train_writes_summary_and_figures(tmp_path, capsys):
    summary = tmp_path / "run.json"
    figures = tmp_path / "figures"
    code = cli.main(
        ["train", "helmholtz", "--balancer", "relobralo", "--steps", "30", "--seed", "3",
         "--out", str(figures), "--json", str(summary), "--quiet", "--no-jit"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "relative L2 error" in out and "L_f" in out and "L_b" in out
    data = json.loads(summary.read_text())
    assert {"pde", "balancer", "seed", "steps", "rel_l2", "mse", "seconds", "final_weights"} <= set(data)
    assert (data["pde"], data["balancer"], data["seed"], data["steps"]) == ("helmholtz", "relobralo", 3, 30)
    assert np.isfinite(data["rel_l2"]) and data["rel_l2"] > 0
    np.testing.assert_allclose(sum(data["final_weights"].values()), 2.0, rtol=1e-5)
    names = sorted(os.listdir(figures))
    assert names == sorted(
        [f"helmholtz_relobralo_seed3_{kind}.png" for kind in ("losses", "weights", "solution", "error")]
        + ["helmholtz_relobralo_seed3_history.csv"]
    )
    for name in names:
        if name.endswith(".png"):
            assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The history is the trace of the run, in the form `keras-balance plot` reads.
    steps, history, terms, step_name = plotting.read_history_csv(str(figures / "helmholtz_relobralo_seed3_history.csv"))
    assert step_name == "step" and terms == ["L_f", "L_b"]
    assert list(steps) == sorted(steps) and steps[-1] <= 30 and len(steps) >= 2
    np.testing.assert_allclose(history["w_L_f"][-1] + history["w_L_b"][-1], 2.0, rtol=1e-5)
    np.testing.assert_allclose(history["w_L_f"][-1], data["final_weights"]["L_f"], rtol=1e-6)


@pytest.mark.parametrize("argv", [["train", "helmholtz", "--balancer", "relobralow"],
                                  ["compare", "helmholtz", "--balancers", "sum,relobralow"],
                                  ["speed", "helmholtz", "--balancers", "relobralow"],
                                  ["bench", "overhead", "--balancers", "sum,relobralow"]])
def test_unknown_balancer_is_a_clear_error(argv):
    """Every command checks a balancer name the same way before any training."""
    with pytest.raises(SystemExit, match="(?i)unknown balancer.*'relobralow'.*relobralo"):
        cli.main(argv)


@pytest.mark.parametrize("argv", [["train", "helmholtz", "--steps", "0"], ["train", "wave"],
                                  ["compare", "helmholtz", "--seeds", "a,b"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_same_seed_same_run():
    first = bench.train("kirchhoff", "relobralo", steps=6, seed=1, verbose=0, jit_compile=False,
                        n_interior=64, n_boundary=16, width=8, depth=2)
    second = bench.train("kirchhoff", "relobralo", steps=6, seed=1, verbose=0, jit_compile=False,
                         n_interior=64, n_boundary=16, width=8, depth=2)
    assert first.term_names == ("L_f", "L_b0", "L_b2")
    assert first.rel_l2 == second.rel_l2
    assert first.final_weights == second.final_weights
    assert first.log_steps == [1, 2, 3, 4, 5, 6]


def test_history_covers_uneven_budgets():
    result = bench.train("helmholtz", "sum", steps=7, log_every=3, seed=0, verbose=0, jit_compile=False,
                         n_interior=32, n_boundary=8)
    assert result.log_steps == [3, 6, 7]
    assert len(result.history["L_f"]) == 3 and len(result.history["rel_l2"]) == 3


def test_compare_table(tmp_path, capsys):
    code = cli.main(["compare", "helmholtz", "--balancers", "sum,relobralo", "--seeds", "0,1",
                     "--steps", "4", "--no-jit", "--quiet", "--out", str(tmp_path), "--timing-repeats", "0",
                     "--json", str(tmp_path / "all.json")])
    assert code == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "balancer" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["sum", "relobralo"]
    assert all(row.split("|")[3].strip() == "2 / 2" for row in rows)  # two seeds each
    assert "run's own wall time" in table or "runs' own wall time" in table
    assert len(json.loads((tmp_path / "all.json").read_text())) == 4


def test_bad_harness_arguments():
    with pytest.raises(ValueError, match="`steps`"):
        bench.train("helmholtz", "sum", steps=0, verbose=0)
    with pytest.raises(TypeError, match="widht"):
        bench.train("helmholtz", "sum", steps=1, verbose=0, widht=3)
    with pytest.raises(ValueError, match="Unknown PDE"):
        bench.train("wave", "sum", steps=1, verbose=0)


@pytest.mark.slow
def test_default_run_relobralo_beats_sum_on_helmholtz(tmp_path):
    """The acceptance comparison: same seed and budget, the CLI's defaults."""
    errors = {}
    for balancer in ("sum", "relobralo"):
        path = tmp_path / f"{balancer}.json"
        assert cli.main(["train", "helmholtz", "--balancer", balancer, "--json", str(path), "--quiet"]) == 0
        errors[balancer] = json.loads(path.read_text())["rel_l2"]
    assert errors["relobralo"] < errors["sum"], errors


def test_speed_reports_ratios_to_the_baseline(capsys):
    assert cli.main(["speed", "helmholtz", "--balancers", "relobralo", "--steps", "3",
                     "--repeats", "2", "--no-jit"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "ms" not in line}
    assert set(rows) == {"hand-written", "sum", "relobralo"}
    assert float(rows["sum"].split("|")[3]) == 1.0
    assert float(rows["relobralo"].split("|")[3]) > 0
    assert float(rows["hand-written"].split("|")[4]) == 1.0  # the ratio to the hand-written step
    assert float(rows["sum"].split("|")[4]) > 0


def test_speed_takes_the_hand_written_step_as_baseline(capsys):
    assert cli.main(["speed", "helmholtz", "--balancers", "sum", "--baseline", "hand-written", "--steps", "2",
                     "--repeats", "1", "--no-jit"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "ms" not in line}
    assert float(rows["hand-written"].split("|")[3]) == 1.0 and "ratio to hand-written" in out


def test_bench_paths_reports_every_path(capsys, tmp_path):
    path = tmp_path / "paths.json"
    assert cli.main(["bench", "paths", "helmholtz", "--steps", "2", "--repeats", "1", "--no-jit",
                     "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    from keras_balance.bench import PATHS

    assert [r["path"] for r in rows] == list(PATHS)
    assert rows[0]["ratio"] == 1.0 and all(r["ms_per_step"] > 0 for r in rows)
    assert "ratio to hand-written" in capsys.readouterr().out


def test_bench_overhead_times_held_weights(capsys):
    from keras_balance import bench

    rows = bench.overhead(ks=(2,), balancers=["mgda", "pcgrad"], steps=2, repeats=1, jit_compile=False,
                          update_every=2)
    labels = {(r["balancer"], r["update_every"]) for r in rows}
    assert labels == {("hand-written", None), ("hand-written per-term", None), ("sum", None), ("mgda", None),
                      ("mgda", 2), ("pcgrad", None)}
    assert "mgda, update_every=2" in bench.overhead_table(rows)


REQUIRED_OPTIONS = {"prior_loss": '{"prior_losses": [1000.0, 0.1]}'}


@pytest.mark.parametrize("name", default_or_slow(sorted(__import__("keras_balance").balancers.available()),
                                                ("sum", "relobralo", "prior_loss", "pcgrad", "gradnorm")))
def test_train_accepts_every_registered_balancer(name, tmp_path, capsys):
    argv = ["train", "helmholtz", "--balancer", name, "--steps", "3", "--quiet", "--no-jit",
            "--json", str(tmp_path / "run.json")]
    if name in REQUIRED_OPTIONS:
        argv += ["--options", REQUIRED_OPTIONS[name]]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["balancer"] == name and np.all(np.isfinite(list(data["final_weights"].values())))


def test_missing_or_bad_options_are_clear_errors():
    with pytest.raises(SystemExit, match="'prior_loss'.*prior_losses"):
        cli.main(["train", "helmholtz", "--balancer", "prior_loss", "--steps", "1"])
    with pytest.raises(SystemExit, match="temperature"):
        cli.main(["train", "helmholtz", "--balancer", "relobralo", "--options", '{"temperature": -1}'])


def test_list_names_every_registered_balancer(capsys):
    from keras_balance import balancers

    cli.main(["list"])
    names = {line.split()[0] for line in capsys.readouterr().out.strip().splitlines()}
    assert names == set(balancers.available())


def test_bench_overhead_table_and_json(tmp_path, capsys):
    path = tmp_path / "overhead.json"
    argv = ["bench", "overhead", "--ks", "2", "--balancers", "sum,pcgrad", "--modes",
            "loop,features", "--steps", "2", "--repeats", "2", "--no-jit", "--json", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ") and "ratio" not in line]
    assert [line.split("|")[1].strip() for line in lines] == [
        "hand-written", "hand-written per-term", "sum", "pcgrad", "pcgrad"]
    assert [line.split("|")[3].strip() for line in lines] == ["-", "loop", "-", "loop", "features"]
    rows = json.loads(path.read_text())
    assert {(r["K"], r["balancer"], r["jacobian_mode"]) for r in rows} == {
        (k, b, m) for k in (2,)
        for b, m in (("hand-written", None), ("hand-written per-term", "loop"), ("sum", None), ("pcgrad", "loop"),
                     ("pcgrad", "features"))
    }
    assert all(r["ms_per_step"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["ratio"] == 1.0 for r in rows if r["balancer"] == "sum")


def test_bench_overhead_bad_arguments():
    with pytest.raises(SystemExit, match="ks"):
        cli.main(["bench", "overhead", "--ks", "4", "--balancers", "sum"])
    with pytest.raises(SystemExit, match="jacobian mode"):
        cli.main(["bench", "overhead", "--ks", "2", "--balancers", "sum", "--modes", "pfor"])


def test_train_lbfgs_tolerance(tmp_path, capsys):
    summary = tmp_path / "run.json"
    # A tolerance no gradient reaches: L-BFGS runs its full budget.
    assert cli.main(["train", "helmholtz", "--steps", "5", "--lbfgs-steps", "3", "--lbfgs-tolerance", "1e-30",
                     "--json", str(summary), "--quiet", "--no-jit"]) == 0
    lbfgs = json.loads(summary.read_text())["lbfgs"]
    assert lbfgs["steps"] == 3 and lbfgs["reason"] == "max_steps"
    with pytest.raises(SystemExit):
        cli.main(["train", "helmholtz", "--lbfgs-tolerance", "0"])
    assert "expected a positive number, received '0'" in capsys.readouterr().err


def test_train_learning_rate_schedule_and_problem_size(tmp_path, capsys):
    summary = tmp_path / "run.json"
    assert cli.main(["train", "helmholtz", "--steps", "4", "--learning-rate", "1e-2", "--lr-schedule", "cosine",
                     "--final-learning-rate", "1e-4", "--width", "6", "--depth", "1", "--interior-points", "20",
                     "--boundary-points", "8", "--json", str(summary), "--quiet", "--no-jit"]) == 0
    settings = json.loads(summary.read_text())["settings"]
    assert settings["lr_schedule"] == "cosine" and settings["final_learning_rate"] == 1e-4
    assert settings["learning_rate"] == 1e-2 and settings["steps"] == 4
    assert (settings["width"], settings["depth"], settings["n_interior"], settings["n_boundary"]) == (6, 1, 20, 8)
    with pytest.raises(SystemExit, match="--final-learning-rate needs a decaying --lr-schedule"):
        cli.main(["train", "helmholtz", "--final-learning-rate", "1e-5"])
    with pytest.raises(SystemExit, match="at most the learning rate"):
        cli.main(["compare", "helmholtz", "--lr-schedule", "exponential", "--final-learning-rate", "0.5"])


@pytest.mark.parametrize("name", ["exponential", "cosine"])
def test_learning_rate_schedules_start_and_end_where_asked(name):
    schedule = bench.learning_rate_schedule(name, 1e-2, 1000, 1e-5)
    values = [float(schedule(step)) for step in (0, 500, 1000, 2000)]
    np.testing.assert_allclose([values[0], values[2], values[3]], [1e-2, 1e-5, 1e-5], rtol=1e-5)
    # Halfway: the geometric mean for the exponential decay, the arithmetic one for the cosine.
    np.testing.assert_allclose(values[1], np.sqrt(1e-2 * 1e-5) if name == "exponential" else (1e-2 + 1e-5) / 2,
                               rtol=1e-4)
    assert bench.learning_rate_schedule("constant", 3e-3, 10) == 3e-3
    np.testing.assert_allclose(float(bench.learning_rate_schedule(name, 1e-3, 10)(10)), 1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`lr_schedule` must be one of.*received lr_schedule='linear'"):
        bench.learning_rate_schedule("linear", 1e-3, 10)
