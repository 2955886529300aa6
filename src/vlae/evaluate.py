"""Evaluation: the importance-weighted bound, the ELBO, KL and active units.

The paper's headline number is the test NLL estimated with the IW bound
(Burda et al., 2016) with ``k = 4096`` samples per image:

    -log p(x)  <=  -log (1/k) sum_j  p(x|z_j) p(z_j) / q(z_j|x)

averaged over test images, in nats per image (also in bits per dimension),
with its standard error over images. The ELBO is the average of the same
``k`` log weights (a ``k``-sample estimate of one-sample ELBO), so it costs
nothing extra.

Example:
    >>> from vlae import VLAE, get_preset
    >>> model = VLAE(get_preset("tiny").model)
    >>> x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.2)).to(torch.uint8)
    >>> result = evaluate_model(model, x, k=4, batch_size=4)
    >>> result["estimator"], sorted(result)[:3]
    ('IW bound, k=4', ['active_units', 'active_units_threshold', 'bits_per_dim'])
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .errors import VLAEError
from .model import VLAE, nats_to_bits_per_dim

__all__ = ["evaluate_model", "evaluate_checkpoint", "result_name", "active_units", "standard_error", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active if Cov_x(E_q[z_u]) > 0.01
_MEAN_SAMPLES = 32  # posterior samples averaged for E_q[z] when q is not Gaussian (IAF)


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` (sample std with ``N - 1`` over ``sqrt(N)``)."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def active_units(means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, list[float]]:
    """Active units of Burda et al. (2016) from posterior means ``E_q[z|x]`` of shape ``(N, D)``.

    Returns the count of dimensions whose variance across images exceeds
    ``threshold``, and the per-dimension variances.

    >>> means = torch.stack([torch.tensor([1.0, 0.0, 0.05]), torch.tensor([-1.0, 0.0, -0.05])])
    >>> active_units(means)[0]
    1
    """
    if means.shape[0] < 2:
        return 0, [0.0] * means.shape[1]
    var = means.double().var(0, unbiased=True)
    return int((var > threshold).sum()), var.tolist()


@torch.no_grad()
def _posterior_mean(model: VLAE, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``E_q[z|x]``: the encoder's mean for a Gaussian posterior, else a Monte Carlo average."""
    if model.cfg.posterior == "gaussian" or model.cfg.iaf_steps == 0:
        mu, _, _ = model.encode(x)
        return mu
    z, _ = model.posterior_sample(x, _MEAN_SAMPLES, generator)
    return z.view(_MEAN_SAMPLES, x.shape[0], -1).mean(0)


@torch.no_grad()
def evaluate_model(model: VLAE, images: torch.Tensor, k: int = 4096, batch_size: int = 50, chunk: int = 0,
                   progress: bool | None = None, generator: torch.Generator | None = None) -> dict[str, Any]:
    """IW bound, ELBO, KL and active units of ``model`` on ``images``.

    Args:
        model: a VLAE (evaluated in eval mode on its own device).
        images: ``uint8`` (or float) 0/1 images ``(N, 1, H, W)``.
        k: importance samples per image.
        batch_size: images per batch.
        chunk: importance samples evaluated at once per batch (0: about 4,096
            decoder evaluations per pass); bounds memory for large ``k``.
        progress: tqdm bar (default: when stderr is a terminal).
        generator: random generator for the posterior samples (default: global RNG).

    Returns:
        dict with ``nll`` (mean of ``-IW bound``, nats per image), ``nll_se``,
        ``bits_per_dim``, ``elbo`` (mean log weight, nats), ``recon``, ``kl``
        (single-sample estimates), ``kl_per_dim`` (list of D), ``active_units``,
        ``estimator``, ``k``, ``images``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise VLAEError(f"images must be a (N, 1, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[0] == 0:
        raise VLAEError("no images to evaluate")
    if k < 1:
        raise VLAEError(f"k must be >= 1, got {k}")
    if batch_size < 1 or chunk < 0:
        raise VLAEError(f"batch_size must be >= 1 and chunk >= 0, got {batch_size} and {chunk}")
    was_training = model.training
    model.eval()
    n, dims, d = images.shape[0], model.cfg.data_dims, model.latent_dim
    nll = torch.empty(n, dtype=torch.float64)
    mean_log_w = torch.empty(n, dtype=torch.float64)
    recon = torch.empty(n, dtype=torch.float64)
    kl = torch.empty(n, dtype=torch.float64)
    kl_dims = torch.zeros(max(d, 1), dtype=torch.float64)
    means = []
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="img", desc=f"IW bound k={k}", disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        x = model.check_images(images[start:start + batch_size])
        b = x.shape[0]
        step = chunk or max(1, 4096 // b)
        lse = torch.full((b,), -math.inf, dtype=torch.float64, device=x.device)
        total = torch.zeros(b, dtype=torch.float64, device=x.device)
        for s in range(0, k, step):  # same draws, in the same order, as VLAE.iw_bound
            log_w = model.log_weights(x, min(step, k - s), generator).double()
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            total += log_w.sum(0)
        nll[start:start + b] = -(lse - math.log(k)).cpu()
        mean_log_w[start:start + b] = (total / k).cpu()
        terms = model.terms(x, generator)
        recon[start:start + b] = terms.recon.double().cpu()
        kl[start:start + b] = terms.kl.double().cpu()
        if d > 0:
            kl_dims += terms.kl_per_dim.double().sum(0).cpu()
            means.append(_posterior_mean(model, x, generator).double().cpu())
        bar.update(b)
    bar.close()
    model.train(was_training)
    units, variances = active_units(torch.cat(means)) if d > 0 else (0, [])
    nll_mean = float(nll.mean())
    return {
        "estimator": f"IW bound, k={k}",
        "k": k,
        "images": n,
        "nll": nll_mean,
        "nll_se": standard_error(nll),
        "bits_per_dim": nats_to_bits_per_dim(nll_mean, dims),
        "elbo": float(mean_log_w.mean()),
        "elbo_se": standard_error(mean_log_w),
        "elbo_bits_per_dim": nats_to_bits_per_dim(-float(mean_log_w.mean()), dims),
        "recon": float(recon.mean()),
        "kl": float(kl.mean()),
        "kl_per_dim": (kl_dims / n).tolist() if d > 0 else [],
        "active_units": units,
        "active_units_threshold": ACTIVE_THRESHOLD,
        "posterior_mean_variance": variances,
        "latent_dim": d,
    }


def result_name(dataset: str, split: str, k: int, images: int | None = None, weights: str = "ema") -> str:
    """File name of an evaluation result: what was measured, on which data.

    ``eval_<dataset>_<split>_k<k>[_n<images>][_raw].json``; ``images`` is given
    only for a subset of the split, and ``_raw`` marks raw (not Polyak-averaged)
    weights.

    >>> result_name("binarized-mnist", "test", 4096)
    'eval_binarized-mnist_test_k4096.json'
    >>> result_name("mnist-embedded", "test", 4, images=50)
    'eval_mnist-embedded_test_k4_n50.json'
    """
    return (f"eval_{dataset}_{split}_k{k}" + (f"_n{images}" if images else "")
            + ("_raw" if weights == "raw" else "") + ".json")


def _same_data(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an existing result measured the data ``new`` identifies: the same
    name, split, image count and pixels (``sha256``), or, for results without a
    checksum, the same source files."""
    if isinstance(old.get("data_identity"), dict):
        before = old["data_identity"]
    else:  # results written before data_identity existed
        before = {"name": old.get("dataset"), "source": old.get("data"), "split": old.get("split"),
                  "images": old.get("images")}
    keys = ["name", "split", "images"] + (["sha256"] if "sha256" in before and "sha256" in new else ["source"])
    return all(before.get(key) == new.get(key) for key in keys)


def _refuse_other_data(target: Path, identity: dict[str, Any]) -> None:
    """Never replace a result of other data (e.g. the real test set's by the fallback's)."""
    if not target.exists():
        return
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or "estimator" not in old:
        raise VLAEError(f"{target} exists and is not a vlae evaluation result; remove it or choose another --out")
    if not _same_data(old, identity):
        before = old.get("data_identity") if isinstance(old.get("data_identity"), dict) else {}
        was = before.get("source") or old.get("data") or old.get("dataset")
        raise VLAEError(f"{target} holds a result of other data ({was}); not replacing it with one of "
                        f"{identity['name']} {identity['split']} ({identity['source']}); choose another --out")


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", k: int = 4096, subset: int = 0,
                        data_dir: str | os.PathLike | None = None, seed: int = 0, out: str | os.PathLike | None = None,
                        batch_size: int | None = None, chunk: int = 0, weights: str = "ema", device: str = "auto",
                        progress: bool | None = None, notice=None) -> dict[str, Any]:
    """Evaluate a checkpoint (or run folder) on a data split and write the result as JSON.

    The JSON goes to ``out``, by default beside the checkpoint under
    :func:`result_name` (dataset, split, ``k``, subset size, weights). It names
    the estimator and records the checkpoint, the resolved config, the data's
    identity (``data_identity``, :func:`vlae.data.dataset_identity`), whether
    the embedded fallback replaced the configured dataset (``data_fallback``;
    announced through ``notice``, default stderr) and the command line. Strict
    JSON: a non-finite number is written as ``null`` and listed under ``non_finite``.

    Raises:
        VLAEError: invalid options; non-finite weights (see
            :func:`vlae.checkpoint.load_model`) or a non-finite bound; ``out``
            not writable, or holding a result of other data.
    """
    from .checkpoint import load_model, pick_device, resolve_checkpoint
    from .data import dataset_identity, fixed_subset, load_or_fallback
    from .outputs import prepare_output, write_json

    if subset < 0:
        raise VLAEError(f"invalid --subset: must be >= 0, got {subset}")
    if chunk < 0:
        raise VLAEError(f"invalid --chunk: must be >= 0 (0: automatic), got {chunk}")
    file = resolve_checkpoint(path)
    model, cfg = load_model(file, weights=weights, device=pick_device(device))
    if out is not None:  # before the (possibly long) evaluation
        prepare_output(out, "--out")
    root = data_dir if data_dir is not None else cfg.train.data_dir
    data = load_or_fallback(cfg.train.dataset, split, root, notice=notice)
    identity = dataset_identity(data)
    torch.manual_seed(seed)
    images = data.observed(torch.Generator().manual_seed(seed))
    images = fixed_subset(images, subset)  # a spread-out choice: test files are sorted by class
    if images.shape[0] < len(data):
        identity = {**identity, "images": images.shape[0], "subset_of": len(data)}
    target = Path(out) if out is not None else file.parent / result_name(
        data.name, split, k, images.shape[0] if "subset_of" in identity else None, weights)
    _refuse_other_data(prepare_output(target, "result file"), identity)
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = time.perf_counter()
    result = evaluate_model(model, images, k=k, batch_size=batch_size or cfg.eval.batch_size, chunk=chunk,
                            progress=progress, generator=gen)
    seconds = time.perf_counter() - t0
    for key in ("nll", "elbo"):
        if not math.isfinite(result[key]):
            raise VLAEError(f"{file}: the {'IW bound' if key == 'nll' else 'ELBO'} came out {result[key]} "
                            f"on {data.name} {split}; nothing written (the model is numerically broken)")
    result = {"estimator": result.pop("estimator"), "split": split, "dataset": data.name, "data": data.source,
              "data_identity": identity, "data_fallback": bool(getattr(data, "fallback", None))
              or data.name != cfg.train.dataset,
              "requested_dataset": cfg.train.dataset,
              **result, "seconds": seconds, "checkpoint": str(file), "weights": weights, "seed": seed,
              "subset": subset, "device": str(dev), "config": cfg.to_dict(), "command": " ".join(sys.argv)}
    write_json(target, result, default=str)
    result["path"] = str(target)
    return result
