"""The paper's experiments as one command each: ``vlae reproduce static-mnist`` and
``vlae reproduce cifar10`` (:data:`vlae.protocols.PROTOCOLS`).

A reproduction runs in four steps:

1. **Projection.** A short timed warm-up of the protocol's own model and batch on this
   device (in a temporary folder) measures the training loop's images/s and the IW
   bound's samples/s, and projects the whole protocol's wall time.
2. **Consent.** On a CPU the protocol takes days: the command stops after the
   projection unless ``--yes`` starts it anyway or ``--time-budget`` bounds the
   training. On a GPU it goes on.
3. **Training** into ``RUN_DIR`` (``--resume`` continues an interrupted reproduction
   exactly), then the **IW bound** with the paper's ``k`` on the whole test set, from
   the last checkpoint's Polyak-averaged weights: the paper's "final parameters"
   (appendix A). Its final runs train on the validation images too, so the validation
   bound cannot pick a checkpoint (``best.pt`` is then chosen on training images).
4. **Report**: ``RUN_DIR/reproduce.json`` and ``reproduce.md``, the paper's number
   beside ours, with every deviation from the protocol named (a time budget, fewer
   test images, another ``k``, config overrides, a fallback dataset).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import Config, apply_overrides, get_preset
from .errors import VLAEError
from .protocols import PROTOCOLS, Protocol

__all__ = ["protocol_config", "training_rate", "project", "reproduce"]


def protocol_config(protocol: Protocol, device: str = "auto", overrides: Sequence[str] = ()) -> Config:
    """The protocol's preset with its batch size, length and data, then ``overrides``."""
    cfg = get_preset(protocol.preset)
    t = cfg.train
    t.dataset, t.batch_size, t.device = protocol.dataset, protocol.batch_size, device
    t.train_on_valid = protocol.train_on_valid
    t.epochs, t.max_steps = (0, protocol.steps) if protocol.steps else (protocol.epochs, 0)
    cfg.eval.k = protocol.eval_k
    return apply_overrides(cfg, list(overrides)).validate()


def training_rate(cfg: Config, steps: int, data: Any = None) -> tuple[float, dict[str, Any]]:
    """Images/s of ``steps`` steps of :func:`vlae.train.train` with ``cfg`` (in a temporary
    folder, no checkpoints), timed from the step after its warm-up and CUDA-graph capture to
    its last, with the run's summary. ``data`` as :func:`vlae.train.train` takes it."""
    from .train import train
    from .train.loop import GRAPH_WARMUP

    probe = copy.deepcopy(cfg)
    first = GRAPH_WARMUP + 3
    if steps <= first:
        raise VLAEError(f"timing needs more than {first} steps (warm-up and capture come first), got {steps}")
    probe.train.max_steps, probe.train.epochs, probe.train.time_budget = steps, 0, 0.0
    probe.train.eval_subset, probe.train.eval_k, probe.train.progress = 16, 0, "off"
    probe.train.checkpoint_seconds = 0.0
    on_gpu = probe.train.device != "cpu" and torch.cuda.is_available()
    stamps: dict[int, float] = {}

    def stamp(record: dict[str, Any]) -> None:
        if record["step"] in (first, steps):
            if on_gpu:
                torch.cuda.synchronize()
            stamps[record["step"]] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        summary = train(probe, Path(tmp) / "run", quiet=True, data=data, callback=stamp)
    images = (steps - first) * probe.train.batch_size * summary["world_size"]
    return images / (stamps[steps] - stamps[first]), summary


def project(
    cfg: Config, protocol: Protocol, warmup_steps: int = 30, notice: Callable[[str], object] = print
) -> dict[str, Any]:
    """Time ``warmup_steps`` steps of ``cfg``'s training loop and a pass of its IW bound on this
    device, and project the protocol's training and evaluation hours from the two rates."""
    from .evaluate import evaluate_model
    from .model import VLAE
    from .train.loop import GRAPH_WARMUP

    steps = max(warmup_steps, GRAPH_WARMUP + 5)
    notice(f"timing {steps} training steps of {cfg.preset} (batch {cfg.train.batch_size}) to project the protocol")
    train_rate, summary = training_rate(cfg, steps)
    device = torch.device(summary["device"])
    model = VLAE(cfg.model).to(device).eval()
    k = protocol.eval_k if device.type == "cuda" else min(protocol.eval_k, 64)
    images = 4 if device.type == "cuda" else 2
    x = torch.zeros(images, *cfg.model.image_shape, device=device)
    evaluate_model(model, x, k=k, batch_size=images, progress=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    evaluate_model(model, x, k=k, batch_size=images, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_rate = images * k / (time.perf_counter() - start)
    train_images = (
        cfg.train.max_steps * cfg.train.batch_size if cfg.train.max_steps else cfg.train.epochs * protocol.epoch_images
    )
    out = {
        "device": str(device),
        "precision": summary["precision"],
        "cuda_graph": summary["cuda_graph"],
        "train_images_per_s": train_rate,
        "iw_samples_per_s": eval_rate,
        "train_images": train_images,
        "train_hours": train_images / train_rate / 3600,
        "eval_hours": protocol.eval_samples / eval_rate / 3600,
    }
    out["total_hours"] = out["train_hours"] + out["eval_hours"]
    return out


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def reproduce(
    name: str,
    run_dir: str | Path,
    *,
    yes: bool = False,
    time_budget: float = 0.0,
    resume: bool = False,
    device: str = "auto",
    data_dir: str | None = None,
    overrides: Sequence[str] = (),
    warmup_steps: int = 30,
    subset: int = 0,
    k: int | None = None,
    notice: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Run protocol ``name`` into ``run_dir`` (see the module docstring); returns the report."""
    from .evaluate import evaluate_checkpoint
    from .train import train

    if name not in PROTOCOLS:
        raise VLAEError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    if time_budget < 0 or subset < 0 or (k is not None and k < 1) or warmup_steps < 1:
        raise VLAEError("reproduce: --time-budget and --subset must be >= 0, --k and --warmup-steps >= 1")
    protocol = PROTOCOLS[name]
    cfg = protocol_config(protocol, device, [*overrides, *([f"train.data_dir={data_dir}"] if data_dir else [])])
    run_dir = Path(run_dir)
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise VLAEError(
            f"{run_dir}: the run folder is not empty; pass --resume to continue its reproduction, "
            "or choose another --run-dir"
        )
    plan = project(cfg, protocol, warmup_steps, notice)
    notice(
        f"{name} on {plan['device']}: training {plan['train_images']:,} images at "
        f"{plan['train_images_per_s']:,.0f} images/s ~ {_hours(plan['train_hours'])}, "
        f"IW bound (k={protocol.eval_k}, {protocol.test_images:,} test images) ~ {_hours(plan['eval_hours'])}: "
        f"about {_hours(plan['total_hours'])} in all"
    )
    if plan["device"] == "cpu" and not yes and not time_budget:
        raise VLAEError(
            f"{name} would take about {_hours(plan['total_hours'])} on this CPU (projected from a timed "
            "warm-up); pass --yes to start it anyway, or --time-budget SECONDS to train for a fixed time"
        )
    cfg.train.time_budget = time_budget
    summary = train(cfg, run_dir, resume=resume)
    weights_file = Path(summary["checkpoint"] or run_dir / "best.pt")
    result = evaluate_checkpoint(weights_file, split="test", k=k or protocol.eval_k, subset=subset, notice=notice)
    report = _report(protocol, cfg, plan, summary, result, overrides, time_budget, subset, k)
    from .outputs import write_json, write_text

    write_json(run_dir / "reproduce.json", report)
    write_text(run_dir / "reproduce.md", _markdown(report))
    notice(
        f"{name}: ours {report['ours']:.2f} {protocol.unit} against the paper's {protocol.paper_value} "
        f"({report['estimator']}); report in {run_dir / 'reproduce.md'}"
    )
    return report


def _report(
    protocol: Protocol,
    cfg: Config,
    plan: dict,
    summary: dict,
    result: dict,
    overrides: Sequence[str],
    time_budget: float,
    subset: int,
    k: int | None,
) -> dict[str, Any]:
    ours = result["bits_per_dim"] if protocol.unit == "bits/dim" else result["nll"]
    seen = summary["steps"] * cfg.train.batch_size * summary["world_size"]
    deviations = []
    if seen < plan["train_images"]:
        deviations.append(f"training stopped by {summary['stopped']} after {seen:,} of {plan['train_images']:,} images")
    deviations += [f"config overrides: {', '.join(overrides)}"] if overrides else []
    deviations += [f"test images: {result['images']:,} of {protocol.test_images:,}"] if subset else []
    deviations += [f"IW bound with k={k} (the paper: {protocol.eval_k})"] if k and k != protocol.eval_k else []
    if result.get("data_fallback"):
        deviations.append(f"data: {result['data']} (a fallback, not the paper's dataset)")
    return {
        "protocol": protocol.name,
        "source": protocol.source,
        "paper": protocol.paper_value,
        "unit": protocol.unit,
        "ours": ours,
        "estimator": result["estimator"],
        "iw_nll_nats": result["nll"],
        "bits_per_dim": result["bits_per_dim"],
        "elbo_nats": result["elbo"],
        "k": result["k"],
        "test_images": result["images"],
        "train": {
            k_: summary[k_]
            for k_ in (
                "steps",
                "epochs",
                "stopped",
                "skipped",
                "images_per_s",
                "train_seconds",
                "device",
                "precision",
                "cuda_graph",
                "best_step",
                "best_nelbo",
            )
        },
        "images_seen": seen,
        "projection": plan,
        "time_budget": time_budget,
        "deviations": deviations,
        "faithful": not deviations,
        "evaluation": result.get("path"),
        "checkpoint": result.get("checkpoint"),  # its Polyak-averaged weights (result["weights"]: "ema")
        "config": cfg.to_dict(),
    }


def _markdown(r: dict) -> str:
    lines = [
        f"# vlae reproduce {r['protocol']}",
        "",
        f"Source: {r['source']}.",
        "",
        "| | paper | ours |",
        "| --- | --- | --- |",
        f"| test {r['unit']} | {r['paper']} | {r['ours']:.3f} |",
        f"| estimator | IW bound | {r['estimator']}, k = {r['k']}, {r['test_images']:,} test images |",
        f"| training | the protocol | {r['train']['steps']:,} steps ({r['images_seen']:,} images), "
        f"{r['train']['device']}, {r['train']['precision']}, {r['train']['train_seconds'] / 3600:.2f} h |",
        f"| weights | the final parameters, Polyak-averaged | `{Path(r['checkpoint'] or '?').name}`, Polyak-averaged |",
        "",
    ]
    if r["deviations"]:
        lines += ["Deviations from the protocol (the number above is not the paper's experiment):", ""]
        lines += [f"- {d}" for d in r["deviations"]]
    else:
        lines += ["No deviation from the protocol."]
    return "\n".join(lines) + "\n"
