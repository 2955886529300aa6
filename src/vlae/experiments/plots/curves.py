"""Training curves from a run's ``metrics.jsonl``: the loss terms against steps,
validation beside training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.figure import Figure

from ...errors import VLAEError
from . import _canvas as canvas

__all__ = ["plot_training_curves", "read_metrics"]


def read_metrics(metrics_path, notice: Callable[[str], object] | None = canvas.warn) -> tuple[list[dict], list[dict]]:
    """Training and validation records of a ``metrics.jsonl`` (one JSON object a
    line; validation records carry ``"split": "valid"``).

    Records marked ``"superseded"`` (written after the checkpoint a run was
    resumed from) are left out. Blank lines are ignored; lines that are not a
    JSON object (e.g. the last one, cut by a kill) are skipped and counted in
    one warning through ``notice``. A file that is not UTF-8 text raises
    :class:`VLAEError`.
    """
    train: list[dict] = []
    valid: list[dict] = []
    path = Path(metrics_path)
    if not path.is_file():
        raise VLAEError(f"metrics file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise VLAEError(
            f"metrics file {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); not a metrics.jsonl written by vlae"
        ) from None
    except OSError as error:
        raise VLAEError(f"metrics file {path}: cannot read ({error.strerror or error})") from None
    broken = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            broken.append(number)
            continue
        if rec.get("superseded"):
            continue
        split = rec.get("split", "train")
        (valid if split == "valid" else train if split == "train" else []).append(rec)
    if broken and notice is not None:
        notice(
            f"warning: {path}: skipped {len(broken)} line(s) that are not JSON objects (line {broken[0]}"
            f"{' and more' if len(broken) > 1 else ''})"
        )
    return train, valid


def _series(records: list[dict], key: str, xs: list[float | None]) -> tuple[list[float], list[float]]:
    pts = [
        (x, float(r[key]))
        for x, r in zip(xs, records)
        if isinstance(r.get(key), (int, float)) and x is not None and math.isfinite(float(r[key]))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(values: list[float], span: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, bias-corrected."""
    out, avg, alpha = [], 0.0, 2.0 / (span + 1)
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** (i + 1)))
    return np.asarray(out)


def _valid_steps(train: list[dict], valid: list[dict]) -> list[float | None]:
    """A step for each validation record: its own, else the last training step of its epoch."""
    last: dict[Any, Any] = {}
    for r in train:
        if isinstance(r.get("epoch"), (int, float)) and isinstance(r.get("step"), (int, float)):
            last[r["epoch"]] = max(last.get(r["epoch"], r["step"]), r["step"])
    steps = []
    for r in valid:
        if isinstance(r.get("step"), (int, float)):
            steps.append(r["step"])
        elif isinstance(r.get("epoch"), (int, float)):
            earlier = [s for e, s in last.items() if e <= r["epoch"]]
            steps.append(max(earlier) if earlier else None)
        else:
            steps.append(None)
    return steps


def plot_training_curves(metrics_path, out, notice: Callable[[str], object] | None = canvas.warn) -> Path:
    """Loss and negative ELBO (nats per image) and the KL term against the
    optimiser step, with the validation bounds overlaid.

    Validation records may hold ``nelbo`` (or ``elbo``, negated here) and
    importance-weighted bounds under keys starting with ``iw`` (plotted as the
    negative log-likelihood bound, ``-log p(x) <= -IW``).
    """
    train, valid = read_metrics(metrics_path, notice)
    if not train and not valid:
        raise VLAEError(f"metrics file {metrics_path} holds no records")
    steps = [r.get("step", i) for i, r in enumerate(train)]
    vsteps = _valid_steps(train, valid)
    for r in valid:  # normalise the validation keys to negative bounds in nats
        if "nelbo" not in r and isinstance(r.get("elbo"), (int, float)):
            r["nelbo"] = -r["elbo"]
    iw_keys = sorted(
        {k for r in valid for k, v in r.items() if k.lower().startswith("iw") and isinstance(v, (int, float))}
    )
    has_lr = any(isinstance(r.get("lr"), (int, float)) for r in train)

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if has_lr else 2, squeeze=False)[0]
    span = max(1, len(train) // 50)
    ax = axes[0]
    for key, color in (("loss", "tab:gray"), ("nelbo", "tab:blue")):
        xs, ys = _series(train, key, steps)
        if ys:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, _smooth(ys, span), color=color, label=f"train {'loss' if key == 'loss' else '-ELBO'}")
    xs, ys = _series(valid, "nelbo", vsteps)
    if ys:
        ax.plot(xs, ys, "o-", color="tab:orange", label="valid -ELBO")
    for key, color in zip(iw_keys, ("tab:red", "tab:purple", "tab:brown")):
        vals = [
            dict(r, **{key: -r[key] if isinstance(r.get(key), (int, float)) and r[key] < 0 else r.get(key)})
            for r in valid
        ]
        xs, ys = _series(vals, key, vsteps)
        if ys:
            ax.plot(xs, ys, "s--", color=color, label=f"valid -log p(x) bound ({key})")
    ax.set(title="Objective", xlabel="optimiser step", ylabel="nats per image")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    ax = axes[1]
    xs, ys = _series(train, "kl", steps)
    if ys:
        ax.plot(xs, ys, color="tab:green", alpha=0.25, linewidth=0.8)
        ax.plot(xs, _smooth(ys, span), color="tab:green", label="train KL")
    xs, ys = _series(valid, "kl", vsteps)
    if ys:
        ax.plot(xs, ys, "o-", color="tab:olive", label="valid KL")
    ax.set(title="KL(q(z|x) || p(z))", xlabel="optimiser step", ylabel="nats per image")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)

    if has_lr:
        ax = axes[2]
        xs, ys = _series(train, "lr", steps)
        ax.plot(xs, ys, color="tab:cyan")
        ax.set(title="Learning rate", xlabel="optimiser step", ylabel="learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves ({Path(metrics_path).parent.name or Path(metrics_path).name})")
    return canvas.save(fig, out)
