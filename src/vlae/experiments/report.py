"""The tables of an experiment: ``<stem>.csv``, ``.json`` and ``.md`` from run
records (:func:`write_table`), and the words every table shares (the estimator,
the training budget, the test images)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from .results import write_json

__all__ = ["write_table", "scope_note", "estimator", "fmt"]


def fmt(x: Any, digits: int = 2) -> str:
    """A table cell: ``-`` for a missing value, floats to ``digits`` places."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_table(
    records: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    stem: str,
    columns: Sequence[tuple[str, str]],
    extra: dict[str, Any] | None = None,
    title: str = "",
    note: str = "",
) -> dict[str, Path]:
    """Write ``<stem>.csv`` (all fields), ``<stem>.json`` and ``<stem>.md`` (``columns``:
    ``(key, header)`` pairs) in the given record order."""
    out = Path(out_dir)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("csv", "json", "md")}
    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    write_json(paths["json"], {**(extra or {}), "runs": records})
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in records]
    if note:
        lines += ["", note]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


def estimator(records: list[dict[str, Any]]) -> str:
    """The bound the NLL column holds, with every ``k`` the records were evaluated with."""
    ks = sorted({r["k"] for r in records if r.get("k") is not None})
    return f"IW bound, k={', '.join(map(str, ks))}" if ks else "IW bound"


def scope_note(records: list[dict[str, Any]]) -> str:
    """What every number of a report shares: the free bits trained with and the
    test images evaluated on (several values when the records disagree)."""

    def values(key: str) -> str:
        return ", ".join(map(str, sorted({r[key] for r in records if r.get(key) is not None}))) or "?"

    return (
        f"Training budget per run: {values('budget')}. Free bits: {values('free_bits')} nats per pixel. "
        f"Nats per image on {values('eval_images')} test images"
    )
