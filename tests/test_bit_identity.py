"""Refactoring guard: a few training steps from a fixed seed give the weights they gave before.

A change that only moves code must leave every trained weight as it was. Two
tiny runs (the ``tiny`` preset: Bernoulli, masked decoder; and an 8-bit
variant: logistic mixture, gated decoder, IAF posterior) train a few steps on
made-up images, and their final weights (raw and Polyak-averaged) are compared
with ``tests/data/bit_identity/*.safetensors``.

Floating-point results depend on the CPU's vector instructions (AVX2 against
AVX-512 kernels), on the CPU itself (the same instructions on AMD and Intel give
different bits) and on torch's version, so the comparison is exact only where
all three match those recorded with the reference; elsewhere it compares, ``allclose`` at ``rtol=1e-4``,
the effective weights (mask and weight norm applied), biases and validation
numbers (a stored weight-norm direction is not comparable there: see
:func:`_effective_weights`). Training twice in this process must in any case give equal bits.

To write the reference again (only when a change is *meant* to move numbers)::

    VLAE_REGEN_REFERENCE=1 python -m pytest -q tests/test_bit_identity.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlae.checkpoint import load_checkpoint, load_model
from vlae.config import Config, get_preset
from vlae.runtime import cpu_name
from vlae.train import train

REFERENCE = Path(__file__).parent / "data" / "bit_identity"
REGENERATE = os.environ.get("VLAE_REGEN_REFERENCE") == "1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # reductions are ordered by thread count: the reference was made with one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _binary_images(n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, 28, 28, generator=g) < 0.1).to(torch.uint8)
    x[:, :, 8:20, 10:18] = 1  # a shared bright block: something to learn
    return x


def _grey_images(n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def _tiny_config() -> Config:
    cfg = get_preset("tiny")
    t = cfg.train  # 3 steps an epoch; the fourth crosses into the second epoch's permutation
    t.batch_size, t.epochs, t.max_steps, t.eval_subset, t.progress = 16, 2, 4, 16, "off"
    return cfg


def _grey_config() -> Config:
    cfg = _tiny_config()
    m = cfg.model
    m.observation, m.mixture_components, m.decoder, m.decoder_field = "logistic_mixture", 2, "gated", "4x2"
    m.cond_every_layer, m.posterior = True, "iaf"
    cfg.train.dataset = "fashion-mnist-8bit"
    return cfg


RUNS = {"tiny": (_tiny_config, _binary_images), "grey": (_grey_config, _grey_images)}


def _train(name: str, folder: Path) -> dict[str, torch.Tensor]:
    """The run's final weights, raw and averaged, and its last validation (float64 scalars)."""
    make_config, make_images = RUNS[name]
    summary = train(make_config(), folder, data=make_images(), quiet=True)
    assert summary["steps"] == 4
    state = load_checkpoint(summary["checkpoint"])
    weights = {f"model.{k}": v for k, v in state["model"].items()}
    weights.update({f"ema.{k}": v for k, v in state["ema"].items()})
    for which in ("raw", "ema"):
        model, _ = load_model(summary["checkpoint"], weights=which)
        weights.update({f"{which}.effective.{k}": v for k, v in _effective_weights(model).items()})
    weights.update({f"valid.{k}": torch.tensor(float(summary["valid"][k]), dtype=torch.float64)
                    for k in ("nelbo", "recon", "kl", "bits_per_dim")})
    return {k: v.detach().contiguous().clone() for k, v in weights.items()}


def _effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights the layers compute with (mask and weight norm applied). A weight-normed
    layer with one unmasked tap per output is invariant to its stored direction's scale:
    its gradient there is zero up to rounding, which Adam turns into steps of the learning
    rate's size, so only the effective weight is comparable across CPUs."""
    with torch.no_grad():
        return {
            name: (m.masked_weight() if hasattr(m, "masked_weight") else m._effective_weight(m.weight)).clone()
            for name, m in model.named_modules()
            if hasattr(m, "_effective_weight")
        }


def _platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name()}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_weights_match_reference(name, tmp_path):
    weights = _train(name, tmp_path / "a")
    again = _train(name, tmp_path / "b")
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[k], again[k]) for k in weights), "training is not deterministic in-process"

    path = REFERENCE / f"{name}.safetensors"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(path), metadata=_platform())
        pytest.skip(f"reference written: {path}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        recorded = f.metadata()
    reference = load_file(str(path))
    assert weights.keys() == reference.keys()
    exact = recorded == _platform()
    for key in sorted(weights):
        assert weights[key].dtype == reference[key].dtype and weights[key].shape == reference[key].shape, key
        if exact:
            assert torch.equal(weights[key], reference[key]), f"{key} differs from the reference ({recorded})"
        elif ".effective." in key or key.startswith("valid.") or key.endswith("bias"):
            torch.testing.assert_close(weights[key], reference[key], rtol=1e-4, atol=1e-6, msg=key)
