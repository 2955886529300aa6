"""The result file of an evaluation: its name, and which result it may replace.

A result is named by what was measured on which data (:func:`result_name`),
and records the data's identity (:func:`vlae.data.dataset_identity`: name,
split, image count, SHA-256 of the pixels). A new result replaces an old one
only when both measured the same data (:func:`_same_data`), so, e.g., the
embedded fallback's number never overwrites the real test set's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import VLAEError

__all__ = ["result_name"]


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
    return (
        f"eval_{dataset}_{split}_k{k}"
        + (f"_n{images}" if images else "")
        + ("_raw" if weights == "raw" else "")
        + ".json"
    )


def _same_data(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an existing result measured the data ``new`` identifies: the same
    name, split, image count and pixels (``sha256``), or, for results without a
    checksum, the same source files."""
    if isinstance(old.get("data_identity"), dict):
        before = old["data_identity"]
    else:  # results written before data_identity existed
        before = {
            "name": old.get("dataset"),
            "source": old.get("data"),
            "split": old.get("split"),
            "images": old.get("images"),
        }
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
        before = old.get("data_identity")
        was = (before if isinstance(before, dict) else {}).get("source") or old.get("data") or old.get("dataset")
        raise VLAEError(
            f"{target} holds a result of other data ({was}); not replacing it with one of "
            f"{identity['name']} {identity['split']} ({identity['source']}); choose another --out"
        )
