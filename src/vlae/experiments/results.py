"""What an experiment folder holds: one ``<run>/results.json`` per finished run,
checked before anything is started (:func:`check_tasks`: a table holds runs of one
setting) and read back for the tables (:func:`collect_results`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import VLAEError
from .tasks import Task

__all__ = ["RESULTS", "ERROR", "write_json", "check_tasks", "collect_results", "training_budget"]

#: Keys of a run's configuration that do not change its result (ignored when a
#: rerun checks that a finished run was made with the requested configuration).
_COSMETIC = {("train", "progress"), ("train", "tensorboard")}

#: A finished run's record, configuration and evaluation settings, in its folder.
RESULTS = "results.json"
#: A failed run's traceback, in its folder (removed when the run starts again).
ERROR = "error.txt"


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(config))  # tuples -> lists, as stored
    for section, key in _COSMETIC:
        d.get(section, {}).pop(key, None)
    return d


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old, new = _comparable(old), _comparable(new)
    diffs = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
        elif a != b:
            diffs.append(f"{section}: {a!r} -> {b!r}")
    return diffs


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON (non-finite numbers as ``null``, other objects as strings),
    written atomically: a ``results.json`` is either complete or absent."""
    from ..outputs import write_json as write_strict

    write_strict(path, obj, default=str)


def check_tasks(
    tasks: Sequence[Task], out_dir: str | os.PathLike, eval_settings: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Check ``tasks`` against what ``out_dir`` holds before anything is written or
    started; return the records of the tasks already finished there.

    Finished runs must have the tasks' configuration and evaluation settings,
    interrupted ones (a checkpoint, no results) the tasks' configuration, budget
    included, and every other finished run in the folder their training and
    evaluation settings: a table holds runs of one setting.

    Raises:
        VLAEError: naming the first run folder made with other settings.
    """
    out = Path(out_dir)
    if not out.is_dir():
        return {}
    records = {}
    for task in tasks:
        path = out / task.name / RESULTS
        if not path.is_file():
            _check_interrupted(out / task.name, task)
            continue
        stored = _read_results(path)
        diffs = _config_diff(stored.get("config", {}), task.config.to_dict())
        diffs += [
            f"{key}: {stored.get('eval', {}).get(key)!r} -> {value!r}"
            for key, value in eval_settings.items()
            if stored.get("eval", {}).get(key) != value and key != "eval_batch_size"
        ]
        if diffs:
            raise VLAEError(
                f"{path} was made with a different configuration ({'; '.join(diffs[:3])}); use another output directory"
            )
        records[task.name] = _record_of(stored)
    if tasks:
        _check_folder_settings(out, {"config": tasks[0].config.to_dict(), "eval": eval_settings})
    return records


def _check_interrupted(run_dir: Path, task: Task) -> None:
    """Refuse to resume an interrupted run whose checkpoint was made with other settings
    (e.g. another --max-steps): its result would sit in a table beside runs of another budget."""
    from ..checkpoint import latest_checkpoint, load_checkpoint

    last = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if last is None:
        return
    state = load_checkpoint(last, map_location="cpu")
    saved = state["config"].to_dict()
    saved.get("train", {}).pop("data_dir", None)  # resuming checks the data's identity itself
    wanted = task.config.to_dict()
    wanted.get("train", {}).pop("data_dir", None)
    diffs = _config_diff(saved, wanted)
    if diffs:
        step = state.get("trainer", {}).get("step")
        raise VLAEError(
            f"{run_dir} was interrupted at step {step} of a run with other settings "
            f"({'; '.join(diffs[:3])}); rerun with the settings it was started with to finish it, "
            f"or use another output directory"
        )


def _settings(stored: dict[str, Any]) -> dict[str, Any]:
    """What every run of one table shares: the training options and the evaluation."""
    train = _comparable(stored.get("config", {})).get("train", {})
    train.pop("data_dir", None)
    ev = stored.get("eval", {})
    return {"train": train, "eval": {key: ev.get(key) for key in ("eval_subset", "k")}}


def _check_folder_settings(out: Path, reference: dict[str, Any] | None = None) -> None:
    """All finished runs under ``out`` (and ``reference``, the runs about to be made) have one setting."""
    paths = sorted(out.glob(f"*/{RESULTS}"))
    first = (_settings(reference), "this command") if reference is not None else None
    for path in paths:
        mine = _settings(_read_results(path))
        if first is None:
            first = (mine, str(path))
            continue
        if mine != first[0]:
            diffs = _config_diff(mine, first[0])
            than = "" if reference is not None else f" than {first[1]}"
            raise VLAEError(
                f"{path} was made with a different configuration{than} ({'; '.join(diffs[:3])}); "
                f"a table holds runs of one setting: use another output directory"
            )


def _read_results(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise VLAEError(f"{path}: unreadable results file ({error}); delete it to rerun that run") from None


def _record_of(stored: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in stored.items() if k not in ("summary", "config", "eval")}
    if "budget" not in record and isinstance(stored.get("config", {}).get("train"), dict):  # older results
        record["budget"] = training_budget(stored["config"]["train"])
    return record


def training_budget(train: dict[str, Any]) -> str:
    """A run's training budget in words, whichever limit comes first: ``"600 steps or 300 s"``.

    >>> training_budget({"epochs": 0, "max_steps": 150, "time_budget": 0})
    '150 steps'
    """
    limits = (("epochs", "epoch", "epochs"), ("max_steps", "step", "steps"), ("time_budget", "s", "s"))
    parts = [f"{train[key]:g} {one if train[key] == 1 else many}" for key, one, many in limits if train.get(key)]
    return " or ".join(parts) or "unlimited"


def collect_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of every finished run (``*/results.json``) under ``out_dir``.

    Raises:
        VLAEError: not a folder; runs made with different training or evaluation
            settings (a table holds the runs of one setting).
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise VLAEError(f"--report: {out} is not a directory")
    _check_folder_settings(out)
    return [_record_of(_read_results(p)) for p in sorted(out.glob(f"*/{RESULTS}"))]
