"""Portable decoding: a file decodes exactly on a machine whose arithmetic differs.

Other machines are real where this one can be them (subprocesses under other thread
counts and ``ATEN_CPU_CAPABILITY`` values, CUDA when present) and simulated otherwise
(the float64 numbers the codec snaps, perturbed as another machine's would be).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlae import codec, portable
from vlae.checkpoint import save_checkpoint
from vlae.codec import compress, decompress, read_header
from vlae.codec.format import HEADER
from vlae.codec.grid import Grid
from vlae.config import ModelConfig, get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE

from conftest import needs_cuda
from emulated_cuda import emulated_cuda

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(shape=(1, 12, 12), seed: int = 0, **changes) -> VLAE:
    cfg = get_preset("tiny").model
    cfg.image_shape = shape
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    return VLAE(cfg).eval()


def _binary_model() -> VLAE:
    return _model(decoder="masked", prior="af")


def _colour_model() -> VLAE:
    """A tiny 8-bit VLAE on 3x8x8 images: spatial 3x2x2 code (12 dimensions: two passes of
    the proposal's Jacobian), AF prior, gated decoder."""
    torch.manual_seed(0)
    return VLAE(ModelConfig(image_shape=(3, 8, 8), latent_dim=12, latent_shape=(3, 2, 2), stage_channels=(4, 4, 4),
                            stage_blocks=(0, 1, 0), prior="af", prior_hidden=8, prior_layers=1, flow_steps=2,
                            decoder="gated", decoder_layers=2, decoder_filters=8, cond_channels=2,
                            cond_every_layer=True, free_bits_groups=3, observation="logistic_mixture",
                            mixture_components=3)).eval()


def _images(n: int, shape, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if shape[0] == 1:
        return torch.bernoulli(torch.full((n, *shape), 0.3), generator=g).to(torch.uint8)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------------- the grid
def test_snap_rounds_to_the_grid_and_replays_near_ties():
    v = np.array([0.1, -3.25, 1e-9, 0.5 + 2.0 ** -17, 700.3, 0.0])
    out, near, up = portable.snap(v)
    # Steps of 2^-16 below 1, 16 significant bits above (700.3: steps of 2^-6); ties round up.
    assert out.tolist() == [6554 / 2 ** 16, -3.25, 0.0, 32769 / 2 ** 16, 44819 / 64, 0.0]
    assert near.tolist() == [3] and up.tolist() == [1]  # exactly half a step: a tie
    # A value a hair below the tie rounds down, a hair above up; replayed, both round as recorded.
    below, above = np.array([0.5 + 2.0 ** -17 - 1e-15]), np.array([0.5 + 2.0 ** -17 + 1e-15])
    assert portable.snap(below)[0] != portable.snap(above)[0]
    assert portable.snap(below, (np.array([0]), np.array([1], np.uint8)))[0] == portable.snap(above)[0]
    # Away from ties, a disagreement of 2^-41 (relative above 1) never changes the result.
    g = np.random.default_rng(0)
    v = g.normal(size=100_000) * 10.0 ** g.integers(-3, 3, 100_000)
    out, near, _ = portable.snap(v)
    moved = v + v * 2.0 ** -42 * g.choice([-1, 1], v.size) + 2.0 ** -42 * g.choice([-1, 1], v.size)
    far = np.ones(v.size, bool)
    far[near] = False
    assert np.array_equal(portable.snap(moved)[0][far], out[far]) and len(near) < 5


def test_snap_is_the_grid_formula_bit_for_bit():
    # snap works in blocks, and on the bits where relative; the file format is this formula:
    # v in grid steps, floored, plus the rounding direction (recorded or replayed), scaled back.
    def formula(v, force=None):
        _, e = np.frexp(v)
        shift = portable.SIGNIFICANT_BITS - np.maximum(e, 0)
        q = np.ldexp(v, shift)
        frac = q - np.floor(q)
        up = (frac >= 0.5).astype(np.uint8).ravel()
        near = np.flatnonzero(np.abs(frac - 0.5) < portable.TIE_MARGIN)
        if force is not None:
            up[force[0]] = force[1]
        return np.ldexp(np.floor(q) + up.reshape(v.shape), -shift), near, up[near]

    g = np.random.default_rng(2)
    v = g.normal(size=(5, 200, 200)) * 10.0 ** g.integers(-320, 300, (5, 200, 200))
    flat = v.reshape(-1)
    flat[::7] = 0.0
    flat[1::11] = np.ldexp(g.integers(-(2**15), 2**15, flat[1::11].size) + 0.5, -16)  # exact ties below 1
    above = flat[3::17]  # ties and near-ties above 1, 16 significant bits
    above[:] = np.ldexp(g.integers(2**15, 2**16, above.size) + 0.5 + g.normal(size=above.size) * 1e-9, 3)
    flat[5::23] = 5e-324
    flat[2::13] *= -1
    force = (g.choice(v.size, 500, replace=False), g.integers(0, 2, 500).astype(np.uint8))
    for forced in (None, force):
        expected, got = formula(v, forced), portable.snap(v, forced)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype and a.shape == b.shape for a, b in zip(expected, got))
    assert len(expected[1]) > 10_000 and 0 < expected[2].sum() < len(expected[2])  # ties both ways were met


def test_relative_snap_keeps_16_significant_bits():
    g = np.random.default_rng(1)
    v = g.random(200_000) * 10.0 ** g.integers(-300, 3, 200_000)
    out, near, up = portable.snap(v, relative=True)
    _, e = np.frexp(v)
    q = np.ldexp(v, 16 - e)  # in [2^15, 2^16): 16 significant bits
    assert np.array_equal(out, np.ldexp(np.floor(q + 0.5), e - 16))
    assert np.array_equal(near, np.flatnonzero(np.abs(q - np.floor(q) - 0.5) < portable.TIE_MARGIN))
    tie = np.array([1 + 2.0 ** -16, 0.75 + 2.0 ** -17])  # exactly half a step above 1 and 0.75
    out, near, up = portable.snap(tie, relative=True)
    assert out.tolist() == [1 + 2.0 ** -15, 0.75 + 2.0 ** -16] and near.tolist() == [0, 1]
    assert portable.snap(tie, (near, np.zeros(2, np.uint8)), relative=True)[0].tolist() == [1.0, 0.75]


def test_portable_functions_are_accurate():
    from scipy import special

    x = np.linspace(-700, 700, 20001)
    assert np.max(np.abs(portable.exp(x) / np.exp(x) - 1)) < 1e-15
    t = np.linspace(-35, 35, 20001)
    assert np.max(np.abs(portable.normal_tail(t) / special.ndtr(-np.abs(t)) - 1)) < 1.5e-7
    q = portable.normal_quantile(np.arange(1, 4096) / 4096)
    assert np.max(np.abs(q - special.ndtri(np.arange(1, 4096) / 4096))) < 1e-6 and np.array_equal(q, -q[::-1])
    edges = np.array([-np.inf, -8.5, -1.0, -0.5, -0.2, 0.3, 0.5, 2.0, 8.0, np.inf])
    masses = portable.normal_bin_masses(edges)
    lo, hi = edges[:-1], edges[1:]
    exact = np.where(lo >= 0, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))
    np.testing.assert_allclose(masses, exact, rtol=1e-6)
    assert masses[-1] > 0 and abs(masses.sum() - 1) < 1e-6  # the upper tail keeps its precision
    assert portable.normal_bin_masses(np.array([9.5, 12.0, np.inf])).tolist() == [0.0, 0.0]  # cut at 9


# ---------------------------------------------------------------------- another machine, simulated
def _perturbed(monkeypatch, relative: float) -> None:
    """Make the decoder's float64 numbers those of a machine that disagrees by ``relative``."""
    call = Grid.__call__
    g = torch.Generator().manual_seed(7)

    def disagreeing(self, kind, site, values):
        if not self.recording:
            noise = torch.randint(-1, 2, values.shape, generator=g).to(values)
            values = values + noise * relative * (1 + values.abs())
        return call(self, kind, site, values)

    monkeypatch.setattr(Grid, "__call__", disagreeing)


@pytest.mark.parametrize("make", [_binary_model, _colour_model])
def test_a_machine_that_rounds_differently_decodes_exactly(make, monkeypatch):
    model = make()
    x = _images(7, model.cfg.image_shape)
    data = compress(model, x, batch=3)
    _perturbed(monkeypatch, 2.0 ** -45)  # far more than float64 machines disagree by (see vlae.codec)
    assert torch.equal(decompress(model, data), x)


def test_a_machine_beyond_the_margin_is_named_never_silent(monkeypatch):
    model = _colour_model()
    x = _images(4, model.cfg.image_shape)
    data = compress(model, x)
    _perturbed(monkeypatch, 1e-6)
    with pytest.raises(VLAEError, match="arithmetic differs") as info:
        decompress(model, data)
    assert "\n" not in str(info.value) and "corrupt" not in str(info.value)


@pytest.mark.parametrize("make", [_binary_model, _colour_model])
def test_files_decode_across_the_convolution_kernels_a_gpu_runs(make, monkeypatch):
    """A GPU runs the network's convolutions with PyTorch's kernels, not the unfolded products
    of :func:`vlae.layers.conv2d` (float64 on the CPU only): a file written along either code
    path decodes along the other. Here both run on this CPU, so this checks the code path a
    CUDA machine takes, with sums in another order; CUDA's own arithmetic is
    ``test_cuda_and_cpu_files_decode_on_each_other``'s (``bench/gpu.sh --codec``)."""
    from vlae import layers
    from vlae.codec.models import coding_model

    model = make()
    x = _images(7, model.cfg.image_shape)
    coding = coding_model(model, "cpu")
    with torch.no_grad():
        unfolded = coding.encode(x.double())[0]
        cpu_file = compress(model, x, batch=3)
        monkeypatch.setattr(layers, "_unfolds", lambda *args: False)  # as on a GPU: PyTorch's kernels
        assert not torch.equal(coding.encode(x.double())[0], unfolded)  # the two paths' sums differ
        gpu_path_file = compress(model, x, batch=3)
        assert torch.equal(decompress(model, cpu_file), x)
        monkeypatch.undo()
        assert torch.equal(decompress(model, gpu_path_file), x)


def test_the_emulated_gpu_refuses_what_cuda_refuses(monkeypatch):
    """The emulation can fail a test: a tensor handed to numpy before ``.cpu()`` (here the
    images' digest), a CPU tensor in a GPU operation, a CPU tensor indexed on the GPU."""
    from vlae.codec import api

    model, x, available = _binary_model(), _images(2, (1, 12, 12)), torch.cuda.is_available()
    with emulated_cuda():
        y = torch.ones(3).cuda()
        with pytest.raises(RuntimeError, match="same device"):
            y + torch.ones(3)
        with pytest.raises(RuntimeError, match="indices should be"):
            torch.ones(3)[y.long()]
        assert (y + torch.tensor(1.0)).device.type == "cuda" and (y * 2).cpu().tolist() == [2.0] * 3
        monkeypatch.setattr(api, "digest", lambda x, binary: x.numpy().tobytes()[:16])
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            compress(model, x.cuda(), device="cuda")
    assert torch.cuda.is_available() is available  # restored on leaving


def _rounds_every_near_tie_the_other_way(monkeypatch) -> None:
    """Make the decoder a machine that lands on the other side of every near-tie,
    except where the file's records tell it which way the encoder went."""
    from vlae.codec import grid

    real = grid.snap

    def other_way(v, force=None, relative=False):
        _, near, up = real(v, None, relative)
        if force is not None and len(force[0]):
            keep = ~np.isin(near, force[0])
            near, up = np.concatenate([near[keep], force[0]]), np.concatenate([1 - up[keep], force[1]])
        else:
            up = 1 - up
        return real(v, (near, up.astype(np.uint8)), relative)

    monkeypatch.setattr(grid, "snap", other_way)


@pytest.mark.parametrize("write_block, read_block", [(None, None), (7, None), (None, 5)])
def test_near_ties_are_recorded_and_replayed(monkeypatch, write_block, read_block):
    """Force many near-ties (a wide margin), then decode on a "machine" that rounds every
    one of them the other way: the records make it decode exactly; without them the
    decoder is refused as a machine whose arithmetic differs, never silent. ``snap`` rounds
    in blocks: records do not depend on the blocks either side used."""
    from vlae.codec import grid

    model = _binary_model()
    x = _images(5, model.cfg.image_shape)
    monkeypatch.setattr(portable, "TIE_MARGIN", 2.0 ** -6)
    default = portable._BLOCK
    monkeypatch.setattr(portable, "_BLOCK", write_block or default)
    data = compress(model, x)
    assert read_header(data).n_ties > 20
    monkeypatch.setattr(portable, "_BLOCK", read_block or default)
    _rounds_every_near_tie_the_other_way(monkeypatch)
    assert torch.equal(decompress(model, data), x)
    monkeypatch.setattr(grid, "_group_ties", lambda ties: iter(()))  # the records ignored
    with pytest.raises(VLAEError, match="arithmetic differs"):
        decompress(model, data)


def test_a_near_tie_record_out_of_range_is_a_corrupted_file(monkeypatch):
    import struct
    import zlib

    model = _binary_model()
    x = _images(3, model.cfg.image_shape)
    monkeypatch.setattr(portable, "TIE_MARGIN", 2.0 ** -6)
    data = compress(model, x)
    head = read_header(data)
    at = HEADER.size + 2 * head.n_chunks + 8  # the first record's index
    body = data[:at] + struct.pack("<I", 2 ** 31) + data[at + 4:-4]
    with pytest.raises(VLAEError, match=r"input: corrupted \(a near-tie record points past"):
        decompress(model, body + struct.pack("<I", zlib.crc32(body)))


# ---------------------------------------------------------------------- other machines, real
_SCRIPT = """
import json, sys, torch
from vlae import cli
jobs = json.loads(sys.argv[1])
for argv in jobs:
    status = cli.main(argv)
    if status != 0:
        sys.exit(status)
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
"""


def _capabilities() -> list[str]:
    """ATen's CPU capabilities this machine can run, best first (``default`` always)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = ["avx512"] if "avx512f" in flags else []
    found += ["avx2"] if "avx2" in flags and "fma" in flags else []
    return found + ["default"]


def _run(jobs, capability: str, tmp_path: Path) -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "2"}
    src = str(Path(codec.__file__).resolve().parents[2])  # src/vlae/codec/__init__.py
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps([[str(a) for a in j] for j in jobs])],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Checkpoints of a binary and an RGB model, and images for each."""
    folder = tmp_path_factory.mktemp("portable")
    out = {}
    for name, make in (("binary", _binary_model), ("rgb", _colour_model)):
        cfg, model = get_preset("tiny"), make()
        cfg.model = model.cfg
        save_checkpoint(folder / name / "best.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None})
        x = _images(6, model.cfg.image_shape, seed=3).numpy()
        np.save(folder / f"{name}.npy", x)
        out[name] = (folder / name, folder / f"{name}.npy", x)
    return folder, out


def test_files_decode_across_thread_counts_cpu_capabilities_and_chunk_sizes(runs):
    folder, models = runs
    caps = _capabilities()
    first, last = caps[0], caps[-1]  # e.g. avx512 and default: different vector widths, FMA, exp/log
    write = lambda tag, threads, batch: [["compress", run, images, "-o", folder / f"{name}-{tag}.vlae",  # noqa: E731
                                          "--threads", threads, "--batch", batch, "--force"]
                                         for name, (run, images, _) in models.items()]
    read = lambda tag, who, threads: [["decompress", run, folder / f"{name}-{tag}.vlae", "-o",  # noqa: E731
                                       folder / f"{name}-{tag}-by-{who}.npy", "--threads", threads, "--force"]
                                      for name, (run, _, _) in models.items()]
    _run(write("a", 2, 2), first, folder)
    _run(read("a", "b", 1) + write("b", 1, 4), last, folder)
    _run(read("b", "a", 2) + read("b", "a1", 1) + read("a", "a1", 1), first, folder)
    jobs = []
    for middle in caps[1:-1]:  # avx2 on an AVX-512 machine
        jobs.append(middle)
        _run(read("a", middle, 2) + read("b", middle, 1), middle, folder)
    for name, (_, _, x) in models.items():
        for tag, who in [("a", "b"), ("b", "a"), ("b", "a1"), ("a", "a1")] + [(t, m) for m in jobs for t in "ab"]:
            assert np.array_equal(np.load(folder / f"{name}-{tag}-by-{who}.npy"), x), (name, tag, who)
    assert read_header((folder / "binary-a.vlae").read_bytes()).chunks != read_header(
        (folder / "binary-b.vlae").read_bytes()).chunks  # two chunk layouts


@pytest.mark.parametrize("gpu", ["emulated", pytest.param("real", marks=needs_cuda)])
@pytest.mark.parametrize("make", [_binary_model, _colour_model])
def test_cuda_and_cpu_files_decode_on_each_other(make, gpu):
    """Files written with the network on the GPU decode on the CPU and the reverse, on a real
    GPU (``bench/gpu.sh --codec``: CUDA's arithmetic) and on ``tests/emulated_cuda.py``'s on
    any machine: every tensor that crosses between the network (on the GPU) and the entropy
    coder (numpy, on the CPU) is moved where CUDA requires it, and the GPU's branches are the
    ones taken; its numbers are the CPU's (arithmetic is the perturbation tests')."""
    from vlae import layers
    from vlae.codec.models import coding_model

    model = make()
    x = _images(9, model.cfg.image_shape)
    on_cpu = compress(model, x, batch=4)
    with emulated_cuda() if gpu == "emulated" else contextlib.nullcontext():
        weight = next(coding_model(model, "cuda").parameters())
        assert weight.device.type == "cuda" and not layers._unfolds(x.double().cuda(), weight, False)
        on_gpu = compress(model, x, batch=4, device="cuda")
        assert torch.equal(decompress(model, on_cpu, device="cuda"), x)
        assert torch.equal(decompress(model, on_gpu, device="cuda"), x)
    assert torch.equal(decompress(model, on_gpu, device="cpu"), x)
