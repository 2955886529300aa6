"""Exercise 3 -- Posterior collapse: grow the decoder's receptive field and watch the KL vanish.

Task
    A VAE whose decoder is a PixelCNN can model the image without looking at
    ``z`` once the decoder sees enough context; the bound is then best with
    q(z|x) = p(z), so the KL term (the information ``z`` carries) collapses to
    zero. You will reproduce that with the library's ``VLAE``:

    1. ``receptive_field_extent(layers, kernel_size)``: how many rows up, rows
       down, columns left and right the output of a masked PixelCNN (one type-A
       layer, then type-B layers, all ``k x k``) can see. Pure arithmetic.
    2. ``layers_to_see_rows(rows, kernel_size)``: the fewest layers whose field
       reaches ``rows`` rows up (27 rows: the whole 28x28 image).
    3. ``vae_config(decoder_layers, decoder_kernel)``: a small VAE configuration
       with a plain N(0, I) prior and no free bits, so nothing but the decoder's
       receptive field decides whether ``z`` is used.
    4. ``train_vae(model, images, steps, ...)``: a plain training loop.
    5. ``final_kl(model, images)``: the mean KL, in nats per image.
    6. ``kl_after_training(decoder_layers, decoder_kernel, ...)``: all of it
       together: build, train, and return the final KL.

    The checker compares your arithmetic with the library's exact receptive
    field and checks each piece exactly (your training loop is replayed step by
    step against a plain Adam loop on the same batches; your KL against the
    values ``model.terms`` returned), then trains two VAEs for 100 steps each
    (about 30 s on one CPU thread): one whose decoder sees 1 row up, one whose
    decoder sees the whole image. The first keeps a clearly positive KL; the
    second collapses.

Paper
    VLAE (Chen et al., ICLR 2017): the section "Bits-back coding and information
    preference" explains why collapse is the optimum of the bound, and "Lossy code
    via explicit information placement" turns it into a tool.
    In this repository: ``paper_notes.md`` sections 2 and 4, ``vlae sweep``.

Prerequisites
    Exercises 1-2 (masked convolutions, PixelCNN). The library's ``VLAE`` is used
    as is: ``model.loss(x) -> (loss, terms)``, ``model.terms(x).kl`` (nats, ``(B,)``),
    ``model.decoder.receptive_field_extent()``.

Expected time
    30-45 minutes (plus about a minute of training in the checker).

Run
    python exercises/exercise_03_posterior_collapse.py              # check your code
    python exercises/exercise_03_posterior_collapse.py --solution   # check the reference solution
    python exercises/exercise_03_posterior_collapse.py --quick      # skip the training check
"""

from __future__ import annotations

import math
import os
import sys

import torch

from vlae import VLAE, ModelConfig, get_preset

# ============================================================================ your code


def receptive_field_extent(layers: int, kernel_size: int) -> dict[str, int]:
    """Extent of the receptive field of a masked PixelCNN.

    The decoder is ``layers`` masked ``k x k`` convolutions: type A first, then
    type B (1x1 layers in between change nothing). Return how far from the
    output pixel its inputs reach, in pixels:
    ``{"up": ..., "down": ..., "left": ..., "right": ...}``.

    Example:
        >>> receptive_field_extent(6, 3)  # the paper's MNIST decoder
        {'up': 6, 'down': 0, 'left': 6, 'right': 6}
    """
    # TODO (1): one layer reaches kernel_size // 2 pixels; what do `layers` of them reach?
    raise NotImplementedError("TODO: receptive_field_extent(layers, kernel_size)")


def layers_to_see_rows(rows: int, kernel_size: int) -> int:
    """The fewest masked layers whose receptive field reaches ``rows`` rows up.

    Raises:
        ValueError: no depth suffices (a 1x1 masked kernel sees nothing).

    Example:
        >>> layers_to_see_rows(27, 3)  # the top row, from the bottom row of a 28x28 image
        27
    """
    # TODO (2)
    raise NotImplementedError("TODO: layers_to_see_rows(rows, kernel_size)")


def vae_config(decoder_layers: int, decoder_kernel: int) -> ModelConfig:
    """A small VAE with a masked PixelCNN decoder of the given depth and kernel.

    Start from ``get_preset("tiny").model`` and change only these fields:
    ``prior`` (the plain standard normal, ``"gaussian"``), ``free_bits`` (off:
    0), ``decoder`` (``"masked"``), ``decoder_layers``, ``decoder_kernel``,
    ``decoder_blocks_1x1`` (0: 1x1 blocks do not change the receptive field and
    would only slow the run) and ``weight_norm`` (False: PyTorch's default
    initialisation; weight normalisation's data-dependent one starts the KL
    far from zero, which makes a run this short much noisier).
    """
    # TODO (3)
    raise NotImplementedError("TODO: vae_config(decoder_layers, decoder_kernel)")


def train_vae(model: VLAE, images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3,
              seed: int = 0) -> None:
    """Train ``model`` in place on the single-sample bound, ``model.loss(x)``.

    Args:
        images: float 0/1 images ``(N, 1, 28, 28)``.
        steps: optimiser steps; each on ``batch_size`` images drawn at random
            (``torch.randint`` with a ``torch.Generator`` seeded with ``seed``).
        lr: Adam's learning rate.
    """
    # TODO (4)
    raise NotImplementedError("TODO: train_vae(model, images, steps, ...)")


def final_kl(model: VLAE, images: torch.Tensor, batch_size: int = 100) -> float:
    """The mean of ``log q(z|x) - log p(z)`` over ``images``, in nats per image
    (``model.terms(x).kl`` holds it per image; no gradients needed)."""
    # TODO (5)
    raise NotImplementedError("TODO: final_kl(model, images)")


def kl_after_training(decoder_layers: int, decoder_kernel: int, train_images: torch.Tensor,
                      test_images: torch.Tensor, steps: int, seed: int = 0) -> float:
    """Build ``VLAE(vae_config(decoder_layers, decoder_kernel))``, train it for
    ``steps`` steps on ``train_images`` (with ``train_vae``, seed ``seed``) and
    return its :func:`final_kl` on ``test_images``."""
    # TODO (6)
    raise NotImplementedError("TODO: kl_after_training(decoder_layers, decoder_kernel, ...)")


# ============================================================================ checker (no need to read on)
# Reading further gives the answers away. Run this file to check your code.

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _checker import Checklist, TimeBudget, expect, fail, main, training_data  # noqa: E402
from vlae.pixelcnn import MaskedPixelCNN  # noqa: E402

CHECKS = Checklist("Exercise 3: posterior collapse and the receptive field")

# The training check: two VAEs (vae_config: tiny preset, N(0, I) prior, no free
# bits, no weight normalisation), 100 steps each, batch 32, Adam 2e-3, one thread;
# KL in nats per image on 500 test images. Reference solution, ten runs (seeds
# 0-4 on the real binarized MNIST, 0-4 on the embedded subset):
#   decoder 1 layer 3x3 (1 row up, 4 pixels seen):       KL 6.5 - 10.3 (median 8.4)
#   decoder 9 layers 7x7 (27 rows up, the whole image):  KL 0.05 - 1.5 (median 0.39)
#   ratio large / small: 0.005 - 0.15 (median 0.04)
# (this checker's own run, real data, gives 6.88 and 0.41: ratio 0.06). The
# collapse shows as clearly after 100 steps as after 200 (where the nine runs
# gave 8.1 - 12.6, 0.08 - 3.0 and ratios up to 0.24), at half the time.
# So: the small decoder must keep more than 4 nats (z is in use; 60% of the
# lowest measured value), and the whole-image decoder less than 40% of that (2.6
# times the worst measured ratio; a decoder that does not collapse keeps a KL
# comparable to the small one's, a ratio near 1). With weight normalisation and
# its data-dependent initialisation the runs were much noisier (ratios up to 0.44),
# which is why vae_config turns it off.
SMALL_KL_MIN = 4.0
COLLAPSE_RATIO = 0.4
_STEPS = 100
_SMALL = (1, 3)
_LARGE_KERNEL = 7

_TINY_CHANGES = {"prior": "gaussian", "free_bits": 0.0, "decoder": "masked", "decoder_blocks_1x1": 0,
                 "weight_norm": False}


def _vlae_extent(layers: int, kernel: int) -> dict[str, int]:
    if (layers, kernel) not in _EXTENTS:
        decoder = MaskedPixelCNN(layers=layers, kernel_size=kernel, filters=2, cond_channels=0, blocks_1x1=0)
        _EXTENTS[(layers, kernel)] = decoder.receptive_field_extent()
    return dict(_EXTENTS[(layers, kernel)])


_EXTENTS: dict[tuple[int, int], dict[str, int]] = {}


_KEY_HINTS = {
    "up": "every masked layer, A or B, reaches kernel_size // 2 rows up, and the layers add up: "
          "up = layers * (kernel_size // 2)",
    "down": "a masked convolution never reads a row below the output: down is always 0",
    "left": "every layer reaches kernel_size // 2 columns to the left (in its row and in the rows above), "
            "and the layers add up",
    "right": "the type-A layer already reaches kernel_size // 2 columns to the right, in the rows above; "
             "every layer adds as much: right = left. (The blind spot makes the field ragged, not narrower.)",
}


@CHECKS.check("receptive_field_extent matches the library's decoders (layers 1-6, kernels 1, 3, 5, 7)")
def _extent(ex):
    for kernel in (3, 5, 7, 1):
        for layers in range(1, 7):
            got = ex.receptive_field_extent(layers, kernel)
            want = _vlae_extent(layers, kernel)
            expect(isinstance(got, dict), f"receptive_field_extent returned {type(got).__name__}, expected a dict")
            expect(set(got) == set(want), f"keys {sorted(got)}, expected {sorted(want)}")
            wrong = [key for key in ("up", "down", "left", "right") if got[key] != want[key]]
            if wrong:
                if kernel == 1 and all(want[k] == 0 for k in want):
                    hint = "a 1x1 type-A kernel is masked entirely: the decoder sees nothing at all"
                else:
                    hint = _KEY_HINTS[wrong[0]]
                fail(f"layers={layers}, kernel={kernel}: got {got}, the decoder's exact field spans {want}", hint)


@CHECKS.check("layers_to_see_rows: the fewest layers reaching the given rows (and ValueError for k = 1)")
def _layers_for_rows(ex):
    for kernel in (3, 5, 7):
        for rows in (1, 2, 3, 5, 6, 7, 13, 27):
            layers = 1
            while _vlae_extent(layers, kernel)["up"] < rows:
                layers += 1
            got = ex.layers_to_see_rows(rows, kernel)
            if got != layers:
                hint = ("round up: a depth that falls short by a fraction of a layer does not reach the row"
                        if got == layers - 1 else "the smallest L with L * (kernel_size // 2) >= rows")
                fail(f"layers_to_see_rows({rows}, {kernel}) = {got}, but {layers} layers are needed "
                     f"(the field of {layers} reaches {_vlae_extent(layers, kernel)['up']} rows up"
                     + (f", of {layers - 1} only {_vlae_extent(layers - 1, kernel)['up']})" if layers > 1 else ")"),
                     hint)
    try:
        ex.layers_to_see_rows(5, 1)
    except ValueError:
        return
    except (ZeroDivisionError, OverflowError) as error:
        fail(f"layers_to_see_rows(5, 1) raised {type(error).__name__}",
             "a 1x1 masked kernel sees nothing at any depth: raise ValueError with a message saying so")
    fail("layers_to_see_rows(5, 1) returned instead of raising ValueError",
         "a 1x1 masked kernel sees nothing at any depth: raise ValueError")


@CHECKS.check("vae_config: the tiny preset with N(0, I) prior, no free bits, masked decoder of the given depth")
def _config(ex):
    import dataclasses

    for layers, kernel in [(1, 3), (4, 5)]:
        cfg = ex.vae_config(layers, kernel)
        expect(isinstance(cfg, ModelConfig), f"vae_config returned {type(cfg).__name__}, expected a ModelConfig",
               "return get_preset('tiny').model after changing its fields")
        want = dataclasses.replace(get_preset("tiny").model, decoder_layers=layers, decoder_kernel=kernel,
                                   **_TINY_CHANGES)
        got_d, want_d = dataclasses.asdict(cfg), dataclasses.asdict(want)
        if got_d["prior"] != "gaussian":
            fail(f"prior = {cfg.prior!r}", "use the plain standard-normal prior ('gaussian'): this experiment "
                 "isolates the decoder; the AF prior is part of the cure (exercises 4-5)")
        if got_d["free_bits"] != 0:
            fail(f"free_bits = {cfg.free_bits}", "free bits keep the KL above a floor on purpose, which would "
                 "hide the collapse: set free_bits = 0")
        if (got_d["decoder_layers"], got_d["decoder_kernel"]) != (layers, kernel):
            fail(f"vae_config({layers}, {kernel}) has decoder_layers={cfg.decoder_layers}, "
                 f"decoder_kernel={cfg.decoder_kernel}", "set both from the arguments")
        wrong = {k: (got_d[k], want_d[k]) for k in want_d if got_d[k] != want_d[k]}
        expect(not wrong, "fields differ from the tiny preset with the listed changes: "
               + ", ".join(f"{k}={g!r} (expected {w!r})" for k, (g, w) in wrong.items()),
               "start from get_preset('tiny').model and change only prior, free_bits, decoder, decoder_layers, "
               "decoder_kernel, decoder_blocks_1x1 and weight_norm (the training check is sized for that model)")
        extent = VLAE(cfg).decoder.receptive_field_extent()
        mine = ex.receptive_field_extent(layers, kernel)
        expect(extent == mine, f"VLAE(vae_config({layers}, {kernel})).decoder spans {extent}, your arithmetic "
               f"says {mine}")


def _fake_images(n: int = 128, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.13), generator=generator)


def _small_model() -> VLAE:
    import dataclasses

    cfg = dataclasses.replace(get_preset("tiny").model, decoder_layers=1, decoder_kernel=3, **_TINY_CHANGES)
    return VLAE(cfg)


class _Run:
    """One call of the learner's ``train_vae`` on a small model, with every ``model.loss`` call recorded
    (its batch and the random state it started from), so the run can be replayed exactly."""

    def __init__(self, ex, images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int):
        import copy

        self.images, self.lr = images, lr
        torch.manual_seed(11)
        self.model = _small_model()
        self.initial = copy.deepcopy(self.model)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        loss = self.model.loss

        def recording_loss(x, *args, **kwargs):
            self.calls.append((x.detach().clone(), torch.get_rng_state()))
            if len(self.calls) > 10 * steps + 10:  # stop a loop that ignores `steps` before it takes minutes
                fail(f"train_vae(model, images, steps={steps}) called model.loss more than {10 * steps + 10} times",
                     "take `steps` optimiser steps: for _ in range(steps)")
            return loss(x, *args, **kwargs)

        self.model.loss = recording_loss
        ex.train_vae(self.model, images, steps, batch_size=batch_size, lr=lr, seed=seed)
        del self.model.loss

    def changed(self) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(self.initial.state_dict().values(),
                                                           self.model.state_dict().values()))

    def replay(self, lr: float | None = None, zero_grad: bool = True, fresh_optimizer: bool = False
               ) -> dict[str, torch.Tensor]:
        """The parameters a plain Adam loop reaches on the recorded batches (and noise)."""
        import copy

        model = copy.deepcopy(self.initial)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr if lr is None else lr)
        for x, state in self.calls:
            if fresh_optimizer:
                optimizer = torch.optim.Adam(model.parameters(), lr=self.lr if lr is None else lr)
            torch.set_rng_state(state)
            loss, _ = model.loss(x)
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.state_dict()

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        mine = self.model.state_dict()
        return all(torch.allclose(mine[k], v, atol=1e-6, rtol=1e-5) for k, v in state.items())


_LOOP_HINT = ("per step: x = images[torch.randint(len(images), (batch_size,), generator=g)]; loss, _ = model.loss(x); "
              "optimizer.zero_grad(); loss.backward(); optimizer.step(), with optimizer = torch.optim.Adam("
              "model.parameters(), lr=lr) created once, before the loop")


@CHECKS.check("train_vae changes the parameters (3 steps on a tiny model)")
def _trains(ex):
    run = _Run(ex, _fake_images(), steps=3, batch_size=4, lr=5e-3, seed=7)
    expect(run.calls, "train_vae never called model.loss(x)", "train on the bound the model defines: "
           "loss, _ = model.loss(x)")
    expect(run.changed(), "no parameter changed after 3 training steps",
           "create torch.optim.Adam(model.parameters(), lr=lr) and, per step: optimizer.zero_grad(), "
           "loss.backward(), optimizer.step() (in that order: zero_grad between backward and step erases the "
           "gradient)")
    for value in run.model.state_dict().values():
        expect(torch.isfinite(value).all(), "a parameter became NaN or inf during training")


@CHECKS.check("train_vae: `steps` steps, each on a new random batch of `batch_size` images, reproducible by seed")
def _batches(ex):
    images = _fake_images(64)
    run = _Run(ex, images, steps=3, batch_size=4, lr=5e-3, seed=7)
    n = len(run.calls)
    expect(n == 3, f"train_vae(model, images, steps=3) called model.loss {n} times, expected 3 (one per step)",
           "one optimiser step per iteration of `for _ in range(steps)`")
    flat = images.flatten(1)
    for t, (x, _) in enumerate(run.calls):
        expect(tuple(x.shape) == (4, 1, 28, 28), f"step {t} trained on a batch of shape {tuple(x.shape)}, "
               "expected (batch_size, 1, 28, 28) = (4, 1, 28, 28)", "draw batch_size indices per step: "
               "torch.randint(len(images), (batch_size,), generator=g)")
        found = (x.flatten(1)[:, None, :] == flat[None]).all(-1).any(1)
        expect(bool(found.all()), f"step {t} trained on images that are not in `images`",
               "index the images given: x = images[indices]")
    if all(torch.equal(x, run.calls[0][0]) for x, _ in run.calls[1:]):
        fail("every step trained on the same batch", "draw new random indices inside the loop, every step: one "
             "batch seen over and over is memorised, not learnt from")
    if all(torch.equal(x, images[4 * t:4 * t + 4]) for t, (x, _) in enumerate(run.calls)):
        fail("the batches are the images in order (images[0:4], images[4:8], ...)", "draw the batch at random: "
             "torch.randint(len(images), (batch_size,), generator=g)")
    again = _Run(ex, images, steps=3, batch_size=4, lr=5e-3, seed=7)
    if not all(torch.equal(a, b) for (a, _), (b, _) in zip(run.calls, again.calls)):
        fail("two runs with seed=7 trained on different batches", "draw the indices with a generator seeded with "
             "`seed`: g = torch.Generator().manual_seed(seed); torch.randint(..., generator=g)")
    other = _Run(ex, images, steps=3, batch_size=4, lr=5e-3, seed=8)
    if all(torch.equal(a, b) for (a, _), (b, _) in zip(run.calls, other.calls)):
        fail("seed=7 and seed=8 trained on the same batches: the seed is ignored",
             "draw the indices with a generator seeded with the argument: g = torch.Generator().manual_seed(seed); "
             "torch.randint(..., generator=g)")


@CHECKS.check("train_vae: Adam at the given learning rate, gradients zeroed every step (replayed exactly)")
def _optimiser(ex):
    run = _Run(ex, _fake_images(64), steps=3, batch_size=4, lr=5e-3, seed=7)
    expect(len(run.calls) == 3 and run.changed(), "train_vae does not train (see the checks above)")
    if run.matches(run.replay()):
        return
    # Not the reference loop: find which typical mistake reproduces the learner's parameters.
    candidates = [
        (dict(zero_grad=False), "the gradients accumulate over the steps: call optimizer.zero_grad() every step, "
                                "before loss.backward()"),
        (dict(lr=1e-3), "the optimiser runs at lr 0.001, Adam's default: pass the learning rate given, "
                        "torch.optim.Adam(model.parameters(), lr=lr)"),
        (dict(lr=2e-3), "the optimiser runs at lr 0.002, train_vae's default, not the lr given (0.005 here): "
                        "torch.optim.Adam(model.parameters(), lr=lr)"),
        (dict(fresh_optimizer=True), "a new optimiser is created every step, which resets Adam's running "
                                     "averages: create it once, before the loop"),
        (dict(zero_grad=False, lr=1e-3), "the gradients accumulate (no optimizer.zero_grad()) and the optimiser "
                                         "ignores the given lr"),
    ]
    for kwargs, hint in candidates:
        if run.matches(run.replay(**kwargs)):
            fail("replaying your 3 steps with a plain Adam loop gives other parameters", hint)
    fail("replaying your 3 steps with a plain Adam loop gives other parameters", "use torch.optim.Adam("
         "model.parameters(), lr=lr), and per step: optimizer.zero_grad(), loss.backward(), optimizer.step()")


class _Recorder:
    """Wraps ``model.terms`` to keep every batch it sees and the KL it returns."""

    def __init__(self, model: VLAE):
        self.seen: list[torch.Tensor] = []
        self.kl: list[torch.Tensor] = []
        self.nelbo: list[torch.Tensor] = []
        terms = model.terms

        def recording_terms(x, *args, **kwargs):
            out = terms(x, *args, **kwargs)
            self.seen.append(x.detach())
            self.kl.append(out.kl.detach().double())
            self.nelbo.append(out.nelbo.detach().double())
            return out

        model.terms = recording_terms


@CHECKS.check("final_kl: the mean of terms.kl over every image, in nats per image (exact)")
def _final_kl(ex):
    model = _small_model()
    images = _fake_images(250)
    recorder = _Recorder(model)
    got = ex.final_kl(model, images)
    if isinstance(got, torch.Tensor):
        expect(got.numel() == 1, f"final_kl returned a tensor of shape {tuple(got.shape)}, expected one number",
               "average over the images: .mean()")
        got = got.item()
    expect(isinstance(got, (float, int)), f"final_kl returned {type(got).__name__}, expected a float")
    expect(recorder.kl, f"final_kl returned {got!r} without calling model.terms",
           "compute the KL with model.terms(x).kl, batch by batch")
    seen = torch.cat(recorder.seen)
    if len(seen) != len(images) or not torch.equal(seen, images):
        fail(f"final_kl passed {len(seen)} images to model.terms, expected each of the {len(images)} images once",
             "loop over all the images in batches: for i in range(0, len(images), batch_size): images[i:i + "
             "batch_size]")
    kl = torch.cat(recorder.kl)
    want = kl.mean().item()
    if abs(got - want) <= 1e-5 * (1 + abs(want)):
        return
    latent = model.latent_dim
    candidates = [
        (kl.sum().item(), "that is the sum over the images: average them (nats per image)"),
        (want / latent, "that is a per-dimension mean: the KL per image sums over the latent dimensions "
                        "(terms.kl already does), then average over the images"),
        (torch.stack([k.mean() for k in recorder.kl]).mean().item(),
         "that is the mean of the batch means: the last batch is smaller, so weight every image equally "
         "(concatenate the per-image KLs, then take one mean)"),
        (recorder.kl[-1].mean().item(), "that is the mean of the last batch only: average over all the batches"),
        (torch.cat(recorder.nelbo).mean().item(), "that is the negative ELBO (terms.nelbo): the KL is terms.kl"),
    ]
    hint = next((h for v, h in candidates if abs(got - v) <= 1e-5 * (1 + abs(v))),
                "return torch.cat([model.terms(batch).kl for each batch]).mean().item()")
    fail(f"final_kl = {got:.4f}, but the KLs model.terms returned during the call average {want:.4f} nats", hint)


@CHECKS.check("kl_after_training: builds the decoder asked for, trains it with train_vae and returns final_kl "
              "on the test images")
def _kl_after_training(ex):
    import inspect

    built, trained, measured = [], [], []
    original = (ex.VLAE, ex.train_vae, ex.final_kl)

    class Recording(original[0]):  # notes every model kl_after_training builds
        def __init__(self, cfg):
            super().__init__(cfg)
            built.append(self)

    def train_vae(*args, **kwargs):
        trained.append(inspect.signature(original[1]).bind(*args, **kwargs).arguments)
        return original[1](*args, **kwargs)

    def final_kl(*args, **kwargs):
        measured.append(inspect.signature(original[2]).bind(*args, **kwargs).arguments)
        value = original[2](*args, **kwargs)
        measured[-1]["result"] = value
        return value

    train, test = _fake_images(64), _fake_images(40, seed=2)
    ex.VLAE, ex.train_vae, ex.final_kl = Recording, train_vae, final_kl
    try:
        kl = ex.kl_after_training(3, 5, train, test, steps=2, seed=3)
    finally:
        ex.VLAE, ex.train_vae, ex.final_kl = original
    expect(len(built) == 1, f"kl_after_training built {len(built)} models, expected one",
           "build it with VLAE(vae_config(decoder_layers, decoder_kernel)), VLAE as imported at the top")
    model = built[0]
    got = (model.cfg.decoder_layers, model.cfg.decoder_kernel)
    expect(got == (3, 5), f"kl_after_training(3, 5, ...) built a decoder with {got[0]} layers of {got[1]}x{got[1]}",
           "pass decoder_layers and decoder_kernel on to vae_config")
    expect(len(trained) == 1, f"kl_after_training called train_vae {len(trained)} times, expected once",
           "train the model with train_vae(model, train_images, steps, seed=seed) before measuring the KL")
    call = trained[0]
    expect(call.get("model") is model, "train_vae was called on another model than the one built")
    expect(call.get("images") is train, "train_vae was not given the training images",
           "train_vae(model, train_images, steps, seed=seed)")
    expect(call.get("steps") == 2, f"train_vae ran {call.get('steps')} steps, kl_after_training was asked for 2",
           "pass `steps` on")
    expect(call.get("seed", 0) == 3, f"train_vae got seed {call.get('seed', 0)}, kl_after_training was given seed 3",
           "pass the seed on: train_vae(..., seed=seed)")
    expect(len(measured) == 1, f"kl_after_training called final_kl {len(measured)} times, expected once",
           "return final_kl(model, test_images)")
    kl_call = measured[0]
    expect(kl_call.get("model") is model, "final_kl measured another model than the one trained")
    if kl_call.get("images") is train:
        fail("the KL is measured on the training images", "measure it on held-out data: final_kl(model, "
             "test_images)")
    expect(kl_call.get("images") is test, "final_kl was not given the test images",
           "return final_kl(model, test_images)")
    if isinstance(kl, torch.Tensor) and kl.numel() == 1:
        kl = kl.item()
    expect(isinstance(kl, (float, int)) and math.isfinite(kl) and kl == kl_call["result"],
           f"kl_after_training returned {kl!r}, but final_kl gave {kl_call['result']!r}",
           "return final_kl(model, test_images)")


# CPU seconds per training run on an idle machine (see _checker.TimeBudget): the
# reference needs about 7 s (small decoder) and 20 s (whole-image decoder), so the
# larger run's budget is 1.5 times its measured reference, about 35 s, and a slow
# wrong run stops within 12 + 35 s.
_TIME_BUDGET = 12.0


def _reference_step(model: VLAE, x: torch.Tensor):
    """One plain training step on a copy of ``model`` (for the time budget only)."""
    import copy

    copied = copy.deepcopy(model)
    optimizer = torch.optim.Adam(copied.parameters(), lr=2e-3)

    def step():
        loss, _ = VLAE.loss(copied, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


@CHECKS.check("collapse: a small receptive field keeps the KL up, a whole-image one collapses it", expensive=True)
def _collapse(ex):
    train, test, source = training_data()
    layers_large = ex.layers_to_see_rows(27, _LARGE_KERNEL)
    original = ex.VLAE

    class Timed(original):  # stops a run that would take minutes, with a message instead of a wait
        def __init__(self, cfg):
            super().__init__(cfg)
            self._budget = TimeBudget(_reference_step(self, train[:32]), _STEPS, floor=_TIME_BUDGET)
            self._steps = 0

        def loss(self, *args, **kwargs):
            self._budget.check(self._steps, "train_vae takes `steps` steps of batch_size images each: check for "
                                            "extra work in the loop")
            self._steps += 1
            return super().loss(*args, **kwargs)

    kls = {}
    ex.VLAE = Timed
    try:
        for layers, kernel in (_SMALL, (layers_large, _LARGE_KERNEL)):
            torch.manual_seed(0)
            kls[(layers, kernel)] = float(ex.kl_after_training(layers, kernel, train, test, steps=_STEPS))
    finally:
        ex.VLAE = original
    small, large = kls[_SMALL], kls[(layers_large, _LARGE_KERNEL)]
    up_small = ex.receptive_field_extent(*_SMALL)["up"]
    up_large = ex.receptive_field_extent(layers_large, _LARGE_KERNEL)["up"]
    summary = (f"KL after {_STEPS} steps ({source}): decoder of {_SMALL[0]} layer {_SMALL[1]}x{_SMALL[1]} "
               f"({up_small} row up) {small:.2f} nats; decoder of {layers_large} layers "
               f"{_LARGE_KERNEL}x{_LARGE_KERNEL} ({up_large} rows up) {large:.2f} nats")
    expect(small > SMALL_KL_MIN, summary + f"\nthe small decoder should keep the KL above {SMALL_KL_MIN} nats",
           f"z carries only {small:.2f} nats although the decoder sees one row up; every exact check passed, so "
           "look for what they cannot see (e.g. a change to the model inside train_vae)")
    expect(large < COLLAPSE_RATIO * small, summary + f"\nthe whole-image decoder should keep less than "
           f"{COLLAPSE_RATIO:.0%} of the small decoder's KL",
           f"the whole-image decoder kept {large / max(small, 1e-9):.0%} of the small one's KL; every exact check "
           "passed, so look for what they cannot see (e.g. a change to the model inside train_vae)")
    return summary + " -- collapsed"


if __name__ == "__main__":
    raise SystemExit(main(CHECKS, __file__, sys.modules[__name__]))
