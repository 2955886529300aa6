"""Fixtures shared by the test modules, and where the tests find real data.

The library guesses no data location. When the machine has the shared data
folder beside the repository (``../shared/data``: real binarized MNIST), the
tests point ``$VLAE_DATA_DIR`` at it -- here, before any test or subprocess
starts, and only when it exists; a ``$VLAE_DATA_DIR`` set by the caller wins.
Tests of the offline fallback name no location (:func:`no_data_location`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: Marks a test that needs a CUDA device (``bench/gpu.sh`` runs them on a GPU).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if SHARED_DATA.is_dir() and not os.environ.get("VLAE_DATA_DIR"):
    os.environ["VLAE_DATA_DIR"] = str(SHARED_DATA)


def fallback_environ(folder: Path) -> dict[str, str]:
    """``os.environ`` for a subprocess that names no data location: no ``$VLAE_DATA_DIR``
    and an empty cache under ``folder``, so the embedded data stand in."""
    env = {k: v for k, v in os.environ.items() if k != "VLAE_DATA_DIR"}
    env["XDG_CACHE_HOME"] = str(folder / "empty-cache")
    return env


@pytest.fixture
def no_data_location(monkeypatch, tmp_path):
    """This test names no data location and finds no cached data: the fallback applies."""
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (restored afterwards): two pytest workers
    then share the two cores without oversubscription, and timings stay comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data():
    """The data folder beside the project (``$VLAE_DATA_DIR``, else ``../shared/data`` from the
    repository root) to pass as ``data_dir``; the test is skipped where it does not exist."""
    import os
    from pathlib import Path

    folder = Path(os.environ.get("VLAE_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not folder.is_dir():
        pytest.skip(f"no shared data folder at {folder} (set VLAE_DATA_DIR)")
    return folder
