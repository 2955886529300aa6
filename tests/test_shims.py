"""The experiments' old homes (``vlae.sweep``, ``vlae.ablation``, ``vlae.plots``)
re-export the objects of their new ones for one release, and still run as
``python -m``."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import vlae.experiments.ablation
import vlae.experiments.plots
import vlae.experiments.runner
import vlae.experiments.sweep


@pytest.mark.parametrize("old", ["vlae.sweep", "vlae.ablation", "vlae.plots"])
def test_every_exported_name_is_there(old):
    module = importlib.import_module(old)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing


def test_the_old_names_are_the_new_objects():
    from vlae import ablation, plots, sweep

    assert sweep.run_tasks is vlae.experiments.runner.run_tasks
    assert sweep.run_sweep is vlae.experiments.sweep.run_sweep
    assert ablation.run_ablation is vlae.experiments.ablation.run_ablation
    assert plots.plot_run is vlae.experiments.plots.plot_run


@pytest.mark.parametrize("old", ["vlae.sweep", "vlae.ablation"])
def test_python_m_still_runs_the_subcommand(old):
    done = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: vlae {old.split('.')[1]}")
