"""The Colab notebooks run top to bottom (with a few training steps)."""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ["helmholtz_relobralo.ipynb", "kirchhoff_relobralo.ipynb"]
KERNEL_NAME = "keras-balance-tests"
STEPS = "30"
CELL_TIMEOUT_S = 600


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec that starts this very interpreter, found through JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_balance tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    jupyter_path = [str(tmp_path / "jupyter")]
    if os.environ.get("JUPYTER_PATH"):
        jupyter_path.append(os.environ["JUPYTER_PATH"])
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(jupyter_path))
    # Inherited by the kernel: a short run instead of the notebooks' full budget.
    monkeypatch.setenv("KERAS_BALANCE_NOTEBOOK_STEPS", STEPS)
    return KERNEL_NAME


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel, tmp_path):
    notebook = nbformat.read(COLAB / name, as_version=4)
    assert all(
        not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"
    ), f"{name} is stored with outputs; clear them before committing."
    # Report the kernel's interpreter and step budget after the notebook's own cells.
    notebook.cells.append(
        nbformat.v4.new_code_cell("import sys\nprint('KERNEL', sys.executable)\nprint('STEPS', STEPS)")
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError if any cell fails

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert not errors

    tables = [_text(cell) for cell in code_cells if "rel. L2 error" in _text(cell)]
    assert len(tables) == 1, "the notebook must print one table of errors"
    rows = {line.split()[0] for line in tables[0].splitlines() if line.strip()}
    assert {"sum", "relobralo"} <= rows

    figures = [
        o for cell in code_cells for o in cell.outputs if "image/png" in o.get("data", {})
    ]
    assert len(figures) >= 3, "expected the loss, weight and solution figures inline"

    report = _text(code_cells[-1]).split()
    assert os.path.samefile(report[report.index("KERNEL") + 1], sys.executable)
    assert report[report.index("STEPS") + 1] == STEPS
