"""`keras-balance compare`: same seeds and budget for every balancer, the report and its files."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_balance import balancers, bench, cli
from keras_balance import pde as pde_lib
from keras_balance.balancers import registry

TINY = {"n_interior": 32, "n_boundary": 8, "width": 8, "depth": 2}


def test_seeds_count_or_list():
    assert cli._seed_list("3") == [0, 1, 2]
    assert cli._seed_list("0,1,2") == [0, 1, 2]
    assert cli._seed_list("7,") == [7]
    assert cli._seed_list("4,9") == [4, 9]
    for bad in ("0", "-2", "a", "1,1", ","):
        with pytest.raises(Exception, match="seed"):
            cli._seed_list(bad)


def test_balancer_names_and_options():
    assert bench.balancer_names("all") == list(balancers.available())
    assert bench.balancer_names("Sum, relobralo,sum") == ["sum", "relobralo"]
    with pytest.raises(ValueError, match="relobralow"):
        bench.balancer_names("relobralow")
    assert bench.options_for("prior_loss", 3) == {"prior_losses": [1.0, 1.0, 1.0]}
    assert bench.options_for("relobralo", 2) is None
    assert bench.options_for("relobralo", 2, {"temperature": 1.0}) == {"temperature": 1.0}
    # The Sum baseline takes no options: a shared dict is meant for the others.
    assert bench.options_for("sum", 2, {"temperature": 1.0}) is None
    per_name = {"relobralo": {"temperature": 2.0}, "prior_loss": {"prior_losses": [5.0, 1.0]}}
    assert bench.options_for("relobralo", 2, per_name) == {"temperature": 2.0}
    assert bench.options_for("prior_loss", 2, per_name) == {"prior_losses": [5.0, 1.0]}
    assert bench.options_for("sum", 2, per_name) is None


def test_balancer_arguments_come_from_the_registry():
    # The harness fills in what each class declares it cannot be built without.
    for name, cls in balancers.available().items():
        assert bench.options_for(name, 3) == (dict(cls.required_arguments(3)) or None)
    assert registry.constructor_arguments("prior_loss", 2, epsilon=0.0) == {"prior_losses": [1.0, 1.0], "epsilon": 0.0}
    # One function builds a balancer from a name for the command line and the harness.
    assert registry.resolve("prior_loss", num_terms=3).prior_losses == [1.0, 1.0, 1.0]
    assert registry.resolve("prior_loss", 3, {"prior_losses": [2.0, 1.0, 1.0]}).prior_losses == [2.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="prior_losses"):
        registry.resolve("prior_loss")
    assert registry.resolve("rlw", seed=5).seed == 5
    assert registry.resolve("rlw", options={"seed": 1}, seed=5).seed == 1  # an explicit seed wins
    assert isinstance(registry.resolve("Sum", seed=5), balancers.Sum)  # no seed argument: none given
    instance = balancers.ReLoBRaLo()
    assert registry.resolve(instance, seed=5) is instance
    with pytest.raises(ValueError, match="Unknown balancer.*relobralo"):
        registry.resolve("relobralow")
    with pytest.raises(ValueError, match="temperature"):
        registry.resolve("relobralo", options={"temperature": -1.0})


def test_problem_name_is_the_command_line_key():
    assert bench.problem_name(pde_lib.HelmholtzPDE(boundary="per_edge")) == "helmholtz"
    assert bench.problem_name(pde_lib.get("kirchhoff")) == "kirchhoff"
    assert bench.problem_name(object()) is None


def test_interleaved_timer_pairs_each_chunk_with_the_baseline():
    models = {}
    for name in ("sum", "relobralo"):
        run = bench.train("helmholtz", name, steps=1, verbose=0, jit_compile=False, **TINY)
        models[name] = (run.model, iter(tf.data.Dataset.from_tensors(run.points).repeat()))
    times = bench.interleaved_step_times(models, steps=2, repeats=3, baseline="sum", seed=0)
    assert list(times) == ["sum", "relobralo"]
    assert times["sum"]["ratio"] == 1.0 and times["relobralo"]["ratio"] > 0
    assert all(row["ms_per_step"] > 0 for row in times.values())
    unpaired = bench.interleaved_step_times(models, steps=1, repeats=1)  # the given order, no ratios
    assert [row["ratio"] for row in unpaired.values()] == [None, None]


def test_comparison_writes_table_json_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "helmholtz", "--balancers", "relobralo,mgda", "--seeds", "2", "--steps", "2",
            "--no-jit", "--out", str(out), "--timing-steps", "2", "--timing-repeats", "2",
            "--json", str(tmp_path / "runs.json")]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "[1/6] sum seed 0" in captured.err and "[6/6] mgda seed 1" in captured.err  # progress
    assert {p.name for p in out.iterdir()} == {"results.md", "results.json", "error_curves.png", "error_maps.png",
                                               "runs.jsonl", "error_maps.npz"}
    assert len((out / "runs.jsonl").read_text().splitlines()) == 6  # the journal, one line per finished run
    for name in ("error_curves.png", "error_maps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "keras-balance compare helmholtz --balancers relobralo,mgda --seeds 2" in table
    assert "CPU cores visible" in table and "date:" in table and "interleaved" in table
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "balancer" not in line]
    assert [r[0].strip() for r in rows] == ["sum", "relobralo", "mgda"]  # Sum first, as the baseline
    assert all(r[2].strip() == "2 / 2" for r in rows) and all(r[-1].strip() == "ok" for r in rows)
    assert float(rows[0][-2]) == 1.0 and float(rows[2][-2]) > 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["seeds"] == [0, 1] and data["meta"]["steps"] == 2
    runs = data["runs"]
    assert sorted((r["balancer"], r["seed"]) for r in runs) == sorted(
        (b, s) for b in ("sum", "relobralo", "mgda") for s in (0, 1))
    for run in runs:
        assert {"balancer", "seed", "steps", "rel_l2", "mse", "seconds_per_1000_steps", "status"} <= set(run)
        assert run["status"] == "ok" and run["steps"] == 2 and run["rel_l2"] > 0
    aggregate = {a["balancer"]: a for a in data["aggregates"]}
    mgda = [r["rel_l2"] for r in runs if r["balancer"] == "mgda"]
    assert aggregate["mgda"]["rel_l2"]["median"] == pytest.approx(np.median(mgda))
    assert aggregate["mgda"]["rel_l2"]["min"] == pytest.approx(min(mgda))
    assert aggregate["sum"]["step_time_ratio"] == 1.0
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 6


def test_failed_and_diverged_runs_are_reported_not_dropped(tmp_path):
    comparison = bench.run_comparison(
        "helmholtz", ["relobralo"], seeds=[0], steps=3, out=str(tmp_path), verbose=0, timing_repeats=0,
        jit_compile=False, balancer_options={"sum": {"weights": [1e38, 1e38]}, "relobralo": {"temperature": -1.0}},
        **TINY)
    status = {r["balancer"]: r["status"] for r in comparison["runs"]}
    assert status["sum"].startswith("diverged at step ~")
    assert status["relobralo"].startswith("failed: ValueError") and "temperature" in status["relobralo"]
    table = (tmp_path / "results.md").read_text()
    assert "| sum |" in table and "diverged at step ~" in table
    assert "| relobralo |" in table and "failed: ValueError" in table
    data = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN written as null
    assert {r["balancer"]: r["rel_l2"] for r in data["runs"]}["relobralo"] is None
    assert {a["balancer"]: a["ok"] for a in data["aggregates"]} == {"sum": 0, "relobralo": 0}


def test_comparison_with_lbfgs_reports_both_errors(tmp_path, capsys):
    comparison = bench.run_comparison("helmholtz", ["sum"], seeds=[0], steps=3, out=None, verbose=1,
                                      timing_repeats=0, jit_compile=False, lbfgs_steps=4,
                                      lbfgs_options={"chunk": 2, "tolerance": 1e-30, "dtype": "float64"}, **TINY)
    run = comparison["runs"][0]
    assert run["lbfgs"]["steps"] <= 4 and np.isfinite(run["rel_l2_adam"])
    assert run["lbfgs"]["dtype"] == "float64" and run["settings"]["lbfgs_options"]["dtype"] == "float64"
    assert "L-BFGS 2/4 ( 50%)" in capsys.readouterr().err  # the progress display follows L-BFGS too
    table = bench.comparison_table(comparison)
    assert "after Adam" in table and "then up to 4 L-BFGS steps (frozen weights, chunk 2" in table
    assert comparison["files"] == []


def test_an_interrupted_comparison_resumes_where_it_stopped(tmp_path, capsys):
    settings = dict(steps=2, verbose=1, timing_steps=2, timing_repeats=1, jit_compile=False, **TINY)
    first = bench.run_comparison("helmholtz", ["relobralo"], seeds=[0, 1], out=str(tmp_path), **settings)
    journal = tmp_path / "runs.jsonl"
    lines = journal.read_text().splitlines()
    assert [json.loads(line)["balancer"] for line in lines] == ["sum", "relobralo", "sum", "relobralo"]
    # Interrupted during the fourth run, while writing its line.
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    capsys.readouterr()
    second = bench.run_comparison("helmholtz", ["relobralo"], seeds=[0, 1], out=str(tmp_path), resume=True,
                                  **settings)
    err = capsys.readouterr().err
    assert err.count("reused from") == 3 and "[4/4] relobralo seed 1" in err
    assert second["meta"]["reused_runs"] == 3
    before = {(r["balancer"], r["seed"]): r for r in first["runs"]}
    for run in second["runs"][:3]:  # reused as recorded
        assert run["rel_l2"] == before[run["balancer"], run["seed"]]["rel_l2"]
        assert run["seconds"] == before[run["balancer"], run["seed"]]["seconds"]
    again = second["runs"][3]
    assert again["seconds"] != before["relobralo", 1]["seconds"]  # trained again
    assert again["rel_l2"] == pytest.approx(before["relobralo", 1]["rel_l2"], rel=1e-4)
    # The maps of the first seed come back from error_maps.npz; the step times are measured again.
    assert {p.name for p in tmp_path.iterdir()} >= {"error_maps.png", "error_maps.npz"}
    assert {a["balancer"]: a["step_time_ratio"] for a in second["aggregates"]}["sum"] == 1.0
    assert all(a["ms_per_step"] > 0 for a in second["aggregates"])
    assert "3 of 4 runs were reused" in (tmp_path / "results.md").read_text()
    # The cut line is dropped and the new run has a line of its own.
    assert [(r["balancer"], r["seed"]) for r in map(json.loads, journal.read_text().splitlines())] == [
        ("sum", 0), ("relobralo", 0), ("sum", 1), ("relobralo", 1)]
    # Other settings do not match: a different budget runs everything again, and without
    # `resume` the journal starts afresh.
    third = bench.run_comparison("helmholtz", ["relobralo"], seeds=[0], out=str(tmp_path), resume=True,
                                 **{**settings, "steps": 3, "verbose": 0, "timing_repeats": 0})
    assert third["meta"]["reused_runs"] == 0
    bench.run_comparison("helmholtz", ["relobralo"], seeds=[0], out=str(tmp_path),
                         **{**settings, "verbose": 0, "timing_repeats": 0})
    assert len(journal.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="`resume` needs `out`"):
        bench.run_comparison("helmholtz", ["sum"], resume=True, out=None)
    with pytest.raises(SystemExit, match="--resume needs --out"):
        cli.main(["compare", "helmholtz", "--resume"])


def test_compare_rejects_unknown_balancers():
    with pytest.raises(SystemExit, match="relobralow"):
        cli.main(["compare", "helmholtz", "--balancers", "sum,relobralow"])


@pytest.mark.slow
@pytest.mark.parametrize("pde", ["helmholtz", "kirchhoff"])
def test_every_balancer_runs_in_a_comparison(pde, tmp_path):
    comparison = bench.run_comparison(pde, "all", seeds=[0], steps=3, out=str(tmp_path), verbose=0,
                                      timing_steps=2, timing_repeats=1, jit_compile=False, **TINY)
    assert {r["balancer"] for r in comparison["runs"]} == set(balancers.available())
    assert all(r["status"] == "ok" for r in comparison["runs"]), [r["status"] for r in comparison["runs"]]
