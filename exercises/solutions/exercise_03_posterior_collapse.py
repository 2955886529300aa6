"""Solution of exercise 3 -- Posterior collapse: grow the decoder's receptive field and watch the KL vanish.

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

import torch

from vlae import VLAE, ModelConfig, get_preset


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
    reach = kernel_size // 2  # how far one layer, type A or B, reads in each direction it may read
    return {
        "up": layers * reach,  # every layer reads `reach` rows above, and the layers compose
        "down": 0,  # no mask ever reads a row below
        "left": layers * reach,
        "right": layers * reach,  # the rows above are read in full width, even by type A
    }


def layers_to_see_rows(rows: int, kernel_size: int) -> int:
    """The fewest masked layers whose receptive field reaches ``rows`` rows up.

    Raises:
        ValueError: no depth suffices (a 1x1 masked kernel sees nothing).

    Example:
        >>> layers_to_see_rows(27, 3)  # the top row, from the bottom row of a 28x28 image
        27
    """
    reach = kernel_size // 2
    if reach == 0:
        raise ValueError(f"a {kernel_size}x{kernel_size} masked kernel sees no rows above at any depth")
    return math.ceil(rows / reach)


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
    cfg = get_preset("tiny").model
    cfg.prior = "gaussian"  # nothing but the decoder decides whether z is used
    cfg.free_bits = 0.0  # no floor under the KL: collapse must be able to happen
    cfg.decoder = "masked"
    cfg.decoder_layers, cfg.decoder_kernel = decoder_layers, decoder_kernel
    cfg.decoder_blocks_1x1 = 0
    cfg.weight_norm = False  # default initialisation: the KL starts small, the short run is less noisy
    return cfg


def train_vae(model: VLAE, images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3,
              seed: int = 0) -> None:
    """Train ``model`` in place on the single-sample bound, ``model.loss(x)``.

    Args:
        images: float 0/1 images ``(N, 1, 28, 28)``.
        steps: optimiser steps; each on ``batch_size`` images drawn at random
            (``torch.randint`` with a ``torch.Generator`` seeded with ``seed``).
        lr: Adam's learning rate.
    """
    batches = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=batches)]
        loss, _ = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def final_kl(model: VLAE, images: torch.Tensor, batch_size: int = 100) -> float:
    """The mean of ``log q(z|x) - log p(z)`` over ``images``, in nats per image
    (``model.terms(x).kl`` holds it per image; no gradients needed)."""
    model.eval()
    with torch.no_grad():
        kl = [model.terms(images[i:i + batch_size]).kl for i in range(0, len(images), batch_size)]
    return torch.cat(kl).mean().item()


def kl_after_training(decoder_layers: int, decoder_kernel: int, train_images: torch.Tensor,
                      test_images: torch.Tensor, steps: int, seed: int = 0) -> float:
    """Build ``VLAE(vae_config(decoder_layers, decoder_kernel))``, train it for
    ``steps`` steps on ``train_images`` (with ``train_vae``, seed ``seed``) and
    return its :func:`final_kl` on ``test_images``."""
    model = VLAE(vae_config(decoder_layers, decoder_kernel))
    train_vae(model, train_images, steps, seed=seed)
    return final_kl(model, test_images)
