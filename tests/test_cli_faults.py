"""Command lines that must end in a clear `keras-balance: error: ...` before any training starts."""

import os
import subprocess
import sys

import pytest

from keras_balance import bench, cli, cli_checks


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a command gets as far as training or timing."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the command line was checked")

    for name in ("train", "run_comparison", "overhead", "step_times"):
        monkeypatch.setattr(bench, name, refuse)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("not a folder\n")
    return path


def _error(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    message = str(info.value.code)
    assert message.startswith("keras-balance: error: "), message
    return message


# -- --options with num_terms ------------------------------------------------------


@pytest.mark.parametrize("pde, terms", [("helmholtz", "2 (L_f, L_b)"), ("kirchhoff", "3 (L_f, L_b0, L_b2)")])
def test_train_with_num_terms_of_another_problem_is_a_clear_error(no_training, pde, terms):
    message = _error(["train", pde, "--steps", "1", "--quiet", "--no-jit", "--options", '{"num_terms": 7}'])
    assert "--options" in message and f"loss terms of {pde}, {terms}" in message
    assert "received num_terms=7" in message


def test_train_with_the_problems_num_terms_is_accepted(monkeypatch):
    seen = {}

    def train(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "train", train)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["train", "helmholtz", "--quiet", "--options", '{"num_terms": 2}'])
    assert seen["balancer_options"] == {"num_terms": 2}


def test_compare_with_num_terms_of_another_problem_is_a_clear_error(no_training):
    message = _error(["compare", "helmholtz", "--balancers", "sum,relobralo", "--steps", "1", "--quiet",
                      "--options", '{"num_terms": 3}'])
    assert "received num_terms=3" in message and "helmholtz, 2 (L_f, L_b)" in message


def test_train_with_options_sized_for_another_problem_is_a_clear_error(no_training):
    message = _error(["train", "helmholtz", "--balancer", "prior_loss", "--quiet",
                      "--options", '{"prior_losses": [1, 1, 1]}'])
    assert "'prior_loss'" in message and "set up for 3 loss terms" in message
    assert "expected the 2 of helmholtz (L_f, L_b)" in message


# -- output paths -----------------------------------------------------------------


@pytest.mark.parametrize("command", [["train", "helmholtz"], ["compare", "helmholtz"]])
def test_json_under_a_file_is_refused_before_training(no_training, a_file, command):
    target = str(a_file / "run.json")
    message = _error(command + ["--steps", "1", "--quiet", "--json", target])
    assert "--json" in message and repr(target) in message and "is not a folder" in message


@pytest.mark.parametrize("command", [["train", "helmholtz"], ["compare", "helmholtz"]])
def test_json_at_a_folder_is_refused_before_training(no_training, tmp_path, command):
    message = _error(command + ["--steps", "1", "--quiet", "--json", str(tmp_path)])
    assert "--json: expected a file path" in message and "which is a folder" in message


@pytest.mark.parametrize("command", [["train", "helmholtz"], ["compare", "helmholtz"]])
def test_out_under_or_at_a_file_is_refused_before_training(no_training, a_file, command):
    message = _error(command + ["--steps", "1", "--quiet", "--out", str(a_file / "figures")])
    assert "--out" in message and repr(str(a_file / "figures")) in message
    message = _error(command + ["--steps", "1", "--quiet", "--out", str(a_file)])
    assert "--out: expected a folder" in message and "which is a file" in message


def test_bench_overhead_json_under_a_file_is_refused_before_timing(no_training, a_file):
    message = _error(["bench", "overhead", "--json", str(a_file / "rows.json")])
    assert "--json" in message


def test_plot_out_under_a_file_is_a_clear_error(tmp_path, a_file):
    csv = tmp_path / "run.csv"
    csv.write_text("step,L_f,w_L_f\n1,1.0,1.0\n2,0.5,1.0\n")
    message = _error(["plot", str(csv), "--out", str(a_file / "figures")])
    assert "--out" in message


def test_json_in_a_read_only_folder_is_refused(no_training, tmp_path, monkeypatch):
    """The folder is made read-only; the permission answer is also forced, since permissions do not bind root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    real_access = os.access
    monkeypatch.setattr(cli_checks.os, "access",
                        lambda path, mode: False if str(path) == str(folder) else real_access(path, mode))
    try:
        message = _error(["train", "helmholtz", "--quiet", "--json", str(folder / "run.json")])
    finally:
        folder.chmod(0o700)
    assert "--json" in message and "not writable" in message


def test_usable_output_paths_pass_and_nothing_is_created(tmp_path):
    nested = tmp_path / "a" / "b"
    cli_checks.check_output_file("--json", str(nested / "run.json"))
    cli_checks.check_output_dir("--out", str(nested / "figures"))
    cli_checks.check_output_dir("--out", str(tmp_path))
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    cli_checks.check_output_file("--json", str(existing))
    cli_checks.check_output_file("--json", "relative.json")  # the working directory
    assert not (tmp_path / "a").exists()


def test_console_entry_point_prints_the_error_without_a_traceback(a_file):
    target = str(a_file / "run.json")
    done = subprocess.run(
        [sys.executable, "-m", "keras_balance", "train", "helmholtz", "--steps", "1", "--quiet",
         "--json", target],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 1
    assert "keras-balance: error: --json" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_protocol_for_another_problem_is_refused_before_training(no_training):
    message = _error(["train", "helmholtz", "--protocol", "bischof2021", "--quiet"])
    assert "--protocol: bischof2021 trains kirchhoff; received the problem helmholtz" in message


def test_the_protocol_reaches_training_and_explicit_options_go_with_it(monkeypatch):
    seen = {}

    def train(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "train", train)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["train", "helmholtz", "--protocol", "wang2021", "--width", "20", "--quiet"])
    assert seen["protocol"] == "wang2021" and seen["width"] == 20 and seen["steps"] is None


def test_bench_memory_and_scaling_refuse_bad_arguments_before_measuring():
    assert "--modes: unknown mode 'pfor'; expected one of loop, vectorized, features" in _error(
        ["bench", "memory", "--modes", "pfor"])
    assert "--options" in _error(["bench", "memory", "--options", '{"boundary": "diagonal"}'])
    assert "`ks` must take values in" in _error(["bench", "scaling", "--ks", "4", "--steps", "1", "--repeats", "1"])
