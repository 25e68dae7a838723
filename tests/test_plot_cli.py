"""`keras-balance plot`: figures from a history CSV."""

import pytest

from keras_balance import cli, plotting

PNG = b"\x89PNG\r\n\x1a\n"


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


def test_plot_writes_loss_and_weight_figures(tmp_path, capsys):
    csv = write_csv(tmp_path / "run.csv", ["step", "loss", "L_f", "w_L_f", "L_b", "w_L_b", "rel_l2"],
                    [[10 * i, 3.0 / i, 2.0 / i, 1.2, 1.0 / i, 0.8, 0.5 / i] for i in range(1, 6)])
    out = tmp_path / "figures"
    assert cli.main(["plot", str(csv), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run_losses.png", "run_weights.png"]
    assert all(p.read_bytes()[:8] == PNG for p in out.iterdir())
    assert "terms L_f, L_b" in capsys.readouterr().out


def test_read_history_csv_finds_terms_and_keeps_other_columns(tmp_path):
    csv = write_csv(tmp_path / "h.csv", ["epoch", "a", "w_a", "b", "w_b", "loss", "w_orphan"],
                    [[0, 1, 0.5, 2, 1.5, 3, 1], [1, 0.5, 0.6, "", 1.4, 2, 1]])
    steps, history, terms, step_name = plotting.read_history_csv(str(csv))
    assert (steps, terms, step_name) == ([0.0, 1.0], ["a", "b"], "epoch")
    assert history["loss"] == [3.0, 2.0] and history["b"][0] == 2.0 and history["b"][1] != history["b"][1]


def test_missing_file_and_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="not found.*nope.csv"):
        cli.main(["plot", str(tmp_path / "nope.csv")])
    no_terms = write_csv(tmp_path / "no_terms.csv", ["step", "loss", "rel_l2"], [[1, 2, 3]])
    with pytest.raises(SystemExit, match="no loss-term columns.*`N` and a column `w_N`"):
        cli.main(["plot", str(no_terms), "--out", str(tmp_path)])
    first = write_csv(tmp_path / "first.csv", ["time", "a", "w_a"], [[1, 2, 3]])
    with pytest.raises(SystemExit, match="`epoch` or `step`.*'time'"):
        cli.main(["plot", str(first), "--out", str(tmp_path)])
    text = write_csv(tmp_path / "text.csv", ["step", "a", "w_a"], [[1, "high", 3]])
    with pytest.raises(SystemExit, match="line 2, column 'a'.*'high'"):
        cli.main(["plot", str(text), "--out", str(tmp_path)])


def test_maps_of_a_time_dependent_problem_label_the_time_axis():
    from keras_balance import plotting
    from keras_balance.pde import BurgersPDE, HelmholtzPDE

    assert plotting._axis_labels(BurgersPDE()) == ("x", "t")
    assert plotting._axis_labels(HelmholtzPDE()) == ("x", "y")
