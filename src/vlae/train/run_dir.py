"""The run folder: one run per folder, and what a resumed run repairs in it."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import checkpoint_name, copy_checkpoint, remove_temporaries
from ..errors import VLAEError
from ..outputs import atomic_write, create_folder, file_in_the_way

__all__ = ["prepare_run_dir", "trim_metrics", "repair_best"]

# What --overwrite may delete: the files a run writes (anything else in the folder is refused).
_RUN_FILE = re.compile(r"^(.*\.(json|jsonl|pt|png|pdf|tmp|safetensors|log)|figures|tb|ERROR)$")


def _some(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def prepare_run_dir(
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    notice: Callable[[str], object] = print,
) -> Path:
    """Check and create the run folder; one run per folder.

    A folder that holds anything is refused unless ``resume`` (continue the
    run in it; orphaned ``.*.tmp`` files of killed writes are removed) or
    ``overwrite`` (delete the previous run first; refused if the folder holds
    files a run does not write). A folder that cannot be created or written
    is one :class:`VLAEError`.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise VLAEError("train: --resume and --overwrite exclude each other (continue the run, or replace it)")
    blocking = file_in_the_way(run_dir)
    if blocking is not None:
        raise VLAEError(f"{run_dir}: cannot create the run folder: {blocking} is a file, not a folder")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if entries and not resume:
        if not overwrite:
            raise VLAEError(
                f"{run_dir}: the run folder is not empty ({_some(entries)}); pass --resume to continue "
                f"its run, --overwrite to replace it, or choose another --run-dir"
            )
        foreign = [name for name in entries if not _RUN_FILE.match(name)]
        if foreign:
            raise VLAEError(
                f"{run_dir}: --overwrite deletes only what a run writes, and the folder also holds "
                f"{_some(foreign)}; move those away or choose another --run-dir"
            )
        for path in run_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        notice(f"--overwrite: deleted the previous run in {run_dir} ({_some(entries)})")
    create_folder(run_dir, "cannot create the run folder", f"{run_dir}: the run folder is not writable")
    if resume:
        removed = remove_temporaries(run_dir)
        if removed:
            notice(
                f"removed {len(removed)} temporary file(s) left by an interrupted write: "
                f"{_some([p.name for p in removed])}"
            )
    return run_dir


def trim_metrics(path: Path, step: int) -> int:
    """Drop the records past ``step`` (and broken lines) from ``metrics.jsonl``; how many were dropped.

    They were written after the checkpoint being resumed, by a session that
    did not reach its next checkpoint; the resumed run writes them again.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # half a line (killed mid-write) or not text
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))
    return dropped


def repair_best(run_dir: Path, best_step: Any, notice: Callable[[str], object]) -> None:
    """Bring ``best.pt`` up to date with the checkpoint that says it is best.

    The checkpoint of an improved step is written before ``best.pt`` is copied
    from it, so a kill (or a full disk) in between leaves ``best.pt`` one best
    behind; that checkpoint is then the latest one, and still on disk.
    """
    if not isinstance(best_step, int):
        return
    source, target = run_dir / checkpoint_name(best_step), run_dir / "best.pt"
    if source.is_file() and not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
        copy_checkpoint(source, target)
        notice(f"updated {target} from {source.name}: the previous session stopped before copying it")
