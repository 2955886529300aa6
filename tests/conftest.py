"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


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
