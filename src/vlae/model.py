"""The Variational Lossy Autoencoder: encoder, prior, decoder and the bounds.

For an image ``x`` and a single ``z ~ q(z|x)``,

    -ELBO(x) = -log p(x|z)  +  [log q(z|x) - log p(z)]
             =  reconstruction  +  KL estimate                 (nats per image)

and the importance-weighted bound with ``k`` samples (Burda et al., 2016),

    log p(x) >= log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x),    z_j ~ q(z|x),

which tightens as ``k`` grows; the paper reports it with ``k = 4096``.

The prior is either a standard Gaussian or the AF prior; the posterior a
diagonal Gaussian or IAF; the decoder one of :data:`vlae.pixelcnn.DECODERS`.
With ``latent_dim = 0`` the model is an unconditional PixelCNN, and every
bound equals the exact log-likelihood.

Example:
    >>> from vlae.config import get_preset
    >>> model = VLAE(get_preset("tiny").model)
    >>> x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.2))
    >>> loss, terms = model.loss(x)
    >>> model.iw_bound(x, k=8).shape
    torch.Size([4])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import ModelConfig
from .encoder import Encoder
from .errors import VLAEError
from .flows import AFPrior, GaussianPrior, IAFPosterior
from .layers import data_dependent_init
from .likelihood import bernoulli_from_uniform, bernoulli_log_prob
from .pixelcnn import DECODERS, ConditionUpsampler, FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN

__all__ = ["VLAE", "Terms", "nats_to_bits_per_dim"]


def nats_to_bits_per_dim(nats: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """Convert nats per image to bits per dimension."""
    return nats / (dims * math.log(2))


@dataclass
class Terms:
    """Per-example terms of the single-sample bound, all in nats, shape ``(B,)``
    (``kl_per_dim``: ``(B, D)``)."""

    recon: torch.Tensor  # -log p(x|z)
    kl: torch.Tensor  # log q(z|x) - log p(z)
    kl_per_dim: torch.Tensor

    @property
    def nelbo(self) -> torch.Tensor:
        """Negative ELBO, an upper bound on -log p(x)."""
        return self.recon + self.kl


class VLAE(nn.Module):
    """Variational Lossy Autoencoder.

    Args:
        cfg: a validated :class:`~vlae.config.ModelConfig`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, wn = cfg.latent_dim, cfg.weight_norm
        cond = cfg.cond_channels if d > 0 else 0
        if d > 0:
            context = cfg.iaf_context if (cfg.posterior == "iaf" and cfg.iaf_steps > 0) else 0
            self.encoder = Encoder(d, cfg.image_shape, cfg.encoder_channels, cfg.encoder_blocks, context, wn)
            self.posterior = IAFPosterior(d, cfg.iaf_steps if cfg.posterior == "iaf" else 0, cfg.iaf_hidden, context)
            self.prior = (AFPrior(d, cfg.flow_steps, cfg.made_hidden, cfg.mean_only, cfg.made_activation)
                          if cfg.prior == "af" else GaussianPrior(d))
            self.upsampler = ConditionUpsampler(d, cfg.image_shape, cfg.upsampler_channels, cond,
                                                cfg.upsampler_blocks, wn)
        if cfg.decoder == "masked":
            self.decoder = MaskedPixelCNN(cfg.decoder_layers, cfg.decoder_kernel, cfg.decoder_filters, cond,
                                          cfg.decoder_blocks_1x1, cfg.tie_weights, cfg.cond_every_layer, wn)
        elif cfg.decoder == "gated":
            self.decoder = GatedPixelCNN(cfg.decoder_layers, cfg.decoder_kernel, cfg.decoder_filters, cond,
                                         cfg.cond_every_layer, wn)
        else:
            self.decoder = FactorizedDecoder(cond, cfg.decoder_filters, wn)
        assert type(self.decoder) is DECODERS[cfg.decoder]

    # ------------------------------------------------------------------ helpers
    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def _anchor(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    def check_images(self, x: torch.Tensor, values: bool = True) -> torch.Tensor:
        """Raise :class:`VLAEError` unless ``x`` is ``(B, *image_shape)`` of 0/1;
        return it as a float tensor on the model's device."""
        if not isinstance(x, torch.Tensor):
            raise VLAEError(f"images must be a torch.Tensor, got {type(x).__name__}")
        expected = tuple(self.cfg.image_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise VLAEError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if values and ((x != 0) & (x != 1)).any():
            raise VLAEError("images must be binary (0/1); binarize them first")
        return x.to(device=self._anchor.device, dtype=self._anchor.dtype)

    def condition(self, z: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning map ``(B, C_c, H, W)`` computed from ``z`` (``None`` without a latent)."""
        return None if z is None else self.upsampler(z)

    def logits(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced decoder logits ``(B, 1, H, W)``."""
        return self.decoder(x, self.condition(z))

    def posterior_sample(self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples per image from q(z|x): ``z (n*B, D)`` ordered sample-major
        (``z[s * B + b]``), and ``log q`` per dimension ``(n*B, D)``."""
        mu, log_sigma, h = self.encoder(x)
        rep = lambda t: t.repeat(n, 1)  # noqa: E731
        eps = torch.randn((n * x.shape[0], self.latent_dim), generator=generator, device=mu.device, dtype=mu.dtype)
        return self.posterior.rsample(rep(mu), rep(log_sigma), rep(h), eps)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation of the weight-normalised layers from a batch."""
        x = self.check_images(x)
        data_dependent_init(self, x, method="terms")

    # ------------------------------------------------------------------ bounds
    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Terms:
        """Single-sample bound terms for a batch ``x (B, 1, H, W)``."""
        x = self.check_images(x, values=False)  # shape only: a value check would sync the GPU every step
        if self.latent_dim == 0:
            recon = -bernoulli_log_prob(self.decoder(x, None), x)
            zero = recon.new_zeros(x.shape[0])
            return Terms(recon, zero, zero[:, None])
        z, log_q = self.posterior_sample(x, 1, generator)
        kl_per_dim = log_q - self.prior.log_prob_per_dim(z)
        recon = -bernoulli_log_prob(self.logits(x, z), x)
        return Terms(recon, kl_per_dim.sum(1), kl_per_dim)

    def forward(self, x: torch.Tensor, method: str = "terms"):
        # ``forward`` exists so DDP and data-dependent init can call the model.
        if method != "terms":
            raise ValueError(f"unknown method {method!r}")
        return self.terms(x)

    def kl_penalty(self, terms: Terms, free_bits: bool = True) -> torch.Tensor:
        """Batch KL term of the training loss, with free bits if configured.

        Free bits (Kingma et al., 2016, IAF paper): the latent dimensions are split
        into ``G`` groups and each group's batch-mean KL is floored at
        ``lambda = free_bits * data_dims / G`` nats, so the optimiser gains
        nothing by pushing a group's KL below the floor.
        """
        lam = self.cfg.free_bits * self.cfg.data_dims
        if not free_bits or lam == 0 or self.latent_dim == 0:
            return terms.kl.mean()
        g = self.cfg.free_bits_groups
        per_group = terms.kl_per_dim.view(terms.kl_per_dim.shape[0], g, -1).sum(-1).mean(0)
        return per_group.clamp_min(lam / g).sum()

    def loss(self, x: torch.Tensor, kl_weight: float = 1.0, free_bits: bool = True,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, Terms]:
        """Training objective (nats per image, batch mean) and the raw terms."""
        terms = self.terms(x, generator)
        return terms.recon.mean() + kl_weight * self.kl_penalty(terms, free_bits), terms

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(x|z_j) + log p(z_j) - log q(z_j|x)`` for ``k`` samples: ``(k, B)``."""
        if self.latent_dim == 0:
            return (-self.terms(x).recon)[None].expand(k, -1)
        z, log_q = self.posterior_sample(x, k, generator)
        xk = x.repeat(k, 1, 1, 1)
        log_w = bernoulli_log_prob(self.logits(xk, z), xk) + self.prior.log_prob(z) - log_q.sum(1)
        return log_w.view(k, x.shape[0])

    @torch.no_grad()
    def iw_bound(self, x: torch.Tensor, k: int, chunk: int = 0, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Importance-weighted lower bound on ``log p(x)`` with ``k`` samples.

        Samples are drawn ``chunk`` at a time (default: about 4,096 decoder
        evaluations per pass on a GPU, 1,024 on a CPU) so memory does not grow with ``k``; the
        log-sum-exp runs in float64. With a fixed ``generator`` the value is
        reproducible for a fixed ``chunk``; another chunk size consumes the random
        stream differently and gives another (equally valid) estimate.

        Returns:
            ``(B,)`` float64, nats per image (negate for the NLL).
        """
        x = self.check_images(x)
        if k < 1:
            raise VLAEError(f"k must be >= 1, got {k}")
        # Big passes pay on a GPU; on a CPU, passes of ~1,000 images run faster.
        per_pass = 4096 if x.device.type == "cuda" else 1024
        chunk = chunk or max(1, per_pass // x.shape[0])
        acc = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, k, chunk):
            log_w = self.log_weights(x, min(chunk, k - start), generator).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        return acc - math.log(k)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, z: torch.Tensor | None = None, u: torch.Tensor | None = None,
               generator: torch.Generator | None = None, return_probs: bool = False):
        """Naive exact sampling: ``z`` from the prior, then ``x`` pixel by pixel,
        re-running the whole decoder for each of the ``H * W`` pixels.

        Args:
            n: number of images.
            z: ``(n, D)`` latent codes (default: drawn from the prior).
            u: ``(n, 1, H, W)`` uniforms deciding each pixel (default: drawn).
            generator: random generator for ``z`` and ``u``.
            return_probs: also return the per-pixel probabilities used.

        Returns:
            ``x (n, 1, H, W)`` in {0, 1} (and probabilities ``(n, 1, H, W)``).
        """
        dev, dtype = self._anchor.device, self._anchor.dtype
        if z is None and self.latent_dim > 0:
            z = self.prior.sample(n, generator=generator)
        if u is None:
            u = torch.rand((n, *self.cfg.image_shape), generator=generator, device=dev, dtype=dtype)
        return self.decode(z, u, return_probs=return_probs)

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, u: torch.Tensor, return_probs: bool = False):
        """Draw ``x ~ p(x|z)`` pixel by pixel given uniforms ``u (n, 1, H, W)``."""
        cond = self.condition(z)
        x = torch.zeros_like(u)
        probs = torch.zeros_like(u)
        if isinstance(self.decoder, FactorizedDecoder):
            logits = self.decoder(x, cond)
            probs, x = torch.sigmoid(logits), bernoulli_from_uniform(logits, u)
        else:
            _, height, width = self.cfg.image_shape
            for i in range(height):
                for j in range(width):
                    logits = self.decoder(x, cond)[:, :, i, j]
                    probs[:, :, i, j] = torch.sigmoid(logits)
                    x[:, :, i, j] = bernoulli_from_uniform(logits, u[:, :, i, j])
        return (x, probs) if return_probs else x

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None,
                    sampler=None) -> torch.Tensor:
        """Lossy reconstructions: ``z ~ q(z|x)`` once per image, then ``n``
        draws ``x' ~ p(x|z)`` with that same ``z``.

        Returns:
            ``(n, B, 1, H, W)``; the spread across the first axis shows what
            ``z`` leaves to the decoder (local texture, not global shape).
        """
        x = self.check_images(x)
        if self.latent_dim == 0:
            raise VLAEError("an unconditional PixelCNN has no latent code to reconstruct from")
        z, _ = self.posterior_sample(x, 1, generator)
        zn = z.repeat(n, 1)
        u = torch.rand((zn.shape[0], *self.cfg.image_shape), generator=generator, device=z.device, dtype=z.dtype)
        out = (sampler or self.decode)(zn, u)
        return out.view(n, x.shape[0], *self.cfg.image_shape)
