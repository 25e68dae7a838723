"""The Colab notebooks: stored clean, installable in Colab, and running top to bottom.

Every notebook runs in the default suite on a tiny budget (a few steps on a few
points, a narrow network, no XLA), set through the environment variables the
notebooks read; their defaults are the full budget.
"""

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ["helmholtz.ipynb", "kirchhoff.ipynb", "multitask.ipynb", "custom_pde.ipynb", "multitask_benchmark.ipynb",
             "time_dependent.ipynb"]
BADGE_URL = "https://colab.research.google.com/github/keras-balance/keras_balance/blob/main/colab/{name}"
REPOSITORY = "git+https://github.com/keras-balance/keras_balance"
KERNEL_NAME = "keras-balance-tests"
CELL_TIMEOUT_S = 300

#: The short run: the notebooks read these; their defaults are the full budget.
BUDGET = {
    "KERAS_BALANCE_NOTEBOOK_STEPS": "12",
    "KERAS_BALANCE_NOTEBOOK_POINTS": "64",
    "KERAS_BALANCE_NOTEBOOK_WIDTH": "16",
    "KERAS_BALANCE_NOTEBOOK_JIT": "0",
}
STEPS = BUDGET["KERAS_BALANCE_NOTEBOOK_STEPS"]


def _read(name):
    return nbformat.read(COLAB / name, as_version=4)


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _table(code_cells, marker):
    """The rows (first word -> the other words) of the one printed table whose header has `marker`."""
    tables = [_text(cell) for cell in code_cells if marker in _text(cell)]
    assert len(tables) == 1, f"expected one printed table with {marker!r}, found {len(tables)}"
    lines = [line for line in tables[0].splitlines() if line.strip()]
    return {line.split()[0]: line.split()[1:] for line in lines if marker not in line}


def _figures(code_cells):
    return [o for cell in code_cells for o in cell.outputs if "image/png" in o.get("data", {})]


def _finite_positive(word):
    value = float(word)
    return math.isfinite(value) and value > 0.0


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel spec that starts this very interpreter, found through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_balance tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    jupyter_path = [str(root)]
    if os.environ.get("JUPYTER_PATH"):
        jupyter_path.append(os.environ["JUPYTER_PATH"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", os.pathsep.join(jupyter_path))
        # Inherited by the kernel: a short run instead of the notebooks' full budget.
        for variable, value in BUDGET.items():
            patch.setenv(variable, value)
        yield KERNEL_NAME


def _execute(name, kernel, workdir):
    """Run the notebook top to bottom; return its code cells (the last one reports the kernel)."""
    notebook = _read(name)
    notebook.cells.append(
        nbformat.v4.new_code_cell("import sys\nprint('KERNEL', sys.executable)\nprint('STEPS', STEPS)")
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError if any cell fails
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    # The package was importable, so the install cell did not call pip.
    assert "already installed" in _text(code_cells[0])
    report = _text(code_cells[-1]).split()
    assert os.path.samefile(report[report.index("KERNEL") + 1], sys.executable)
    assert report[report.index("STEPS") + 1] == STEPS
    return code_cells


# -- stored form -----------------------------------------------------------------


def test_the_notebooks_and_nothing_else():
    assert sorted(path.name for path in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{name} is stored with outputs; clear them before committing."
            assert cell.execution_count is None, f"{name} is stored with execution counts."


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_starts_with_the_badge_and_the_install_cell(name):
    notebook = _read(name)
    first_markdown = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
    assert notebook.cells[0] is first_markdown
    assert "colab-badge.svg" in first_markdown.source
    assert f"({BADGE_URL.format(name=name)})" in first_markdown.source

    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    source = first_code.source
    # Installs from the repository, only when the package is missing.
    assert 'find_spec("keras_balance") is None' in source
    assert re.search(r"^\s+%pip install -q \"" + re.escape(REPOSITORY) + '"$', source, re.M)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_reads_its_budget_from_the_environment(name):
    source = "\n".join(cell.source for cell in _read(name).cells if cell.cell_type == "code")
    for variable in BUDGET:
        assert f'os.environ.get("{variable}"' in source, variable


# -- runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["helmholtz.ipynb", pytest.param("kirchhoff.ipynb", marks=pytest.mark.slow)])
def test_pde_notebook_runs_top_to_bottom(name, kernel, tmp_path):
    code_cells = _execute(name, kernel, tmp_path)
    rows = _table(code_cells, "rel. L2 error")
    assert set(rows) == {"sum", "relobralo"}
    num_terms = 2 if name == "helmholtz.ipynb" else 3
    for balancer, words in rows.items():
        rel_l2, mse, seconds = words[:3]
        assert _finite_positive(rel_l2) and _finite_positive(mse) and _finite_positive(seconds)
        weights = [float(word.rstrip(",").split("=")[1]) for word in words[3:]]
        assert len(weights) == num_terms
        if balancer == "sum":
            assert weights == [1.0] * num_terms
        else:  # ReLoBRaLo's weights always sum to K
            assert abs(sum(weights) - num_terms) < 0.01 * num_terms, weights
    # The check of the problem: the exact solution leaves residuals at round-off level.
    check = next(_text(cell) for cell in code_cells if "largest term of the exact solution" in _text(cell))
    assert float(check.split("largest term of the exact solution:")[1].split()[0]) < 1e-6
    assert len(_figures(code_cells)) == 3, "expected the loss, weight and solution figures inline"


def test_multitask_notebook_runs_top_to_bottom(kernel, tmp_path):
    code_cells = _execute("multitask.ipynb", kernel, tmp_path)
    rows = _table(code_cells, "spread (max/min)")
    rows.pop("sigma", None)
    assert set(rows) == {"sum", "gradnorm", "pcgrad", "mgda", "upgrad"}
    for method, words in rows.items():
        ratios, spread = [float(w) for w in words[:2]], float(words[2])
        assert all(_finite_positive(r) for r in words[:2]), (method, words)
        assert spread == pytest.approx(max(ratios) / min(ratios), rel=0.02, abs=0.01), (method, words)
        weights = [float(w.rstrip(",")) for w in words[4:]]
        assert len(weights) == 2 and all(math.isfinite(w) for w in weights), (method, words)
    assert [float(w.rstrip(",")) for w in rows["sum"][4:]] == [1.0, 1.0]
    # GradNorm's weights are renormalized to sum to T = 2.
    assert abs(sum(float(w.rstrip(",")) for w in rows["gradnorm"][4:]) - 2.0) < 0.01
    assert len(_figures(code_cells)) == 2, "expected the normalized-loss and weight figures inline"


def test_multitask_benchmark_notebook_runs_top_to_bottom(kernel, tmp_path):
    code_cells = _execute("multitask_benchmark.ipynb", kernel, tmp_path)
    # The split: no source image is shared by a training and a test pair.
    check = next(_text(cell) for cell in code_cells if "shared by a train and a test pair:" in _text(cell))
    assert int(check.split("shared by a train and a test pair:")[1].split()[0]) == 0
    rows = _table(code_cells, "Δm%")
    assert set(rows) == {"single_task", "sum", "uncertainty", "prior_loss", "pcgrad", "mgda", "imtl_g", "upgrad"}
    base = [float(w) for w in rows.pop("single_task")[:4]]
    assert base[3] == 0.0 and 0.0 <= base[0] <= 1.0 and 0.0 <= base[1] <= 1.0 and base[2] > 0.0
    scores = []
    for method, words in rows.items():
        left, right, mae, score, seconds = (float(w) for w in words[:5])
        assert 0.0 <= left <= 1.0 and 0.0 <= right <= 1.0 and mae > 0.0 and _finite_positive(seconds), method
        # Delta_m% of the printed metrics against the printed single-task ones (printing rounds them).
        expected = 100.0 / 3.0 * ((base[0] - left) / base[0] + (base[1] - right) / base[1] + (mae - base[2]) / base[2])
        assert score == pytest.approx(expected, abs=0.05), (method, words)
        scores.append(score)
    assert scores == sorted(scores), "expected the methods best first"
    assert len(_figures(code_cells)) == 2, "expected the pairs and the Delta_m% figures inline"


def test_custom_pde_notebook_runs_top_to_bottom(kernel, tmp_path):
    code_cells = _execute("custom_pde.ipynb", kernel, tmp_path)
    # The hand-written Poisson problem is consistent with its exact solution ...
    check = next(_text(cell) for cell in code_cells if "largest term of the exact solution" in _text(cell))
    assert float(check.split("largest term of the exact solution:")[1].split()[0]) < 1e-6
    # ... and both models were trained and measured against it.
    rows = _table(code_cells, "rel. L2 error")
    assert set(rows) == {"PINNModel", "PoissonFromSensors"}
    for words in rows.values():
        assert all(_finite_positive(word) for word in words[:3]), words
    assert [w.split("=")[0] for w in rows["PoissonFromSensors"][3:]] == ["residual", "data"]
    assert [w.split("=")[0] for w in rows["PINNModel"][3:]] == ["L_f", "L_b"]
    assert len(_figures(code_cells)) == 2, "expected the training curves and the solution figure inline"


def test_time_dependent_notebook_runs_top_to_bottom(kernel, tmp_path):
    code_cells = _execute("time_dependent.ipynb", kernel, tmp_path)
    check = next(_text(cell) for cell in code_cells if "largest term of the reference solution" in _text(cell))
    # The Cole-Hopf reference satisfies the residual to its quadrature's accuracy.
    assert float(check.split("largest term of the reference solution:")[1].split()[0]) < 1e-6
    rows = _table(code_cells, "rel. L2 error")
    assert set(rows) == {"plain", "causal"}
    for name, words in rows.items():
        assert _finite_positive(words[0]) and _finite_positive(words[1]), (name, words)
    assert math.isnan(float(rows["plain"][2]))
    assert 0.0 < float(rows["causal"][2]) <= 1.0  # the smallest causal weight
    assert len(_figures(code_cells)) == 2, "expected the causal-weight and solution figures inline"
