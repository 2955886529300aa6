"""The Variational Lossy Autoencoder: encoder, prior, decoder and the bounds.

For an image ``x`` and a single ``z ~ q(z|x)``,

    -ELBO(x) = -log p(x|z)  +  [log q(z|x) - log p(z)]
             =  reconstruction  +  KL estimate                 (nats per image)

and the importance-weighted bound with ``k`` samples (Burda et al., 2016),

    log p(x) >= log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x),    z_j ~ q(z|x),

which tightens as ``k`` grows; the paper reports it with ``k = 4096``.

The prior is either a standard Gaussian or the AF prior; the posterior a
diagonal Gaussian or IAF; the decoder one of :data:`vlae.pixelcnn.DECODERS`,
whose outputs an observation model (:mod:`vlae.observation`: Bernoulli for
binary images, the discretized logistic mixture for 8-bit ones) turns into
``log p(x|z)`` and into samples. The observation model also validates input
values and scales images to [-1, 1] for the encoder and the decoder.
With ``latent_dim = 0`` the model is an unconditional PixelCNN, and every
bound equals the exact log-likelihood.

Example:
    >>> from vlae.config import get_preset
    >>> model = VLAE(get_preset("tiny").model)
    >>> x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.2))
    >>> loss, terms = model.loss(x)
    >>> model.iw_bound(x, k=8).shape
    torch.Size([4])
    >>> from vlae.config import ModelConfig
    >>> colour = VLAE(ModelConfig(image_shape=(3, 8, 8), observation="logistic_mixture", latent_dim=8,
    ...                           made_hidden=(16,), decoder="gated", decoder_field="5x3"))
    >>> colour.sample(2).shape          # integers 0..255 as floats
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .conditioning import ConditionUpsampler, SpatialUpsampler
from .config import ModelConfig
from .encoder import Encoder, SpatialEncoder
from .errors import VLAEError
from .flows import AFPrior, GaussianPrior, IAFPosterior
from .layers import data_dependent_init
from .observation import ObservationModel, observation_model
from .pixelcnn import DECODERS, FactorizedDecoder, GatedPixelCNN, MaskedPixelCNN
from .spatial_prior import SpatialAFPrior

__all__ = ["VLAE", "Terms", "nats_to_bits_per_dim", "samples_per_pass"]


def samples_per_pass(x: torch.Tensor) -> int:
    """Importance samples per image in one pass when none is asked for, for the
    images ``x (B, C, H, W)``: about 4,096 decoder evaluations per pass on a GPU,
    64 on a CPU (at least one sample per image).

    A GPU wants big passes. A CPU wants the pass's feature maps to stay in cache:
    64 evaluations of ``mnist-paper`` (64-channel 28x28 maps) are 13 MB. Measured on
    2 cores, IW samples/s against the pass size 16 / 32 / 64 / 128 / 256 / 1024:
    ``mnist-paper`` 368 / 460 / 476 / 513 / 471 / 288, ``mnist-gated`` 296 / 328 /
    336 / 289 / 213 / 127, ``cifar-small`` 292 / 306 / 246 / 215 / 137 (to 256).
    """
    evaluations = 4096 if x.device.type == "cuda" else 64
    return max(1, evaluations // x.shape[0])


def nats_to_bits_per_dim(nats: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """Convert nats per image to bits per dimension."""
    return nats / (dims * math.log(2))


def full_precision(t: torch.Tensor):
    """Autocast off on ``t``'s device: under bf16 autocast the densities log q(z|x) and
    log p(z), and so the KL, stay in float32 (bf16 would round a KL of ~100 nats to
    0.5-1 nat, the size of the free-bits floor's margin)."""
    return torch.autocast(t.device.type, enabled=False)


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
        self.observation: ObservationModel = observation_model(cfg)  # no parameters: weights load unchanged
        if d > 0:
            context = cfg.iaf_context if (cfg.posterior == "iaf" and cfg.iaf_steps > 0) else 0
            self.posterior = IAFPosterior(d, cfg.iaf_steps if cfg.posterior == "iaf" else 0, cfg.iaf_hidden, context)
            if cfg.latent_shape:  # the paper's CIFAR-10 model: a (C, h, w) code, flat (B, D) outside
                c, h, w = cfg.latent_shape
                shape = (c, h, w)
                nets: dict[str, Any] = dict(
                    stage_channels=cfg.stage_channels,
                    stage_blocks=cfg.stage_blocks,
                    kind=cfg.encoder_kind,
                    dense_steps=cfg.dense_steps,
                    weight_norm=wn,
                )
                self.encoder = SpatialEncoder(shape, cfg.image_shape, context_dim=context, **nets)
                self.prior = (
                    SpatialAFPrior(
                        shape, cfg.flow_steps, cfg.prior_hidden, cfg.prior_layers, cfg.prior_kernel, cfg.mean_only, wn
                    )
                    if cfg.prior == "af"
                    else GaussianPrior(d)
                )
                self.upsampler = SpatialUpsampler(shape, cfg.image_shape, cond, **nets)
            else:
                self.encoder = Encoder(d, cfg.image_shape, cfg.encoder_channels, cfg.encoder_blocks, context, wn)
                self.prior = (
                    AFPrior(d, cfg.flow_steps, cfg.made_hidden, cfg.mean_only, cfg.made_activation)
                    if cfg.prior == "af"
                    else GaussianPrior(d)
                )
                self.upsampler = ConditionUpsampler(
                    d, cfg.image_shape, cfg.upsampler_channels, cond, cfg.upsampler_blocks, wn
                )
        self.decoder = self._build_decoder(cfg, cond)
        assert type(self.decoder) is DECODERS[cfg.decoder]

    def _build_decoder(self, cfg: ModelConfig, cond: int) -> nn.Module:
        wn, c, p = cfg.weight_norm, cfg.image_shape[0], self.observation.param_channels
        io: dict[str, Any] = dict(in_channels=c, out_channels=p, gray_context=cfg.gray_context)
        if cfg.decoder == "masked":
            return MaskedPixelCNN(
                cfg.decoder_layers,
                cfg.decoder_kernel,
                cfg.decoder_filters,
                cond,
                cfg.decoder_blocks_1x1,
                cfg.tie_weights,
                cfg.cond_every_layer,
                wn,
                **io,
            )
        if cfg.decoder == "gated" and cfg.decoder_field:
            return GatedPixelCNN.from_field(
                cfg.decoder_field,
                cfg.decoder_filters,
                cond,
                cond_every_layer=cfg.cond_every_layer,
                weight_norm=wn,
                blocks_1x1=cfg.gated_blocks_1x1,
                **io,
            )
        if cfg.decoder == "gated":
            return GatedPixelCNN(
                cfg.decoder_layers,
                cfg.decoder_kernel,
                cfg.decoder_filters,
                cond,
                cfg.cond_every_layer,
                wn,
                blocks_1x1=cfg.gated_blocks_1x1,
                **io,
            )
        return FactorizedDecoder(cond, cfg.decoder_filters, wn, out_channels=p)

    # ------------------------------------------------------------------ helpers
    @property
    def obs(self) -> ObservationModel:
        """Deprecated (one release): :attr:`observation`, the observation model's old name."""
        warnings.warn("VLAE.obs is deprecated; use VLAE.observation", DeprecationWarning, stacklevel=2)
        return self.observation

    @obs.setter
    def obs(self, value: ObservationModel) -> None:
        warnings.warn("VLAE.obs is deprecated; use VLAE.observation", DeprecationWarning, stacklevel=2)
        self.observation = value

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def _anchor(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    @property
    def dims(self) -> int:
        """Data dimensions per image, the denominator of bits/dim."""
        return self.cfg.data_dims

    @property
    def uniforms_shape(self) -> tuple[int, int, int]:
        """Shape of the uniforms one image's sampling consumes: ``(U, H, W)``."""
        return (self.observation.uniforms_per_pixel, *self.cfg.image_shape[1:])

    def check_images(self, x: torch.Tensor, values: bool = True) -> torch.Tensor:
        """Raise :class:`VLAEError` unless ``x`` is ``(B, *image_shape)`` of values the
        observation model accepts (0/1, or integers 0..255); return it as a float
        tensor on the model's device."""
        if not isinstance(x, torch.Tensor):
            raise VLAEError(f"images must be a torch.Tensor, got {type(x).__name__}")
        expected = tuple(self.cfg.image_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise VLAEError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if values:
            self.observation.check(x)
        return x.to(device=self._anchor.device, dtype=self._anchor.dtype)

    def condition(self, z: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning map ``(B, C_c, H, W)`` computed from ``z`` (``None`` without a latent)."""
        return None if z is None else self.upsampler(z)

    def params(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced decoder outputs ``(B, P, H, W)`` for images ``x`` in observed
        units (Bernoulli: the logits)."""
        return self.decoder(self.observation.scale(x), self.condition(z))

    logits = params  # the binary model's name for them

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder on images in observed units: ``mu, log_sigma (B, D)`` and the
        IAF context ``h``. (``self.encoder`` itself expects images scaled to [-1, 1].)"""
        return self.encoder(self.observation.scale(x))

    def posterior_sample(
        self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples per image from q(z|x): ``z (n*B, D)`` ordered sample-major
        (``z[s * B + b]``), and ``log q`` per dimension ``(n*B, D)``."""
        mu, log_sigma, h = self.encode(x)
        dtype = torch.promote_types(mu.dtype, torch.float32)  # bf16 under autocast: the densities in fp32
        rep = lambda t: t.to(dtype).repeat(n, 1)  # noqa: E731
        with full_precision(mu):
            eps = torch.randn((n * x.shape[0], self.latent_dim), generator=generator, device=mu.device, dtype=dtype)
            return self.posterior.rsample(rep(mu), rep(log_sigma), rep(h), eps)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation of the weight-normalised layers from a batch."""
        x = self.check_images(x)
        data_dependent_init(self, x, method="terms")

    # ------------------------------------------------------------------ bounds
    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Terms:
        """Single-sample bound terms for a batch ``x (B, C, H, W)``."""
        x = self.check_images(x, values=False)  # shape only: a value check would sync the GPU every step
        if self.latent_dim == 0:
            recon = -self.observation.log_prob(self.params(x, None), x)
            zero = recon.new_zeros(x.shape[0])
            return Terms(recon, zero, zero[:, None])
        z, log_q = self.posterior_sample(x, 1, generator)
        with full_precision(z):
            kl_per_dim = log_q - self.prior.log_prob_per_dim(z)
        recon = -self.observation.log_prob(self.params(x, z), x)
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

    def loss(
        self, x: torch.Tensor, kl_weight: float = 1.0, free_bits: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Terms]:
        """Training objective (nats per image, batch mean) and the raw terms."""
        terms = self.terms(x, generator)
        return terms.recon.mean() + kl_weight * self.kl_penalty(terms, free_bits), terms

    def shared(self, x: torch.Tensor) -> tuple:
        """What all posterior samples of images ``x`` share, to compute once per image:
        the encoder's ``mu, log_sigma, h`` and the decoder's ``image_part`` (its first
        layer's convolution of the image)."""
        return (*self.encode(x), self.decoder.image_part(self.observation.scale(x)))

    def sample_terms(
        self,
        x: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
        shared: tuple | None = None,
    ) -> Terms:
        """Bound terms of ``k`` samples ``z_j ~ q(z|x)`` per image, sample-major
        (entry ``j * B + b``): ``recon (k*B,)``, ``kl (k*B,)``, ``kl_per_dim (k*B, D)``;
        ``-nelbo`` is the log weight. ``eps (k*B, D)`` fixes the base noise (default:
        drawn from ``generator``); ``shared`` is :meth:`shared` of ``x``, reused across calls."""
        if shared is None and eps is None:  # the draws posterior_sample documents
            z, log_q = self.posterior_sample(x, k, generator)
            part = self.decoder.image_part(self.observation.scale(x))
        else:
            mu, log_sigma, h, part = shared if shared is not None else self.shared(x)
            if eps is None:
                eps = torch.randn(
                    (k * x.shape[0], self.latent_dim), generator=generator, device=mu.device, dtype=mu.dtype
                )
            rep = lambda t: t.repeat(k, 1)  # noqa: E731 -- sample-major
            z, log_q = self.posterior.rsample(rep(mu), rep(log_sigma), rep(h), eps)
        kl_per_dim = log_q - self.prior.log_prob_per_dim(z)
        # The image's own features are broadcast over the k samples, not recomputed k times.
        params = self.decoder.from_image_part(part, self.condition(z))
        recon = -self.observation.log_prob(params, x.repeat(k, 1, 1, 1))
        return Terms(recon, kl_per_dim.sum(1), kl_per_dim)

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(x|z_j) + log p(z_j) - log q(z_j|x)`` for ``k`` samples: ``(k, B)``."""
        if self.latent_dim == 0:
            return (-self.terms(x).recon)[None].expand(k, -1)
        return (-self.sample_terms(x, k, generator).nelbo).view(k, x.shape[0])

    @torch.no_grad()
    def iw_bound(
        self, x: torch.Tensor, k: int, chunk: int = 0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Importance-weighted lower bound on ``log p(x)`` with ``k`` samples.

        Samples are drawn ``chunk`` per image at a time (default:
        :func:`samples_per_pass`) so memory does not grow with ``k``; the
        log-sum-exp runs in float64. With a fixed ``generator`` the value is
        reproducible for a fixed ``chunk``; another chunk size consumes the random
        stream differently and gives another (equally valid) estimate.

        Returns:
            ``(B,)`` float64, nats per image (negate for the NLL).
        """
        x = self.check_images(x)
        if k < 1:
            raise VLAEError(f"k must be >= 1, got {k}")
        chunk = chunk or samples_per_pass(x)
        acc = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, k, chunk):
            log_w = self.log_weights(x, min(chunk, k - start), generator).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        return acc - math.log(k)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        z: torch.Tensor | None = None,
        u: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_probs: bool = False,
    ):
        """Naive exact sampling: ``z`` from the prior, then ``x`` pixel by pixel,
        re-running the whole decoder for each of the ``H * W`` pixels.

        Args:
            n: number of images.
            z: ``(n, D)`` latent codes (default: drawn from the prior).
            u: ``(n, U, H, W)`` uniforms deciding each pixel (default: drawn;
                ``U`` = the observation model's ``uniforms_per_pixel``).
            generator: random generator for ``z`` and ``u``.
            return_probs: also return the per-pixel distribution used
                (:meth:`~vlae.observation.ObservationModel.summary`: Bernoulli
                probabilities, or the mixture's parameters).

        Returns:
            ``x (n, C, H, W)`` in observed units (and ``(n, 1 or P, H, W)``).
        """
        dev, dtype = self._anchor.device, self._anchor.dtype
        if z is None and self.latent_dim > 0:
            z = self.prior.sample(n, generator=generator)
        if u is None:
            u = torch.rand((n, *self.uniforms_shape), generator=generator, device=dev, dtype=dtype)
        return self.decode(z, u, return_probs=return_probs)

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, u: torch.Tensor, return_probs: bool = False):
        """Draw ``x ~ p(x|z)`` pixel by pixel given uniforms ``u (n, U, H, W)``: the
        decoder runs on the whole canvas once per pixel, undrawn pixels 0."""
        cond = self.condition(z)
        n, (c, height, width) = u.shape[0], self.cfg.image_shape
        x = u.new_zeros(n, c, height, width)
        if isinstance(self.decoder, FactorizedDecoder):
            params = self.decoder(self.observation.scale(x), cond)
            x = self.observation.sample(params, u)
            return (x, self.observation.summary(params)) if return_probs else x
        summary = None
        for i in range(height):
            for j in range(width):
                params = self.decoder(self.observation.scale(x), cond)[:, :, i : i + 1, j : j + 1]
                x[:, :, i : i + 1, j : j + 1] = self.observation.sample(params, u[:, :, i : i + 1, j : j + 1])
                if return_probs:
                    s = self.observation.summary(params)
                    summary = summary if summary is not None else s.new_zeros(n, s.shape[1], height, width)
                    summary[:, :, i : i + 1, j : j + 1] = s
        return (x, summary) if return_probs else x

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None, sampler=None
    ) -> torch.Tensor:
        """Lossy reconstructions: ``z ~ q(z|x)`` once per image, then ``n``
        draws ``x' ~ p(x|z)`` with that same ``z``.

        Returns:
            ``(n, B, C, H, W)``; the spread across the first axis shows what
            ``z`` leaves to the decoder (local texture, not global shape).
        """
        x = self.check_images(x)
        if self.latent_dim == 0:
            raise VLAEError("an unconditional PixelCNN has no latent code to reconstruct from")
        z, _ = self.posterior_sample(x, 1, generator)
        zn = z.repeat(n, 1)
        u = torch.rand((zn.shape[0], *self.uniforms_shape), generator=generator, device=z.device, dtype=z.dtype)
        out = (sampler or self.decode)(zn, u)
        return out.view(n, x.shape[0], *self.cfg.image_shape)
