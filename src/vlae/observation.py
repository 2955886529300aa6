"""Observation models p(x | decoder outputs): what the decoder's numbers mean.

The decoder emits ``P`` numbers per pixel (``params (B, P, H, W)``); an
observation model turns them into the log-likelihood of the observed image and
into samples. One small interface serves binary and 8-bit images, one model for
each value of the configuration's ``model.observation``
(:data:`~vlae.config.OBSERVATIONS`, each model's ``name``):

==========================  =======================  ====================================
                            :class:`Bernoulli`       :class:`DiscretizedLogisticMixture`
==========================  =======================  ====================================
observed values ``x``       0/1, one channel         integers 0..255, 1 or 3 channels
``param_channels`` ``P``    1 (a logit)              ``K * (1 + 2C + C(C-1)/2)``
``uniforms_per_pixel`` U    1                        ``C + 1`` (component, then R, G, B)
``scale(x)``                ``2x - 1``               ``x / 127.5 - 1``
==========================  =======================  ====================================

``log_prob`` is in nats per image and always computed in at least float32 (under
bf16 autocast a bf16 sum over thousands of terms would lose whole nats).
``sample(params, u)`` is a deterministic function of the uniforms, so two
samplers fed the same uniforms agree bit for bit; ``sample_with_margin`` also
returns how far each pixel's uniforms lie from the nearest decision boundary,
which the fast sampler uses to settle rounding-level ties exactly.

Example:
    >>> obs = DiscretizedLogisticMixture(channels=3, components=10)
    >>> params = torch.randn(2, obs.param_channels, 8, 8)
    >>> x = obs.sample(params, torch.rand(2, obs.uniforms_per_pixel, 8, 8))   # (2, 3, 8, 8) in 0..255
    >>> obs.log_prob(params, x).shape
    torch.Size([2])

References:
    Salimans et al., PixelCNN++: Improving the PixelCNN with Discretized Logistic
    Mixture Likelihood and Other Modifications (ICLR 2017), section 2.1-2.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import OBSERVATIONS, data_dims
from .errors import VLAEError

__all__ = [
    "ObservationModel",
    "Bernoulli",
    "DiscretizedLogisticMixture",
    "OBSERVATIONS",
    "observation_model",
    "bernoulli_log_prob",
    "bernoulli_from_uniform",
]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class ObservationModel:
    """Interface of an observation model (see the module docstring).

    All methods take ``params`` with the parameter axis at dim 1 and any number
    of trailing spatial axes: ``(B, P, H, W)`` for whole images, ``(B, P, N)``
    for ``N`` chosen positions (as the fast sampler uses them).
    """

    name: str = ""  # the config's value for it, one of :data:`~vlae.config.OBSERVATIONS`
    channels: int = 1  # C, image channels
    param_channels: int = 1  # P, decoder outputs per pixel
    uniforms_per_pixel: int = 1  # U

    def log_prob_pixels(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x_i)`` per pixel, in nats: ``(B, P, *S), (B, C, *S) -> (B, *S)``,
        in at least float32."""
        raise NotImplementedError  # pragma: no cover

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` per image in nats: ``(B, P, H, W), (B, C, H, W) -> (B,)``."""
        return self.log_prob_pixels(params, x).flatten(1).sum(1)

    def sample_with_margin(self, params: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, *S)`` drawn from uniforms ``u (B, U, *S)``, and ``margin (B, *S)``:
        how far each pixel's draw is from changing -- a perturbation of the
        parameters smaller than the margin (in the model's own units, see each
        model) cannot change the pixel. The fast sampler re-decides pixels whose
        margin is within rounding error the naive way."""
        raise NotImplementedError  # pragma: no cover

    def sample(self, params: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x ~ p(x | params)`` as a deterministic function of uniforms ``u (B, U, *S)``."""
        return self.sample_with_margin(params, u)[0]

    def summary(self, params: torch.Tensor) -> torch.Tensor:
        """What samplers return with ``return_probs=True``: Bernoulli probabilities
        ``p(x=1)``, or the raw parameters for models without a single probability."""
        return params

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Observed values -> the networks' input range [-1, 1]."""
        raise NotImplementedError  # pragma: no cover

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`VLAEError` (one line) unless every value is a valid observation."""
        raise NotImplementedError  # pragma: no cover

    def dims(self, image_shape) -> int:
        """Number of data dimensions of one image (the denominator of bits/dim)."""
        return data_dims(image_shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels}, param_channels={self.param_channels})"


# ---------------------------------------------------------------------- Bernoulli
def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x)`` summed over all but the batch axis: ``(B, ...) -> (B,)``, in nats.

    ``p(x_i = 1) = sigmoid(l_i)``, computed stably by
    ``binary_cross_entropy_with_logits`` in at least float32.
    """
    logits = _at_least_fp32(logits)
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return -nll.flatten(1).sum(1)


def bernoulli_from_uniform(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x = 1[u < sigmoid(logits)]`` as a float tensor of 0/1: a Bernoulli
    sample when ``u ~ U(0, 1)``."""
    return (u < torch.sigmoid(logits)).to(logits.dtype)


class Bernoulli(ObservationModel):
    """Binary pixels: one logit per pixel, ``p(x=1) = sigmoid(logit)``.

    Example:
        >>> Bernoulli().log_prob(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))   # 4 * log(1/2)
        tensor([-2.7726])
    """

    name = "bernoulli"

    def log_prob_pixels(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = _at_least_fp32(params)
        with _no_autocast(params.device):
            return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")[:, 0]

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(params, x)  # the historical formula, bit for bit

    def sample_with_margin(self, params: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The margin is in probability units: |u - p|.
        p = torch.sigmoid(params)
        return (u < p).to(params.dtype), (u - p).abs()[:, 0]

    def summary(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1

    def check(self, x: torch.Tensor) -> None:
        if ((x != 0) & (x != 1)).any():
            raise VLAEError("images must be binary (0/1) for a Bernoulli model; binarize them first")


# ---------------------------------------------------------------------- discretized logistic mixture
_HALF_BIN = 1.0 / 255.0  # half the width of one of the 256 bins on the [-1, 1] scale


def _bin_width_factor(inv_s: torch.Tensor) -> torch.Tensor:
    """``1 - e^{-d}`` with ``d = 2 / (255 s)``, a bin's width in units of the logistic's scale:
    the factor of a bin's mass that neither CDF tail holds (see ``_log_bin``)."""
    return -torch.expm1(-2 * _HALF_BIN * inv_s)


# Log-scales are clamped below at -7 (as in PixelCNN++): a logistic narrower than
# e^-7 ~ 1/1100 is already far inside one bin (width 2/255), so a smaller scale
# changes no probability but makes inv_scale overflow-prone and gradients huge.
# The upper clamp at +7 only keeps the bin width in logistic units, 2/255 * e^-s,
# from underflowing to 0 in float32 (a logistic e^7 wider than the data range is
# flat anyway).
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -7.0, 7.0


class DiscretizedLogisticMixture(ObservationModel):
    """8-bit pixels under PixelCNN++'s discretized mixture of logistics.

    A pixel ``x = (x_1..x_C)`` (each in 0..255, rescaled to ``v = x / 127.5 - 1``)
    has probability

        p(x) = sum_k pi_k prod_c [ sigma((v_c + 1/255 - mu_kc) / s_kc) - sigma((v_c - 1/255 - mu_kc) / s_kc) ]

    where the mean of a channel depends linearly on the pixel's earlier channels
    (``C = 3``): ``mu_k1 = m_k1``, ``mu_k2 = m_k2 + a_k v_1``, ``mu_k3 = m_k3 + b_k v_1 + c_k v_2``
    with ``a, b, c = tanh(.)`` of the decoder's outputs. The edge bins take the
    whole tails: the CDF is taken to -inf below 0 and to +inf above 255, so the
    256 probabilities sum to one exactly.

    Decoder outputs per pixel (``P = K * (1 + 2C + C(C-1)/2)``; 30 for ``C = 1``,
    100 for ``C = 3`` with ``K = 10``), in this order along dim 1:
    ``K`` mixture logits, ``C*K`` means, ``C*K`` log-scales (channel-major), and for
    ``C = 3`` the ``3*K`` coefficients ``a, b, c``.

    Sampling uses ``U = C + 1`` uniforms per pixel: one picks the component,
    then each channel, in order, is the bin of a logistic draw (inverse CDF)
    whose mean reads the channels already drawn -- exactly the mixture above.

    Args:
        channels: ``C``, 1 (grayscale) or 3 (RGB).
        components: ``K``, number of logistics (the paper uses 10).
    """

    name = "logistic_mixture"

    def __init__(self, channels: int = 3, components: int = 10):
        if channels not in (1, 3):
            raise VLAEError(f"a logistic mixture models 1 or 3 channels, got {channels}")
        if components < 1:
            raise VLAEError(f"a logistic mixture needs at least one component, got {components}")
        self.channels, self.components = channels, components
        self.n_coeffs = channels * (channels - 1) // 2
        self.param_channels = components * (1 + 2 * channels + self.n_coeffs)
        self.uniforms_per_pixel = channels + 1

    def __repr__(self) -> str:
        return f"DiscretizedLogisticMixture(channels={self.channels}, components={self.components})"

    # ------------------------------------------------------------------ parameters
    def _split(self, params: torch.Tensor):
        """``(B, P, *S)`` -> logits ``(B, K, *S)``, means, log-scales ``(B, C, K, *S)``,
        coefficients ``(B, n_coeffs, K, *S)``, all in at least float32."""
        params = _at_least_fp32(params)
        if params.shape[1] != self.param_channels:
            raise VLAEError(f"a {self!r} needs {self.param_channels} parameters per pixel, got {params.shape[1]}")
        K, C, S = self.components, self.channels, params.shape[2:]
        logits, means, log_scales, coeffs = params.split([K, C * K, C * K, self.n_coeffs * K], dim=1)
        b = params.shape[0]
        return (
            logits,
            means.reshape(b, C, K, *S),
            log_scales.reshape(b, C, K, *S).clamp(_LOG_SCALE_MIN, _LOG_SCALE_MAX),
            torch.tanh(coeffs.reshape(b, self.n_coeffs, K, *S)),
        )

    def _mean(self, means, coeffs, v, c: int) -> torch.Tensor:
        """Mean of channel ``c`` per component ``(B, K, *S)`` given the earlier channels
        ``v (B, C, *S)`` on the [-1, 1] scale (only channels < c are read)."""
        if c == 0:
            return means[:, 0]
        if c == 1:
            return means[:, 1] + coeffs[:, 0] * v[:, 0:1]  # G depends on R
        return means[:, 2] + coeffs[:, 1] * v[:, 0:1] + coeffs[:, 2] * v[:, 1:2]  # B on R and G

    @staticmethod
    def _log_bin(v: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log P(bin of v)`` under logistics ``(mu, exp(log_s))``, elementwise.

        With ``a = (v + 1/255 - mu) / s`` and ``b = (v - 1/255 - mu) / s`` the bin mass
        ``sigma(a) - sigma(b)`` is factorised as

            sigma(a) - sigma(b) = sigma(a) * sigma(-b) * (1 - exp(-(a - b)))

        (multiply out ``e^a - e^b`` over ``(1 + e^a)(1 + e^b)``). Each factor's log
        is computed without cancellation -- ``logsigmoid`` for the first two,
        ``log(-expm1(-d))`` for the third, with ``d = a - b = 2 / (255 s) > 0`` --
        so no tiny-probability branch is needed: where PixelCNN++ falls back to
        the density at the bin centre times the bin width because the difference
        of two CDFs near 1 has cancelled to 0 in float32, this form stays exact.
        Edge bins: at ``x = 0`` the lower CDF is that at -inf (``sigma(b) = 0``), at
        ``x = 255`` the upper one is that at +inf (``sigma(a) = 1``); the factors
        that become exactly 0 there are masked out with ``where``, never computed
        from infinities, so their gradients stay finite.
        """
        inv_s = torch.exp(-log_s)
        centred = v - mu
        a = inv_s * (centred + _HALF_BIN)
        b = inv_s * (centred - _HALF_BIN)
        low, high = x <= 0, x >= 255
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        upper = torch.where(high, zero, F.logsigmoid(a))  # log sigma(a); CDF(+inf) = 1 at x = 255
        lower = torch.where(low, zero, F.logsigmoid(-b))  # log(1 - sigma(b)); CDF(-inf) = 0 at x = 0
        width = torch.where(low | high, zero, torch.log(_bin_width_factor(inv_s)))
        return upper + lower + width

    def _log_bins(self, params: torch.Tensor, x: torch.Tensor):
        """Per-component, per-channel ``log p_k(x_c | x_<c)``: ``(B, C, K, *S)``, and the
        log mixture weights ``(B, K, *S)``."""
        logits, means, log_scales, coeffs = self._split(params)
        x = _at_least_fp32(x).to(logits.dtype)
        v = self.scale(x)
        per_channel = [
            self._log_bin(v[:, c : c + 1], self._mean(means, coeffs, v, c), log_scales[:, c], x[:, c : c + 1])
            for c in range(self.channels)
        ]
        return torch.stack(per_channel, 1), F.log_softmax(logits, dim=1)

    # ------------------------------------------------------------------ interface
    def log_prob_pixels(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with _no_autocast(params.device):
            log_bins, log_pi = self._log_bins(params, x)
            return torch.logsumexp(log_pi + log_bins.sum(1), dim=1)

    def channel_probs(self, params: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The exact conditional of one channel given the pixel's earlier channels,
        as 256 bin probabilities (what a lossless coder needs; float64).

        ``p(x_c | x_<c) = sum_k w_k p_k(x_c | x_<c)`` with the component weights
        re-weighted by the channels already known, ``w_k ~ pi_k prod_{c'<c} p_k(x_c' | x_<c')``
        (by :meth:`_log_bin`, as :meth:`log_prob_pixels` has them). The 256 bins of channel
        ``c`` come from each logistic's CDF at the 255 bin edges ``t_j`` (``sigma(t)`` and
        ``sigma(-t)`` per edge: the cost that matters to a coder). Bin ``j`` between edges
        ``j - 1`` and ``j``, which lie ``d = 2 / (255 s)`` apart, is the product of
        :meth:`_log_bin`, ``sigma(t_j) sigma(-t_{j-1}) (1 - e^{-d})``, not a difference of
        CDFs: no factor cancels, so every bin keeps a relative precision of a few ulps
        at any scale (a difference of CDFs loses ``~255 s`` ulps, 1e-11 relative at
        ``s = e^7``; a lossless coder on another machine needs the same numbers to ~1e-12).
        The edge bins at 0 and 255 run to -inf and +inf. The product over the channels is
        ``exp(log p(x))`` to ~1e-12 relative.

        Args:
            params: ``(n, P)`` decoder outputs of ``n`` pixels.
            previous: ``(n, c)`` values 0..255 of channels ``0..c-1`` (``c < C``; ``(n, 0)`` for R).

        Returns:
            ``(n, 256)`` probabilities of channel ``c``'s values, float64.

        Example:
            >>> obs = DiscretizedLogisticMixture(channels=3, components=2)
            >>> probs = obs.channel_probs(torch.randn(4, obs.param_channels), torch.zeros(4, 1))  # p(G | R = 0)
            >>> probs.shape, torch.allclose(probs.sum(1), torch.ones(4, dtype=torch.float64))
            (torch.Size([4, 256]), True)
        """
        c = previous.shape[-1]
        if params.dim() != 2 or previous.dim() != 2 or len(previous) != len(params) or not 0 <= c < self.channels:
            raise VLAEError(
                f"channel_probs needs params (n, {self.param_channels}) and previous channels (n, c) with "
                f"c < {self.channels}, got {tuple(params.shape)} and {tuple(previous.shape)}"
            )
        with _no_autocast(params.device):
            logits, means, log_scales, coeffs = self._split(params.double())  # (n, K), (n, C, K), .., (n, C', K)
            x = previous.double()
            v = self.scale(x)
            log_w = F.log_softmax(logits, dim=1)
            for j in range(c):  # re-weight the components by the channels already known
                log_w = log_w + self._log_bin(
                    v[:, j : j + 1], self._mean(means, coeffs, v, j), log_scales[:, j], x[:, j : j + 1]
                )
            log_w = F.log_softmax(log_w, dim=1)
            mu, log_s = self._mean(means, coeffs, v, c)[..., None], log_scales[:, c, :, None]  # (n, K, 1)
            edges = self.scale(torch.arange(1, 256, dtype=torch.float64, device=params.device)) - _HALF_BIN
            inv_s = torch.exp(-log_s)
            t = inv_s * (edges - mu)  # (n, K, 255)
            lower, upper = torch.sigmoid(t), torch.sigmoid(t.neg())  # each accurate in its own small tail
            mass = torch.empty(*t.shape[:-1], 256, dtype=t.dtype, device=t.device)
            mass[..., 0], mass[..., 255] = lower[..., 0], upper[..., -1]  # the edge bins: tails to -inf, +inf
            width = _bin_width_factor(inv_s)  # (n, K, 1)
            torch.mul(lower[..., 1:] * upper[..., :-1], width, out=mass[..., 1:255])
            return torch.bmm(log_w.exp()[:, None, :], mass)[:, 0]

    def sample_with_margin(self, params: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Component ``k`` from ``u_0`` (inverse CDF of the weights), then channel
        ``c`` as the bin of ``y = mu_kc + s_kc * logit(u_{c+1})``, clamped to 0..255
        (which gives the edge bins their tails).

        The margin is in units of parameter rounding: a draw cannot change unless
        some output moves by more than ``margin * (1 + |output|)``. For the component
        that is the distance from ``u_0`` to the nearest cumulative weight, over
        ``2 (1 + max |logit|)``; for a channel the distance from ``y`` to the nearest
        bin edge, over ``1 + |m| + 2 sum |v_<c| + |s logit(u)| (1 + |log s|)``
        (the sensitivities of ``y`` to its mean, coefficients and log-scale).
        """
        with _no_autocast(params.device):
            logits, means, log_scales, coeffs = self._split(params)
            u = u.to(logits.dtype)
            # Component: the first k whose cumulative weight exceeds u_0.
            cum = torch.softmax(logits, dim=1).cumsum(1)[:, :-1]
            k = (cum <= u[:, :1]).sum(1, keepdim=True)
            weight_bound = 2 * (1 + logits.abs().amax(1))
            margin = (u[:, :1] - cum).abs().amin(1) if cum.shape[1] else torch.full_like(u[:, 0], math.inf)
            margin = margin / weight_bound
            pick = lambda t: t.gather(1, k).squeeze(1)  # noqa: E731 -- (B, K, *S) -> (B, *S), component k
            x = logits.new_zeros(u.shape[0], self.channels, *u.shape[2:])
            for c in range(self.channels):
                v = self.scale(x)
                mu, log_s = pick(self._mean(means, coeffs, v, c)), pick(log_scales[:, c])
                t = torch.logit(u[:, c + 1])  # exact; +-inf at u = 0 or 1, where the draw is 0 or 255 regardless
                y = mu + torch.exp(log_s) * t
                xc = torch.floor((y + 1) * 127.5 + 0.5).clamp(0, 255)
                pos = (y + 1) * 127.5  # bin j covers [j - 0.5, j + 0.5) on this scale
                below = torch.where(xc > 0, pos - (xc - 0.5), torch.full_like(pos, math.inf))
                above = torch.where(xc < 255, (xc + 0.5) - pos, torch.full_like(pos, math.inf))
                dist = torch.minimum(below, above) / 127.5
                bound = (
                    1
                    + pick(means[:, c]).abs()
                    + 2 * v[:, :c].abs().sum(1)
                    + (torch.exp(log_s) * t).abs() * (1 + log_s.abs())
                )
                margin = torch.minimum(
                    margin, torch.where(torch.isinf(t), torch.full_like(dist, math.inf), dist / bound)
                )
                x[:, c] = xc
            return x.to(params.dtype), margin

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x / 127.5 - 1

    def check(self, x: torch.Tensor) -> None:
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise VLAEError("8-bit images must be finite integers 0..255, got NaN or inf")
        if (x < 0).any() or (x > 255).any():
            raise VLAEError(
                f"8-bit images must be integers 0..255, got values in [{x.min().item():g}, {x.max().item():g}]"
            )
        if x.is_floating_point() and (x != torch.round(x)).any():
            raise VLAEError("8-bit images must be integers 0..255, got non-integer values")


def observation_model(cfg) -> ObservationModel:
    """The observation model a :class:`~vlae.config.ModelConfig` asks for
    (``cfg.observation``, ``cfg.image_shape[0]`` channels, ``cfg.mixture_components``)."""
    observation = getattr(cfg, "observation", "bernoulli")
    if observation == Bernoulli.name:
        return Bernoulli()
    if observation == DiscretizedLogisticMixture.name:
        return DiscretizedLogisticMixture(cfg.image_shape[0], getattr(cfg, "mixture_components", 10))
    raise VLAEError(f"unknown observation model {observation!r}; choose from {', '.join(OBSERVATIONS)}")
