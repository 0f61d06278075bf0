"""The notebooks run from top to bottom (tiny budgets: VT_NOTEBOOK_FAST=1) and draw their figures;
they are committed without outputs, and define no logic of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FIGURES = {"01_quickstart.ipynb": 6, "02_reuse_backbone.ipynb": 1, "03_features.ipynb": 3}
"""Figures (image/png outputs) each notebook draws at least."""


def _code(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_clean_and_free_of_logic(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                "commit notebooks with outputs cleared"
            )
    for source in _code(NOTEBOOKS / name):
        python = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
        for node in ast.walk(ast.parse(python)):
            assert not isinstance(node, (ast.FunctionDef, ast.Lambda, ast.ClassDef, ast.For, ast.While)), (
                f"{name}: notebooks call the package; logic goes in visiontransfer/ ({ast.dump(node)[:60]})"
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VT_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only contend
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= FIGURES[name], f"{name} drew {len(figures)} figures"
    assert (tmp_path / "runs").is_dir()  # outputs went to the working directory given
    if name.startswith("01"):
        report_dir = tmp_path / "runs" / "notebook_quickstart" / "report"
        assert (report_dir / "report.md").is_file() and (report_dir / "report.png").is_file()
