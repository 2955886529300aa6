"""The validation pass: the bound of the (averaged) weights on held-out images.

A generator of its own, seeded afresh on every call: validating never moves the
training stream, and a resumed run validates as the uninterrupted one would.
"""

from __future__ import annotations

import torch

from ..model import VLAE, nats_to_bits_per_dim

__all__ = ["validate"]


@torch.no_grad()
def validate(model: VLAE, images: torch.Tensor, batch_size: int, k: int = 0, seed: int = 0) -> dict[str, float]:
    """Single-sample ELBO (and IW bound with ``k`` samples) on ``images``, nats per image.

    Uses its own generator, so it never disturbs the training random stream.
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    nelbo = recon = kl = iw = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(dev).float()
        terms = model.terms(x, generator=gen)
        nelbo += float(terms.nelbo.double().sum())
        recon += float(terms.recon.double().sum())
        kl += float(terms.kl.double().sum())
        if k > 0:
            iw += float(-model.iw_bound(x, k, generator=gen).sum())
    model.train(was_training)
    n, dims = images.shape[0], model.cfg.data_dims
    out = {
        "nelbo": nelbo / n,
        "elbo": -nelbo / n,
        "recon": recon / n,
        "kl": kl / n,
        "bits_per_dim": nats_to_bits_per_dim(nelbo / n, dims),
        "images": n,
    }
    if k > 0:
        out.update({"iw_nll": iw / n, "iw_k": k, "iw_bits_per_dim": nats_to_bits_per_dim(iw / n, dims)})
    return out
