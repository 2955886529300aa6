"""One task in a worker process: train it (resuming from its checkpoint), evaluate
it on the shared test images, and record the result (:func:`run_task`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from ..config import Config, config_from_dict
from .receptive_field import receptive_field_record
from .results import ERROR, RESULTS, training_budget, write_json

__all__ = ["init_worker", "run_task", "evaluation_images"]

#: What this worker process shares between its tasks: threads, training data, test images.
_WORKER: dict[str, Any] = {}


def init_worker(threads: int, data: Any, test_images: Any) -> None:
    """Set this process's torch threads and keep what every task it runs shares."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (in-process runs)
        pass
    _WORKER.update(threads=threads, data=data, test_images=test_images)


def _has_checkpoint(run_dir: Path) -> bool:
    from ..checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and record one run (in a worker process)."""
    from ..checkpoint import load_model
    from ..evaluate import evaluate_model
    from ..train import train

    if "threads" not in _WORKER:  # called in-process, e.g. from a debugger
        init_worker(payload["threads"], None, None)
    run_dir = Path(payload["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR).unlink(missing_ok=True)
    cfg = config_from_dict(payload["config"]).validate()
    resume = _has_checkpoint(run_dir)
    t0 = time.perf_counter()
    # A task killed before its first checkpoint left a folder that cannot be resumed: start it afresh.
    summary = train(cfg, run_dir, resume=resume, overwrite=not resume, quiet=True, data=_WORKER.get("data"))
    train_seconds = time.perf_counter() - t0

    model, _ = load_model(run_dir, weights="ema", device="cpu")
    model.eval()
    images = _WORKER.get("test_images")
    if images is None:
        images = evaluation_images(cfg, payload["eval_subset"], notice=lambda _msg: None)
    t1 = time.perf_counter()
    # the same posterior draws for every run of a sweep
    ev = evaluate_model(
        model, images, k=payload["k"], batch_size=payload["eval_batch_size"], progress=False, seed=cfg.train.seed
    )
    eval_seconds = time.perf_counter() - t1

    m = cfg.model
    record: dict[str, Any] = {"name": payload["name"], **payload["meta"]}
    record.update(
        decoder=m.decoder,
        layers=getattr(model.decoder, "layers", m.decoder_layers),
        kernel=getattr(model.decoder, "kernel_size", m.decoder_kernel),
        prior=m.prior if m.latent_dim else "none",
        posterior=m.posterior if m.latent_dim else "none",
        latent_dim=m.latent_dim,
        free_bits=m.free_bits,
        budget=training_budget(cfg.to_dict()["train"]),
    )
    record.update(receptive_field_record(model.decoder, m.image_shape))
    record.update(
        kl=_num(ev.get("kl")),
        nll=_num(ev.get("nll")),
        nll_se=_num(ev.get("nll_se")),
        k=payload["k"],
        elbo=_num(ev.get("elbo")),
        nelbo=_num(-ev["elbo"]) if ev.get("elbo") is not None else None,
        recon=_num(ev.get("recon")),
        bits_per_dim=_num(ev.get("bits_per_dim")),
        active_units=ev.get("active_units"),
        eval_images=int(images.shape[0]),
        steps=_steps(summary),
        train_seconds=round(train_seconds, 2),
        eval_seconds=round(eval_seconds, 2),
        seconds=round(train_seconds + eval_seconds, 2),
        stopped=summary.get("stopped"),
        resumed=resume,
    )
    write_json(
        run_dir / RESULTS,
        {
            **record,
            "summary": _jsonable(summary),
            "config": payload["config"],
            "eval": {k: payload[k] for k in ("eval_subset", "k", "eval_batch_size")},
        },
    )
    return record


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _steps(summary: dict[str, Any]) -> int | None:
    for key in ("steps", "step", "global_step"):
        if isinstance(summary.get(key), (int, float)):
            return int(summary[key])
    return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def evaluation_images(cfg: Config, subset: int, notice: Callable[[str], object] = print):
    """``subset`` (0: all) test images of the run's dataset as its model observes
    them (binary, or 8-bit grey or colour): the :func:`~vlae.data.fixed_subset`
    that ``vlae eval --subset`` uses too, read from where :func:`vlae.train.train`
    reads the training data."""
    import torch

    from ..data import fixed_subset, load_or_fallback

    test = load_or_fallback(cfg.train.dataset, "test", cfg.train.data_dir, notice=notice)
    return fixed_subset(test.observed(torch.Generator().manual_seed(0)), subset)
