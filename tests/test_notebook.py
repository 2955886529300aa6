"""The learner's notebook runs top to bottom without an error.

It is executed with nbclient in FAST mode (``VLAE_NOTEBOOK_FAST=1``: the tiny
preset, a few optimiser steps, small evaluations) in a temporary working
directory, by a kernel that runs this very interpreter (so the installed
``vlae`` is the one under test). Takes ~40 s on one core. The notebook is
also checked to be stored without outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebook.ipynb"
KERNEL = "vlae-test-python"


@pytest.fixture
def kernel_here(tmp_path, monkeypatch):
    """A kernel spec whose kernel is ``sys.executable``, found first on JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vlae tests", "language": "python",
        "env": {"VLAE_NOTEBOOK_FAST": "1", "OMP_NUM_THREADS": "1"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("VLAE_NOTEBOOK_FAST", "1")
    return KERNEL


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert 'FAST = os.environ.get("VLAE_NOTEBOOK_FAST") == "1"' in code[0].source


def test_notebook_runs_top_to_bottom_in_fast_mode(kernel_here, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(nb, kernel_name=kernel_here, timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "FAST=True" in text  # the switch reached the kernel
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # masks, 3 receptive fields, digits, 2 training curves, 2 decompressions, KL map, KL bar chart
    assert images == 11
    for name in ("local", "whole-image"):
        assert any((work / "runs" / "notebook-fast" / name).glob("ckpt-*.pt"))


def test_notebook_is_what_its_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook", NOTEBOOK.parent / "tools" / "make_notebook.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    def cells(nb):
        return [(c.cell_type, c.id, c.source) for c in nb.cells]

    assert cells(generator.build()) == cells(nbformat.read(NOTEBOOK, as_version=4)), \
        "notebook.ipynb differs from tools/make_notebook.py: run `python tools/make_notebook.py`"
