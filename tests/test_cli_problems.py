"""The command line trains the Burgers, Allen-Cahn, Poisson and advection problems by name,
with their embedded defaults (Burgers' default L-BFGS phase included)."""

import json

import numpy as np
import pytest

from keras_balance import cli
from keras_balance.bench import run

SMALL = ["--steps", "2", "--no-jit", "--quiet", "--width", "8", "--depth", "1",
         "--interior-points", "32", "--boundary-points", "9"]


@pytest.mark.parametrize("name, terms", [("burgers", ["L_f", "L_i", "L_b"]), ("allen_cahn", ["L_f", "L_i"]),
                                         ("poisson", ["L_f", "L_b"]), ("advection", ["L_f", "L_i"])])
def test_train_each_problem_by_name(name, terms, tmp_path):
    path = tmp_path / "run.json"
    assert cli.main(["train", name, *SMALL, "--lbfgs-steps", "0", "--json", str(path)]) == 0
    summary = json.loads(path.read_text())
    assert summary["pde"] == name and summary["steps"] == 2 and summary["status"] == "ok"
    assert sorted(summary["final_losses"]) == sorted(terms)
    assert np.isfinite(summary["rel_l2"]) and summary["rel_l2"] > 0
    assert "lbfgs" not in summary


def test_embedded_defaults():
    for name in ("burgers", "allen_cahn", "poisson", "advection"):
        assert {"steps", "learning_rate", "n_interior", "n_boundary", "width", "depth"} <= set(run.DEFAULTS[name])
    assert run.DEFAULTS["burgers"]["lbfgs_steps"] > 0
    assert all("lbfgs_steps" not in run.DEFAULTS[name] for name in ("helmholtz", "kirchhoff", "poisson"))


def test_burgers_runs_its_default_lbfgs_phase_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setitem(run.DEFAULTS, "burgers", {**run.DEFAULTS["burgers"], "lbfgs_steps": 3})
    path = tmp_path / "run.json"
    assert cli.main(["train", "burgers", *SMALL, "--json", str(path)]) == 0
    summary = json.loads(path.read_text())
    assert 0 < summary["lbfgs"]["steps"] <= 3
    assert "lbfgs_steps" not in summary["settings"]
    # (--lbfgs-steps 0 switches it off: test_train_each_problem_by_name.)


def test_speed_on_a_periodic_problem_times_the_hand_written_step_too(capsys):
    assert cli.main(["speed", "advection", "--balancers", "sum", "--steps", "2", "--repeats", "1", "--no-jit"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"sum", "hand-written"} <= set(rows), table


def test_train_with_pointwise_and_causal_weights(tmp_path):
    path = tmp_path / "run.json"
    arguments = ["train", "burgers", *SMALL, "--lbfgs-steps", "0", "--pointwise", "rba", "--causal", "4",
                 "--causal-epsilon", "0.1,1", "--json", str(path)]
    assert cli.main(arguments) == 0
    record = json.loads(path.read_text())
    assert record["settings"]["pointwise"] == "rba"
    assert record["settings"]["causal"] == {"chunks": 4, "epsilon": [0.1, 1.0]}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "helmholtz", "--causal", "4"], "not time-dependent"),
        (["train", "burgers", "--causal-epsilon", "1"], "needs --causal"),
        (["train", "burgers", "--causal", "4", "--causal-epsilon", "1,0.1"], "increasing"),
    ],
)
def test_causal_options_are_checked(arguments, message, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(arguments)
    assert message in str(raised.value) + capsys.readouterr().err


def test_train_with_adaptive_sampling_and_rba(tmp_path):
    path = tmp_path / "run.json"
    arguments = ["train", "helmholtz", *SMALL, "--steps", "4", "--adaptive", "rad", "--adaptive-every", "2",
                 "--pointwise", "rba", "--json", str(path)]
    assert cli.main(arguments) == 0
    record = json.loads(path.read_text())
    assert record["settings"]["adaptive"] == {"method": "rad", "every": 2}
    assert record["status"] == "ok"


def test_adaptive_sampler_redraws_in_train():
    result = run.train("helmholtz", "sum", steps=4, verbose=0, jit_compile=False, adaptive={"method": "rad", "every": 2,
                       "num_candidates": 500}, n_interior=32, n_boundary=8, width=8, depth=1)
    first = run.train("helmholtz", "sum", steps=1, verbose=0, jit_compile=False, n_interior=32, n_boundary=8,
                      width=8, depth=1).points
    assert result.model.sampler.rounds == 2
    # The interior rows were redrawn, the boundary rows kept.
    assert not np.allclose(result.points[:32], first[:32])
    np.testing.assert_array_equal(result.points[32:], first[32:])
