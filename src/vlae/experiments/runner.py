"""The runner shared by the sweep and the ablation: every task not finished yet,
``jobs`` at a time, each in a fresh worker process (:func:`run_tasks`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import VLAEError
from .report import fmt
from .results import ERROR, check_tasks, write_json
from .task_run import evaluation_images
from .tasks import Task, check_run_options
from .workers import Workers, start_context

__all__ = ["run_tasks"]


def run_tasks(
    tasks: Sequence[Task],
    out_dir: str | os.PathLike,
    *,
    eval_subset: int = 1000,
    k: int = 64,
    eval_batch_size: int = 50,
    jobs: int = 0,
    threads: int = 1,
    data: Any = None,
    test_images: Any = None,
    log: Callable[[str], object] = print,
    settings: tuple[str, dict[str, Any]] | None = None,
) -> tuple[list[dict | None], dict]:
    """Run every task not finished yet, ``jobs`` at a time, each in a fresh process.

    A task whose ``<out_dir>/<name>/results.json`` exists is skipped (after
    checking that it was made with the same configuration and evaluation
    settings); one with a checkpoint but no results is resumed from it (after
    checking that its checkpoint was made with the same configuration, budget
    included, so a table never holds runs of two budgets). Finished runs of
    other tasks in ``out_dir`` must share the tasks' training and evaluation
    settings too: a table holds the runs of one setting.

    SIGINT (Ctrl-C) or SIGTERM stops the runs: each worker gets the signal
    once (the terminal's Ctrl-C reaches only this process), writes a
    checkpoint as ``vlae train`` does and exits; workers still running after
    :data:`~vlae.experiments.workers.STOP_GRACE` seconds are killed (their last checkpoint stays). Then
    :class:`~vlae.experiments.workers.Stopped` is raised. A second signal stops the workers at once.

    Args:
        tasks: runs to make (unique names).
        out_dir: where the run folders go.
        eval_subset: test images to evaluate on (a fixed random subset, the
            same for every run; 0: all).
        k: importance samples of the IW bound.
        eval_batch_size: images per evaluation batch.
        jobs: worker processes (0: ``os.cpu_count() // threads``).
        threads: torch threads per worker.
        data: passed to :func:`vlae.train.train` as ``data=`` (default: each
            run loads its dataset itself).
        test_images: ``uint8 (N, C, H, W)`` evaluation images, of which the
            first ``eval_subset`` are used (default: ``eval_subset`` test
            images of the configured dataset).
        log: one line per event.
        settings: the experiment's settings file ``(name, content)``, written into ``out_dir``
            once the checks pass (a refused folder keeps its own), before any run starts.

    Returns:
        ``(records, status)``: one record per task in task order (``None``
        where a run failed), and ``{"ran": [...], "skipped": [...], "failed": {name: message}}``.

    Raises:
        VLAEError: a run folder made with other settings (nothing is started).
        Stopped: SIGINT or SIGTERM.
    """
    check_run_options(jobs=jobs, threads=threads, k=k, eval_subset=eval_subset, eval_batch_size=eval_batch_size)
    names = _unique_names(tasks)
    jobs = jobs or max(1, (os.cpu_count() or 1) // threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_settings = {"eval_subset": eval_subset, "k": k, "eval_batch_size": eval_batch_size}

    finished_before = check_tasks(tasks, out, eval_settings)
    if settings is not None:
        write_json(out / settings[0], settings[1])
    records: dict[str, dict] = dict(finished_before)
    status: dict[str, Any] = {"ran": [], "skipped": list(finished_before), "failed": {}}
    pending = [t for t in tasks if t.name not in finished_before]
    if status["skipped"]:
        log(f"skipping {len(status['skipped'])} finished run(s) in {out}")
    if pending:
        images = _evaluation_images(tasks[0], eval_subset, test_images, log)
        payloads = _payloads(pending, out, threads, eval_settings)
        log(f"running {len(pending)} run(s) with {min(jobs, len(pending))} worker(s) x {threads} thread(s) in {out}")
        workers = Workers(start_context(), min(jobs, len(pending)), (threads, data, images))
        stopped = workers.run(payloads, _recorder(out, records, status, log))
        if stopped is not None:
            raise stopped
    return [records.get(n) for n in names], status


def _unique_names(tasks: Sequence[Task]) -> list[str]:
    """The tasks' names, which name their folders: two tasks must not share one."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise VLAEError(f"duplicate run names in {names}")
    return names


def _evaluation_images(first: Task, eval_subset: int, test_images: Any, log: Callable[[str], object]) -> Any:
    """The images every run is evaluated on: ``test_images`` (its first ``eval_subset``),
    or the first task's test set, loaded once here rather than once per worker."""
    if test_images is None:
        return evaluation_images(first.config, eval_subset, notice=log)
    return test_images[:eval_subset] if eval_subset else test_images


def _payloads(pending: Sequence[Task], out: Path, threads: int, eval_settings: dict[str, Any]) -> list[dict]:
    """What a worker process receives for each task: plain data, picklable."""
    return [
        {
            "name": t.name,
            "run_dir": str(out / t.name),
            "config": t.config.to_dict(),
            "meta": t.meta,
            "threads": threads,
            **eval_settings,
        }
        for t in pending
    ]


def _recorder(
    out: Path, records: dict[str, dict], status: dict[str, Any], log: Callable[[str], object]
) -> Callable[[str, tuple], None]:
    """The callback that files each finished run's outcome into ``records`` and
    ``status``, logs it, and leaves a failed run's traceback in its folder."""

    def finished(name: str, outcome: tuple) -> None:
        if outcome[0] == "done":
            records[name] = record = outcome[1]
            status["ran"].append(name)
            log(
                f"done    {name}: KL {fmt(record['kl'])} nats, NLL (IW, k={record['k']}) "
                f"{fmt(record['nll'])}, {record['steps']} steps, {record['seconds']:.0f} s"
            )
        elif outcome[0] == "failed":
            status["failed"][name] = outcome[1]
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / ERROR).write_text(outcome[2])
            log(f"failed  {name}: {outcome[1]} (details in {out / name / ERROR})")

    return finished
