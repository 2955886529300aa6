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


# ----------------------------------------------------------------------------- the observation axis's old names


def test_the_observation_models_old_home_is_the_new():
    from vlae import likelihood, observation

    assert likelihood.__all__ == observation.__all__
    assert all(getattr(likelihood, name) is getattr(observation, name) for name in observation.__all__)


def test_the_run_datas_old_home_is_the_new():
    from vlae import data, train
    from vlae.train import data as old

    assert old.resolve_data is data.resolve_data is train.resolve_data is data.checks.resolve_data
    assert old.check_data_fits is data.check_data_fits is train.check_data_fits


def test_observation_names_agree():
    from vlae import config
    from vlae.data import catalogue, observation_of
    from vlae.observation import Bernoulli, DiscretizedLogisticMixture

    assert tuple(catalogue.OLD_NAMES.values()) == tuple(catalogue.WORDS) == config.OBSERVATIONS
    assert (Bernoulli.name, DiscretizedLogisticMixture.name) == config.OBSERVATIONS
    assert {i.observation for i in catalogue.INFO.values()} == set(config.OBSERVATIONS)
    assert [observation_of(n) for n in ("binary", "8bit", *config.OBSERVATIONS, "rgb")] == [
        "bernoulli", "logistic_mixture", *config.OBSERVATIONS, "rgb"]


def test_the_old_observation_names_still_work_with_a_warning():
    import torch

    from vlae.config import get_preset
    from vlae.data import INFO, Images, as_images
    from vlae.errors import VLAEError
    from vlae.model import VLAE

    colour = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match=r"Images\(kind=...\) is deprecated"):
        eight = Images(colour, "custom", "train", kind="8bit")
    with pytest.warns(DeprecationWarning, match="Images.kind is deprecated"):
        assert eight.observation == "logistic_mixture" and eight.kind == "8bit"
    with pytest.warns(DeprecationWarning, match="'binary' is deprecated; use 'bernoulli'"):
        assert Images(colour[:, :1] % 2, "custom", "test", "binary").observation == "bernoulli"  # positional
    with pytest.warns(DeprecationWarning), pytest.raises(VLAEError, match="disagree"):
        Images(colour, "custom", "train", observation="bernoulli", kind="8bit")
    with pytest.warns(DeprecationWarning, match=r"as_images\(kind=...\) is deprecated"):
        assert as_images(colour, "train", kind="8bit").observation == "logistic_mixture"
    with pytest.warns(DeprecationWarning, match="DatasetInfo.kind is deprecated"):
        assert INFO["cifar10"].kind == "8bit" and INFO["mnist"].observation == "bernoulli"
    with pytest.warns(DeprecationWarning, match="vlae.data.KINDS is deprecated"):
        from vlae.data import KINDS
    assert KINDS == ("binary", "8bit")
    model = VLAE(get_preset("tiny").model)
    with pytest.warns(DeprecationWarning, match="VLAE.obs is deprecated"):
        assert model.obs is model.observation
    replacement = type(model.observation)()
    with pytest.warns(DeprecationWarning, match="VLAE.obs is deprecated"):
        model.obs = replacement  # the codec's tests swap the observation model this way
    assert model.observation is replacement
    assert not any(k.startswith(("obs.", "observation.")) for k in model.state_dict())
