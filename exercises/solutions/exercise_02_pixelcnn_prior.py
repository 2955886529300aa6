"""Solution of exercise 2 -- A PixelCNN density estimator for binarized MNIST.

Task
    Build a small PixelCNN, the decoder family of the VLAE, as a standalone
    model of p(x) = prod_i p(x_i | x_<i) over the 784 binary pixels, and its loss:

    1. ``PixelCNN``: a type-A masked convolution of the image, then type-B masked
       convolutions with a non-linearity (ReLU or ELU) between them, then a 1x1
       convolution to one Bernoulli logit per pixel.
    2. ``bernoulli_nll(logits, x)``: the negative log-likelihood in nats per image,
       ``-sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)]``.

    The checker inspects the layers your forward pass applies (their number,
    kernel sizes, mask types, channels, a non-linearity between consecutive
    layers, no layer shared between depths), proves the autoregressive property
    from the Jacobian, tests the NLL on a case worked out by hand, and finally
    trains your network for 250 steps (about 15-20 s on one CPU thread) and
    measures the test NLL.

Paper
    VLAE (Chen et al., ICLR 2017) decodes with a PixelCNN ("Lossy code via
    explicit information placement"; the MNIST architecture is in the appendix).
    PixelCNN: van den Oord et al. (2016), "Pixel Recurrent Neural Networks",
    sections 3.4-3.5. Likelihood: ``src/vlae/observation.py``.

Prerequisite
    Exercise 1 (masked convolutions). Use the library's ``MaskedConv2d`` below.

Expected time
    30-45 minutes (plus under a minute of training in the checker).

Run
    python exercises/exercise_02_pixelcnn_prior.py              # check your code
    python exercises/exercise_02_pixelcnn_prior.py --solution   # check the reference solution
    python exercises/exercise_02_pixelcnn_prior.py --quick      # skip the training check
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlae.masked_conv import MaskedConv2d  # MaskedConv2d(in, out, kernel, mask_type="A" or "B"), "same" padding


class PixelCNN(nn.Module):
    """Unconditional PixelCNN: binary images ``(B, 1, H, W)`` -> logits ``(B, 1, H, W)``.

    ``logits[b, 0, i, j]`` must depend only on the pixels before ``(i, j)`` in
    raster order (rows above, and pixels left of it in its row).

    Args:
        channels: feature maps of every hidden layer.
        hidden_layers: number of type-B masked layers after the first (type-A) one.
        first_kernel: kernel size of the type-A layer (a wide first layer sees
            more context cheaply).
        kernel: kernel size of the type-B layers.

    Example:
        >>> model = PixelCNN(channels=16, hidden_layers=3)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, channels: int = 16, hidden_layers: int = 3, first_kernel: int = 7, kernel: int = 3):
        super().__init__()
        self.first = MaskedConv2d(1, channels, first_kernel, "A")
        self.hidden = nn.ModuleList(MaskedConv2d(channels, channels, kernel, "B") for _ in range(hidden_layers))
        self.out = nn.Conv2d(channels, 1, 1)  # 1x1: mixes channels at a pixel, never neighbours

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(2 * x - 1))  # -1/+1 input: the zero padding is distinguishable from a pixel
        for conv in self.hidden:
            h = F.relu(conv(h))
        return self.out(h)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of binary images, in nats per image.

    Args:
        logits: ``(B, 1, H, W)``, ``p(x_i = 1) = sigmoid(logits_i)``.
        x: ``(B, 1, H, W)`` of 0/1.

    Returns:
        ``(B,)``: ``-sum_i log p(x_i)`` over all pixels of each image. Must stay
        finite and exact for large logits (|logit| of 100 and more).
    """
    # binary_cross_entropy_with_logits works with log-sigmoids directly: exact for any logit.
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return nll.flatten(1).sum(1)
