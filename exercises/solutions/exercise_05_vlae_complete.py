"""Solution of exercise 5 -- The complete VLAE: cure the collapse.

Task
    Assemble a Variational Lossy Autoencoder from the library's building blocks
    (given in ``__init__``: ResNet encoder, AF prior, upsampler of ``z`` to a
    conditioning map, masked PixelCNN decoder with a *small* receptive field)
    by writing the five pieces of its training objective:

    1. ``posterior_sample``: ``z = mu + sigma * eps`` from the encoder's diagonal
       Gaussian (reparameterised), and ``log q(z|x)`` per latent dimension.
    2. ``kl_per_dim``: ``log q(z|x) - log p(z)`` per dimension, with ``p`` the
       model's AF prior (``self.prior.log_prob_per_dim``).
    3. ``logits``: the decoder's Bernoulli logits given ``x`` (teacher forcing)
       and the conditioning map computed from ``z``.
    4. ``free_bits_kl``: the KL term with free bits: the latent dimensions are
       split into ``G`` groups, and each group's batch-mean KL is floored at
       ``floor / G`` nats, ``sum_g max(floor / G, mean_batch KL_g)``. This is
       the hard floor of Kingma et al. (2016); the VLAE paper's appendix C uses
       a soft version instead (the KL's weight is adjusted during training to
       hold the KL near the target; ``vlae train`` offers both).
    5. ``loss``: mean reconstruction ``-log p(x|z)`` plus the free-bits KL.

    Three things cure the collapse of exercise 3 together: the decoder sees only
    2 rows up, so the digit's shape has to come through ``z``; the AF prior makes
    ``z`` cheap to encode; free bits stop the optimiser from switching ``z`` off
    early in training. The checker verifies each piece exactly, then trains the
    model for 300 steps (about 25 s on one CPU thread).

    The prior is mean-only, like the paper's AF prior: each step is
    ``eps = z + m(z)``, whose Jacobian is triangular with ones on the diagonal,
    so its log-determinant is zero and ``log p(z) = log N(eps; 0, I)``. A KL
    that forgets the log-determinant would go unnoticed here; the checker
    therefore also tests ``kl_per_dim`` with a prior whose steps have a scale
    (exercise 4's general step), where the term does not vanish.

    The library's encoder and decoders read images scaled to [-1, 1]: give them
    ``2 * x - 1`` (so that the decoder's zero padding differs from a black
    pixel); the likelihood ``bernoulli_log_prob(logits, x)`` takes the 0/1 images.

Paper
    VLAE (Chen et al., ICLR 2017): "Lossy code via explicit information placement"
    and "Learned prior with autoregressive flow"; free bits from Kingma et al.
    (2016), "Improved variational inference with inverse autoregressive flow".
    In this repository: ``paper_notes.md`` sections 1, 3 and 5; ``src/vlae/model.py``.

Prerequisites
    Exercises 1-4. Library API used: ``Encoder(2 * x - 1) -> (mu, log_sigma, h)``,
    ``AFPrior.log_prob_per_dim(z) -> (B, D)``, ``ConditionUpsampler(z) -> (B, 4, 28, 28)``,
    ``MaskedPixelCNN(2 * x - 1, cond) -> logits``, ``bernoulli_log_prob(logits, x) -> (B,)``.

Expected time
    45-60 minutes (plus under a minute of training in the checker).

Run
    python exercises/exercise_05_vlae_complete.py              # check your code
    python exercises/exercise_05_vlae_complete.py --solution   # check the reference solution
    python exercises/exercise_05_vlae_complete.py --quick      # skip the training check
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from vlae.encoder import Encoder
from vlae.flows import AFPrior
from vlae.observation import bernoulli_log_prob
from vlae.pixelcnn import ConditionUpsampler, MaskedPixelCNN


class MiniVLAE(nn.Module):
    """A small VLAE for 28x28 binary images.

    Args:
        latent_dim: ``D``.
        decoder_layers: masked layers of the decoder (2: it sees 2 rows up).
        free_bits: the KL floor in nats per data dimension (the paper's target:
            0.01, held there by its soft schedule; here a hard floor); the total
            floor is ``free_bits * 784`` nats.
        free_bits_groups: ``G``, groups of latent dimensions, each floored at
            ``floor / G``; must divide ``D``.
    """

    def __init__(self, latent_dim: int = 8, decoder_layers: int = 2, free_bits: float = 0.01,
                 free_bits_groups: int = 1, flow_steps: int = 2, flow_hidden: tuple[int, ...] = (16,)):
        super().__init__()
        if latent_dim % free_bits_groups:
            raise ValueError(f"free_bits_groups={free_bits_groups} must divide latent_dim={latent_dim}")
        self.latent_dim = latent_dim
        self.free_bits_floor = free_bits * 28 * 28  # nats, all groups together
        self.free_bits_groups = free_bits_groups
        self.encoder = Encoder(latent_dim, (1, 28, 28), channels=8, blocks=1)
        self.prior = AFPrior(latent_dim, steps=flow_steps, hidden=flow_hidden)
        self.upsampler = ConditionUpsampler(latent_dim, (1, 28, 28), channels=8, cond_channels=4, blocks=1)
        self.decoder = MaskedPixelCNN(layers=decoder_layers, kernel_size=3, filters=8, cond_channels=4,
                                      blocks_1x1=1, tie_weights=False)

    def posterior_sample(self, x: torch.Tensor, eps: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z ~ q(z|x)`` by reparameterisation, and ``log q(z|x)`` per dimension.

        Args:
            x: images ``(B, 1, 28, 28)``.
            eps: the standard-normal noise ``(B, D)`` (default: drawn here).

        Returns:
            ``z (B, D)`` and ``log N(z_d; mu_d, sigma_d)`` per dimension ``(B, D)``.
        """
        mu, log_sigma, _ = self.encoder(2 * x - 1)  # the library's networks read [-1, 1] images
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + log_sigma.exp() * eps  # differentiable in mu and sigma: the reparameterisation trick
        log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)) - log_sigma
        return z, log_q

    def kl_per_dim(self, z: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """Single-sample KL estimate per dimension, ``(B, D)``: ``log q(z|x) - log p(z)``
        with the model's own prior."""
        return log_q - self.prior.log_prob_per_dim(z)

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits ``(B, 1, 28, 28)`` for images ``x`` given codes ``z (B, D)``."""
        return self.decoder(2 * x - 1, self.upsampler(z))  # -1/+1: padding differs from a pixel

    def free_bits_kl(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """The KL term of the training loss: ``sum_g max(floor / G, mean over the batch of KL_g)``,
        where ``KL_g`` sums ``kl_per_dim`` over group ``g``'s dimensions (consecutive
        blocks of ``D / G``). A scalar."""
        batch = kl_per_dim.shape[0]
        per_group = kl_per_dim.view(batch, self.free_bits_groups, -1).sum(-1).mean(0)
        # Below its floor a group gets no gradient: nothing is gained by pushing it to zero.
        return per_group.clamp_min(self.free_bits_floor / self.free_bits_groups).sum()

    def loss(self, x: torch.Tensor, eps: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, recon, kl)``: the scalar training loss (mean reconstruction plus
        the free-bits KL), ``recon = -log p(x|z)`` per image ``(B,)`` and the plain
        KL estimate per image ``(B,)`` (no free bits: ``recon + kl`` is -ELBO)."""
        z, log_q = self.posterior_sample(x, eps)
        kl_per_dim = self.kl_per_dim(z, log_q)
        recon = -bernoulli_log_prob(self.logits(x, z), x)
        return recon.mean() + self.free_bits_kl(kl_per_dim), recon, kl_per_dim.sum(1)
