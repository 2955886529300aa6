"""``vlae sweep``: how much the latent code carries as the decoder sees more.

The paper's central claim (section 3, "information preference"): information
that the autoregressive decoder can model on its own is modelled locally, and
``z`` only carries what the decoder cannot see. So as the PixelCNN's receptive
field grows from a few pixels to the whole image, the KL term (the nats ``z``
carries per image) should fall towards zero -- posterior collapse -- and an AF
prior should hold on to more information than a Gaussian one at the same
receptive field.

This module trains one model per grid point

    decoder_layers x decoder_kernel x prior

from a base preset, each for the same budget (seconds or steps), evaluates it
on the same test subset (single-sample KL and ELBO, and the IW bound with ``k``
samples), and writes ``sweep.csv``, ``sweep.json``, ``sweep.md`` and two plots
(``kl_vs_receptive_field.png``, ``nll_vs_receptive_field.png``) to the sweep
directory. Every run lives in its own folder with its own ``results.json``; a
rerun skips finished runs and resumes half-finished ones from their checkpoint,
so an interrupted sweep is continued by running the same command again. A
table holds the runs of one setting: a rerun with another budget (or any other
training or evaluation option) into a folder holding runs, finished or
interrupted, is refused before anything is written.

The runner (:func:`run_tasks`) is shared with :mod:`vlae.ablation`: worker
processes, each run in a fresh process with ``--threads`` threads. Ctrl-C or
SIGTERM (a scheduler's preemption) stops every run at a checkpoint, as
``vlae train`` does, and the command exits with 130 or 143 after one line.

Free bits (the presets' ``model.free_bits``) hold the KL at a floor, which
hides the collapse; switch them off to see the bound's own preference. Equal
steps (``--max-steps``) compare the decoders at the same point of training;
equal time (``--budget``) gives deep decoders fewer steps.

Example (2 priors x 5 depths x 2 kernels = 20 runs)::

    vlae sweep --out runs/sweep --preset mnist-small --set model.free_bits=0 \\
        --max-steps 1000 --layers 1,2,4,8,16 --kernels 3,5 --priors gaussian,af --jobs 2
    vlae sweep --out runs/sweep-300s --preset mnist-small --budget 300 ...   # 5 minutes per run instead
    vlae sweep --report runs/sweep          # tables and plots from finished runs
    vlae sweep --out runs/sweep-cifar --preset cifar-small --fields 4x2,5x3,7x4,9x5 --priors af \\
        --budget 1200 --k 64 --eval-subset 200   # colour: the paper's receptive fields AxB (column rf_name)

Worker processes start with ``forkserver`` (or ``spawn``), which import the
main module again: a script that calls :func:`run_sweep` needs the usual
``if __name__ == "__main__":`` guard.

From Python:
    >>> tasks = sweep_tasks(get_preset("tiny"), "masked", [1, 4], [3], ["af"])
    >>> [t.name for t in tasks]
    ['masked-L1-k3-af', 'masked-L4-k3-af']
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .config import PRESETS, Config, apply_overrides, config_from_dict, get_preset
from .errors import VLAEError

__all__ = [
    "Task", "Stopped", "STOP_GRACE", "sweep_tasks", "check_tasks", "run_tasks", "run_sweep", "collect_results",
    "write_sweep_report", "receptive_field_record", "context_coverage", "training_budget", "parse_list", "write_table",
    "base_config", "check_run_options", "add_cli", "main", "command", "standalone", "scope_note",
]

#: Keys of a run's configuration that do not change its result (ignored when a
#: rerun checks that a finished run was made with the requested configuration).
_COSMETIC = {("train", "progress"), ("train", "tensorboard")}

RESULTS = "results.json"
ERROR = "error.txt"


# ----------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One training-and-evaluation run.

    Attributes:
        name: folder name under the output directory (unique in a sweep).
        config: the run's full configuration.
        meta: extra columns for the tables (grid coordinates, variant label).
    """

    name: str
    config: Config
    meta: dict[str, Any] = field(default_factory=dict)


def parse_list(text: str, option: str, kind: type = int) -> list:
    """Read a comma-separated ``option`` value: ``"1,2,4"`` -> ``[1, 2, 4]``.

    Raises:
        VLAEError: empty list, or an item that is not a ``kind``.
    """
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise VLAEError(f"invalid {option}: empty list")
    try:
        values = [kind(s) for s in items]
    except ValueError:
        raise VLAEError(f"invalid {option}: cannot read {text!r} as a comma-separated list of "
                        f"{kind.__name__}s") from None
    return list(dict.fromkeys(values))  # drop repeats, keep order


def sweep_tasks(base: Config, decoder: str, layers: Sequence[int], kernels: Sequence[int],
                priors: Sequence[str], fields: Sequence[str] = ()) -> list[Task]:
    """The grid ``layers x kernels x priors`` on top of ``base``, validated; or,
    with ``fields``, the paper's receptive-field grid ``fields x priors`` of gated
    decoders named ``AxB`` (e.g. ``["4x2", "5x3", "7x4", "9x5"]`` for CIFAR-10,
    :meth:`vlae.pixelcnn.GatedPixelCNN.from_field`; ``layers`` and ``kernels`` unused).

    Raises:
        VLAEError: a grid value the decoder cannot take (layers < 1, an even or
            non-positive kernel, an unknown prior or decoder), naming the flag.
    """
    if fields:
        return _field_tasks(base, fields, priors)
    if decoder not in ("masked", "gated"):
        raise VLAEError(f"invalid --decoder: the sweep varies a PixelCNN's receptive field, so it must be "
                        f"masked or gated, got {decoder!r}")
    for n in layers:
        if n < 1:
            raise VLAEError(f"invalid --layers: every depth must be >= 1, got {n}")
    for k in kernels:
        if k < 1 or k % 2 == 0:
            raise VLAEError(f"invalid --kernels: every kernel size must be a positive odd number, got {k}")
    _check_priors_and_code(base, priors)
    tasks = []
    for prior in priors:
        for k in kernels:
            for n in layers:
                cfg = config_from_dict(base.to_dict())
                cfg.model.decoder, cfg.model.decoder_layers, cfg.model.decoder_kernel = decoder, n, k
                cfg.model.prior = prior
                cfg.validate()
                tasks.append(Task(f"{decoder}-L{n}-k{k}-{prior}", cfg,
                                  {"decoder": decoder, "layers": n, "kernel": k, "prior": prior}))
    return tasks


def _check_priors_and_code(base: Config, priors: Sequence[str]) -> None:
    """One-line errors for a grid whose priors are unknown or whose model has no latent code."""
    from .config import PRIORS

    for p in priors:
        if p not in PRIORS:
            raise VLAEError(f"invalid --priors: unknown prior {p!r}; choose from {', '.join(PRIORS)}")
    if base.model.latent_dim == 0:
        raise VLAEError("invalid --set model.latent_dim=0: the sweep measures the KL of a latent code; "
                        "an unconditional PixelCNN has none")


def _field_tasks(base: Config, fields: Sequence[str], priors: Sequence[str]) -> list[Task]:
    from .pixelcnn import field_depths

    for f in fields:
        try:
            field_depths(f)
        except ValueError as error:
            raise VLAEError(f"invalid --fields: {error}") from None
    _check_priors_and_code(base, priors)
    tasks = []
    for prior in priors:
        for f in fields:
            cfg = config_from_dict(base.to_dict())
            cfg.model.decoder, cfg.model.decoder_field, cfg.model.prior = "gated", f, prior
            cfg.validate()
            tasks.append(Task(f"gated-{f}-{prior}", cfg, {"decoder": "gated", "field": f, "prior": prior}))
    return tasks


# ----------------------------------------------------------------------------- receptive field


def context_coverage(field: Iterable[tuple[int, int]], height: int = 28, width: int = 28) -> float:
    """Fraction of the causal context a decoder sees, averaged over the image.

    Pixel ``(i, j)`` (raster order) could condition on the ``i * width + j``
    pixels before it; its receptive field, clipped to the image, covers some of
    them. The mean ratio over all pixels but the first is 1.0 for a decoder
    that sees every preceding pixel (a "whole-image" PixelCNN) and small for a
    local one. Unlike the raw size it saturates at the image's size, which makes
    grids with different kernels comparable.
    """
    import numpy as np

    counts = np.zeros((height, width))
    for dy, dx in field:
        rows = slice(max(0, -dy), max(0, min(height, height - dy)))  # pixels i with 0 <= i + dy < height
        cols = slice(max(0, -dx), max(0, min(width, width - dx)))
        counts[rows, cols] += 1
    preceding = np.arange(height * width, dtype=float).reshape(height, width)
    return float((counts.ravel()[1:] / preceding.ravel()[1:]).mean())


def receptive_field_record(decoder: Any, image_shape: Sequence[int] = (1, 28, 28)) -> dict[str, Any]:
    """Receptive-field columns of a decoder (any :mod:`vlae.pixelcnn` decoder).

    ``rf_size`` is :meth:`receptive_field_size` (pixels an interior output
    depends on, unclipped), ``rf_up``/``rf_left``/``rf_right`` its extent and
    ``rf_coverage`` the fraction of the causal context it covers
    (:func:`context_coverage`), ``rf_name`` the field in the paper's ``AxB``
    notation (``None`` for fields of another shape, e.g. a masked PixelCNN's).

    Example:
        >>> from vlae.pixelcnn import MaskedPixelCNN
        >>> receptive_field_record(MaskedPixelCNN(layers=2))["rf_size"]
        11
    """
    ext = decoder.receptive_field_extent()
    return {"rf_size": int(decoder.receptive_field_size()), "rf_up": ext["up"], "rf_left": ext["left"],
            "rf_right": ext["right"], "rf_name": getattr(decoder, "receptive_field_name", lambda: None)(),
            "rf_coverage": round(context_coverage(decoder.receptive_field(), *image_shape[1:]), 4)}


# ----------------------------------------------------------------------------- worker

_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, data: Any, test_images: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (in-process runs)
        pass
    _WORKER.update(threads=threads, data=data, test_images=test_images)


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
            diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{section}: {a!r} -> {b!r}")
    return diffs


def _has_checkpoint(run_dir: Path) -> bool:
    from .checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None


def _write_json(path: Path, obj: Any) -> None:
    from .outputs import write_json

    write_json(path, obj, default=str)  # strict JSON, atomic: a results.json is either complete or absent


def _run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and record one run (in a worker process)."""
    from .checkpoint import load_model
    from .evaluate import evaluate_model
    from .train import train

    if "threads" not in _WORKER:  # called in-process, e.g. from a debugger
        _init_worker(payload["threads"], None, None)
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
        images = _test_images(cfg, payload["eval_subset"], notice=lambda _msg: None)
    t1 = time.perf_counter()
    # the same posterior draws for every run of a sweep
    ev = evaluate_model(model, images, k=payload["k"], batch_size=payload["eval_batch_size"], progress=False,
                        seed=cfg.train.seed)
    eval_seconds = time.perf_counter() - t1

    m = cfg.model
    record: dict[str, Any] = {"name": payload["name"], **payload["meta"]}
    record.update(decoder=m.decoder, layers=getattr(model.decoder, "layers", m.decoder_layers),
                  kernel=getattr(model.decoder, "kernel_size", m.decoder_kernel),
                  prior=m.prior if m.latent_dim else "none", posterior=m.posterior if m.latent_dim else "none",
                  latent_dim=m.latent_dim, free_bits=m.free_bits, budget=training_budget(cfg.to_dict()["train"]))
    record.update(receptive_field_record(model.decoder, m.image_shape))
    record.update(
        kl=_num(ev.get("kl")), nll=_num(ev.get("nll")), nll_se=_num(ev.get("nll_se")), k=payload["k"],
        elbo=_num(ev.get("elbo")), nelbo=_num(-ev["elbo"]) if ev.get("elbo") is not None else None,
        recon=_num(ev.get("recon")), bits_per_dim=_num(ev.get("bits_per_dim")),
        active_units=ev.get("active_units"), eval_images=int(images.shape[0]),
        steps=_steps(summary), train_seconds=round(train_seconds, 2), eval_seconds=round(eval_seconds, 2),
        seconds=round(train_seconds + eval_seconds, 2), stopped=summary.get("stopped"), resumed=resume,
    )
    _write_json(run_dir / RESULTS, {**record, "summary": _jsonable(summary), "config": payload["config"],
                                    "eval": {k: payload[k] for k in ("eval_subset", "k", "eval_batch_size")}})
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


def _test_images(cfg: Config, subset: int, notice: Callable[[str], object] = print):
    """``subset`` (0: all) binarized test images of the run's dataset: the
    :func:`~vlae.data.fixed_subset` that ``vlae eval --subset`` uses too,
    read from where :func:`vlae.train.train` reads the training data."""
    import torch

    from .data import fixed_subset, load_or_fallback

    test = load_or_fallback(cfg.train.dataset, "test", cfg.train.data_dir, notice=notice)
    return fixed_subset(test.observed(torch.Generator().manual_seed(0)), subset)


# ----------------------------------------------------------------------------- runner


def check_run_options(*, jobs: int, threads: int, k: int, eval_subset: int, eval_batch_size: int) -> None:
    """Raise :class:`VLAEError`, naming the flag, for an impossible runner option."""
    for flag, value, low in (("--jobs", jobs, 0), ("--threads", threads, 1), ("--k", k, 1),
                             ("--eval-subset", eval_subset, 0), ("--eval-batch-size", eval_batch_size, 1)):
        if value < low:
            raise VLAEError(f"invalid {flag}: must be >= {low}, got {value}")


def run_tasks(tasks: Sequence[Task], out_dir: str | os.PathLike, *, eval_subset: int = 1000, k: int = 64,
              eval_batch_size: int = 50, jobs: int = 0, threads: int = 1, data: Any = None,
              test_images: Any = None, log: Callable[[str], object] = print) -> tuple[list[dict | None], dict]:
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
    :data:`STOP_GRACE` seconds are killed (their last checkpoint stays). Then
    :class:`Stopped` is raised. A second signal stops the workers at once.

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

    Returns:
        ``(records, status)``: one record per task in task order (``None``
        where a run failed), and ``{"ran": [...], "skipped": [...], "failed": {name: message}}``.

    Raises:
        VLAEError: a run folder made with other settings (nothing is started).
        Stopped: SIGINT or SIGTERM.
    """
    check_run_options(jobs=jobs, threads=threads, k=k, eval_subset=eval_subset, eval_batch_size=eval_batch_size)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise VLAEError(f"duplicate run names in {names}")
    jobs = jobs or max(1, (os.cpu_count() or 1) // threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_settings = {"eval_subset": eval_subset, "k": k, "eval_batch_size": eval_batch_size}

    finished_before = check_tasks(tasks, out, eval_settings)
    records: dict[str, dict] = dict(finished_before)
    status: dict[str, Any] = {"ran": [], "skipped": list(finished_before), "failed": {}}
    pending = [t for t in tasks if t.name not in finished_before]
    if status["skipped"]:
        log(f"skipping {len(status['skipped'])} finished run(s) in {out}")
    if not pending:
        return [records.get(n) for n in names], status

    if test_images is None:
        test_images = _test_images(tasks[0].config, eval_subset, notice=log)
    elif eval_subset:
        test_images = test_images[:eval_subset]
    payloads = [{"name": t.name, "run_dir": str(out / t.name), "config": t.config.to_dict(), "meta": t.meta,
                 "threads": threads, **eval_settings} for t in pending]
    log(f"running {len(pending)} run(s) with {min(jobs, len(pending))} worker(s) x {threads} thread(s) "
        f"in {out}")

    def finished(name: str, outcome: tuple) -> None:
        if outcome[0] == "done":
            records[name] = record = outcome[1]
            status["ran"].append(name)
            log(f"done    {name}: KL {_fmt(record['kl'])} nats, NLL (IW, k={record['k']}) "
                f"{_fmt(record['nll'])}, {record['steps']} steps, {record['seconds']:.0f} s")
        elif outcome[0] == "failed":
            status["failed"][name] = outcome[1]
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / ERROR).write_text(outcome[2])
            log(f"failed  {name}: {outcome[1]} (details in {out / name / ERROR})")

    stopped = _Workers(_context(), min(jobs, len(pending)), (threads, data, test_images)).run(payloads, finished)
    if stopped is not None:
        raise stopped
    return [records.get(n) for n in names], status


def check_tasks(tasks: Sequence[Task], out_dir: str | os.PathLike, eval_settings: dict[str, Any]
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
        diffs += [f"{key}: {stored.get('eval', {}).get(key)!r} -> {value!r}"
                  for key, value in eval_settings.items() if stored.get("eval", {}).get(key) != value
                  and key != "eval_batch_size"]
        if diffs:
            raise VLAEError(f"{path} was made with a different configuration ({'; '.join(diffs[:3])}); "
                            f"use another output directory")
        records[task.name] = _record_of(stored)
    if tasks:
        _check_folder_settings(out, {"config": tasks[0].config.to_dict(), "eval": eval_settings})
    return records


#: Seconds a stopped sweep waits for its workers to checkpoint before killing them.
STOP_GRACE = 60.0


class Stopped(KeyboardInterrupt):
    """A sweep or ablation stopped by SIGINT or SIGTERM (:func:`run_tasks`).

    ``runs`` maps each run that was stopped to what became of it (``"at step
    N"``: checkpointed; ``"killed after ..."``: past :data:`STOP_GRACE`, its
    last periodic checkpoint stays). A :class:`KeyboardInterrupt`, like
    :class:`vlae.train.Interrupted`; the command line exits with ``exit_status``.
    """

    def __init__(self, signum: int, runs: dict[str, str]):
        self.signum, self.runs = signum, runs
        stopped = ", ".join(f"{name} {what}" for name, what in runs.items())
        super().__init__(signal.Signals(signum).name + (f" (stopped {stopped})" if runs else ""))

    def __reduce__(self):
        return type(self), (self.signum, self.runs)

    @property
    def exit_status(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _Workers:
    """At most ``jobs`` worker processes, one per run, and what happens on SIGINT or SIGTERM."""

    def __init__(self, context: multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext,
                 jobs: int, init: tuple):
        self.context, self.jobs, self.init = context, jobs, init
        self.signum, self.signals = 0, 0
        self.previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self.signals += 1

    def run(self, payloads: list[dict], finished: Callable[[str, tuple], None]) -> Stopped | None:
        main = threading.current_thread() is threading.main_thread()
        if main:  # elsewhere Python cannot install handlers: the signals keep their usual meaning
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        running: dict[str, list] = {}  # name -> [process, pipe, outcome or None]
        try:
            queue = list(payloads)
            while (queue or running) and not self.signum:
                while queue and len(running) < self.jobs and not self.signum:
                    payload = queue.pop(0)
                    running[payload["name"]] = self._start(payload)
                self._collect(running, finished, timeout=0.5)
            if not self.signum:
                return None
            return Stopped(self.signum, self._stop(running, finished))
        finally:
            for process, _, _ in running.values():  # only after an unexpected error in this process
                process.kill()
            for sig, handler in self.previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _start(self, payload: dict) -> list[Any]:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_worker, args=(payload, send, *self.init), name=payload["name"],
                                       daemon=False)
        process.start()
        send.close()  # the worker holds the only sending end: its exit ends the pipe
        return [process, receive, None]  # the outcome, once received

    def _collect(self, running: dict, finished: Callable[[str, tuple], None], timeout: float | None) -> dict:
        """Wait up to ``timeout`` for runs to end; report each; their outcomes by name. Reads the
        pipes as well as waiting for the processes, so that a long message never blocks its sender."""
        from multiprocessing.connection import wait

        waiting = [p.sentinel for p, _, _ in running.values()] + [c for _, c, o in running.values() if o is None]
        ready = set(wait(waiting, timeout))
        outcomes = {}
        for name, (process, conn, outcome) in list(running.items()):
            if outcome is None and conn in ready:
                running[name][2] = outcome = _receive(conn)
            if process.sentinel not in ready and process.is_alive():
                continue
            process.join()
            if outcome is None and conn.poll():  # sent just before it ended
                outcome = _receive(conn)
            conn.close()
            del running[name]
            if not outcome and self.signum:  # ended by the signal passed on, before it could answer
                outcome = ("stopped", "(resumes from its last checkpoint)")
            if not outcome:
                code = process.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit {code}"
                outcome = ("failed", f"the worker process ended without a result ({how})",
                           f"the worker process of {name} ended without a result ({how})\n")
            outcomes[name] = outcome
            if outcome[0] != "stopped":
                finished(name, outcome)
        return outcomes

    def _stop(self, running: dict, finished: Callable[[str, tuple], None]) -> dict[str, str]:
        """Pass the signal on once to every worker, wait up to STOP_GRACE seconds, then kill."""
        what: dict[str, str] = {}
        forwarded = self.signals
        for process, _, _ in running.values():
            _signal(process, self.signum)
        deadline = time.monotonic() + STOP_GRACE
        while running and time.monotonic() < deadline:
            if self.signals > forwarded:  # asked again: stop now, without the checkpoint
                forwarded = self.signals
                for process, _, _ in running.values():
                    _signal(process, self.signum)
            for name, outcome in self._collect(running, finished, timeout=0.2).items():
                what[name] = outcome[1] if outcome[0] == "stopped" else f"({outcome[0]})"  # (done), (failed)
        for name, (process, conn, _) in list(running.items()):
            process.kill()
            process.join()
            conn.close()
            del running[name]
            what[name] = f"killed after {STOP_GRACE:g} s (resumes from its last checkpoint)"
        return what


def _receive(conn: Any) -> tuple:
    """A worker's outcome, or ``()`` if it ended without one."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return ()


def _signal(process: Any, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


def _worker(payload: dict[str, Any], conn: Any, threads: int, data: Any, test_images: Any) -> None:
    """One run in a worker process; its outcome goes to ``conn``: ``("done", record)``,
    ``("stopped", "at step N")`` or ``("failed", message, traceback)``."""
    os.setpgrp()  # the terminal's Ctrl-C reaches the sweep alone, which passes it on once (twice skips the checkpoint)
    _end_with_parent()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops evaluation too (train has its own)
    try:
        _init_worker(threads, data, test_images)
        outcome: tuple = ("done", _run_task(payload))
    except KeyboardInterrupt as stop:  # vlae.train.Interrupted: checkpointed
        step = getattr(stop, "step", None)
        outcome = ("stopped", f"at step {step}" if step is not None else "(resumes from its last checkpoint)")
    except BaseException as error:  # noqa: BLE001 - one failed run must not stop the others
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        outcome = ("failed", message, "".join(traceback.format_exception(error)))
    with contextlib.suppress(OSError):  # the sweep is gone: nobody to tell
        conn.send(outcome)
    conn.close()


def _end_with_parent() -> None:
    """Linux: SIGTERM this worker when its parent process ends (even by SIGKILL), so that
    no run trains on, orphaned, beside a rerun; it checkpoints and exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _check_interrupted(run_dir: Path, task: Task) -> None:
    """Refuse to resume an interrupted run whose checkpoint was made with other settings
    (e.g. another --max-steps): its result would sit in a table beside runs of another budget."""
    from .checkpoint import latest_checkpoint, load_checkpoint

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
        raise VLAEError(f"{run_dir} was interrupted at step {step} of a run with other settings "
                        f"({'; '.join(diffs[:3])}); rerun with the settings it was started with to finish it, "
                        f"or use another output directory")


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
            raise VLAEError(f"{path} was made with a different configuration{than} ({'; '.join(diffs[:3])}); "
                            f"a table holds runs of one setting: use another output directory")


def _context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
    """Where worker processes come from. Not ``fork``: forking a process whose
    torch has started threads can deadlock. ``forkserver`` (POSIX) forks each
    run from a clean server process that has imported torch and the trainer
    once, so a fresh process per run costs milliseconds instead of the seconds
    of importing torch (and the optimisers' torch._dynamo) again; elsewhere ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo", "vlae.train", "vlae.evaluate", "vlae.checkpoint"])
    return context


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


# ----------------------------------------------------------------------------- tables and plots


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_table(records: list[dict[str, Any]], out_dir: str | os.PathLike, stem: str,
                columns: Sequence[tuple[str, str]], extra: dict[str, Any] | None = None,
                title: str = "", note: str = "") -> dict[str, Path]:
    """Write ``<stem>.csv`` (all fields), ``<stem>.json`` and ``<stem>.md`` (``columns``:
    ``(key, header)`` pairs) in the given record order."""
    out = Path(out_dir)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("csv", "json", "md")}
    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    _write_json(paths["json"], {**(extra or {}), "runs": records})
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in records]
    if note:
        lines += ["", note]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


def _sort_key(r: dict[str, Any]) -> tuple:
    return (str(r.get("prior")), r.get("rf_size") or 0, str(r.get("decoder")), r.get("kernel") or 0,
            r.get("layers") or 0)


def _estimator(records: list[dict[str, Any]]) -> str:
    ks = sorted({r["k"] for r in records if r.get("k") is not None})
    return f"IW bound, k={', '.join(map(str, ks))}" if ks else "IW bound"


def scope_note(records: list[dict[str, Any]]) -> str:
    """What every number of a report shares: the free bits trained with and the
    test images evaluated on (several values when the records disagree)."""
    def values(key: str) -> str:
        return ", ".join(map(str, sorted({r[key] for r in records if r.get(key) is not None}))) or "?"
    return (f"Training budget per run: {values('budget')}. Free bits: {values('free_bits')} nats per pixel. "
            f"Nats per image on {values('eval_images')} test images")


def write_sweep_report(out_dir: str | os.PathLike, records: list[dict[str, Any]] | None = None,
                       sweep_config: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``sweep.{csv,json,md}`` and the two plots for ``records``
    (default: every finished run under ``out_dir``)."""
    out = Path(out_dir)
    records = collect_results(out) if records is None else [r for r in records if r]
    if not records:
        raise VLAEError(f"no finished runs (*/{RESULTS}) under {out}")
    records = sorted(records, key=_sort_key)
    est = _estimator(records)
    columns = [("prior", "prior"), ("decoder", "decoder"), ("layers", "layers"), ("kernel", "kernel"),
               ("rf_name", "field AxB"), ("rf_size", "RF size (px)"), ("rf_up", "RF rows up"),
               ("rf_left", "RF cols left/right"),
               ("rf_coverage", "context seen"), ("kl", "KL (nats)"), ("nll", f"NLL ({est})"),
               ("nelbo", "-ELBO"), ("active_units", "active units"), ("steps", "steps"), ("seconds", "seconds")]
    note = (f"{scope_note(records)}. KL: single-sample estimate of "
            f"KL(q(z|x) || p(z)); NLL: negative {est}; -ELBO: single-sample negative ELBO (averaged over the k draws). "
            "'context seen': mean fraction of the preceding pixels inside the receptive field.")
    paths = write_table(records, out, "sweep", columns, {"sweep": sweep_config, "estimator": est},
                        title="KL vs receptive field", note=note)
    paths.update(_plots(records, out, est))
    return paths


def _plots(records: list[dict[str, Any]], out: Path, estimator: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r.get("decoder")), str(r.get("prior"))), []).append(r)
    several_decoders = len({d for d, _ in groups}) > 1
    paths = {}
    for key, ylabel, fname in (("kl", "KL(q(z|x) || p(z))  [nats per image]", "kl_vs_receptive_field.png"),
                               ("nll", f"test NLL, {estimator}  [nats per image]", "nll_vs_receptive_field.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (decoder, prior), rows in sorted(groups.items()):
            rows = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["rf_size"])
            if not rows:
                continue
            label = f"{prior} prior" + (f", {decoder}" if several_decoders else "")
            ax.plot([r["rf_size"] for r in rows], [r[key] for r in rows], marker="o",
                    linestyle="--" if prior == "gaussian" else "-", label=label)
            for r in rows:  # depth, kernel and the share of the causal context the decoder sees
                coverage = f" {100 * r['rf_coverage']:.0f}%" if r.get("rf_coverage") is not None else ""
                name = r.get("rf_name") or f"L{r['layers']} k{r['kernel']}"
                ax.annotate(f"{name}{coverage}", (r["rf_size"], r[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3), alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("decoder receptive field  [pixels]  (labels: layers, kernel, % of the context seen)")
        ax.set_ylabel(ylabel)
        ax.set_title("information in z vs the PixelCNN's receptive field" if key == "kl"
                     else "likelihood vs the PixelCNN's receptive field", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths[fname] = out / fname
        fig.savefig(paths[fname], dpi=120)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- top level


def base_config(preset: str, overrides: Sequence[str], budget: float | None, max_steps: int | None) -> Config:
    """The preset with ``--set`` overrides and the per-run training budget."""
    cfg = apply_overrides(get_preset(preset), list(overrides))
    if budget is not None:
        if budget <= 0:
            raise VLAEError(f"invalid --budget: must be > 0 seconds, got {budget}")
        cfg.train.time_budget = float(budget)
    if max_steps is not None:
        if max_steps <= 0:
            raise VLAEError(f"invalid --max-steps: must be > 0, got {max_steps}")
        cfg.train.max_steps = int(max_steps)
    cfg.train.progress = "off"
    return cfg.validate()


def run_sweep(out_dir: str | os.PathLike, base: Config, *, decoder: str = "masked",
              layers: Sequence[int] = (1, 2, 4, 8, 16), kernels: Sequence[int] = (3, 5),
              priors: Sequence[str] = ("gaussian", "af"), eval_subset: int = 1000, k: int = 16,
              eval_batch_size: int = 50, jobs: int = 0, threads: int = 1, data: Any = None,
              test_images: Any = None, log: Callable[[str], object] = print,
              sweep_config: dict[str, Any] | None = None, fields: Sequence[str] = ()) -> tuple[list[dict | None], dict]:
    """Run (or finish) a sweep and write its tables and plots (``fields``: the
    ``AxB`` grid of :func:`sweep_tasks` instead of ``layers x kernels``).

    Returns:
        ``(records, status)`` as :func:`run_tasks`; ``status["outputs"]`` maps
        output names to paths.

    Raises:
        VLAEError: bad grid values; every run failed.
    """
    tasks = sweep_tasks(base, decoder, layers, kernels, priors, fields)
    check_run_options(jobs=jobs, threads=threads, k=k, eval_subset=eval_subset, eval_batch_size=eval_batch_size)
    out = Path(out_dir)
    check_tasks(tasks, out, {"eval_subset": eval_subset, "k": k, "eval_batch_size": eval_batch_size})
    out.mkdir(parents=True, exist_ok=True)
    config = {"decoder": "gated" if fields else decoder, "fields": list(fields), "layers": list(layers),
              "kernels": list(kernels), "priors": list(priors),
              "eval_subset": eval_subset, "k": k, "jobs": jobs, "threads": threads, **(sweep_config or {}),
              "runs": [t.name for t in tasks], "base_config": base.to_dict()}
    _write_json(out / "sweep_config.json", config)
    records, status = run_tasks(tasks, out, eval_subset=eval_subset, k=k, eval_batch_size=eval_batch_size,
                                jobs=jobs, threads=threads, data=data, test_images=test_images, log=log)
    finished = [r for r in records if r]
    if not finished:
        raise VLAEError(f"every run of the sweep failed; see {out}/*/{ERROR}")
    # Tables show every finished run in the folder (earlier, wider grids included).
    status["outputs"] = write_sweep_report(out, None, config)
    return records, status


# ----------------------------------------------------------------------------- command line


def _add_common(p: argparse.ArgumentParser, default_out: str, default_k: int) -> None:
    """Flags shared by ``vlae sweep`` and ``vlae ablation``."""
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"output directory: one folder per run plus the tables (default: {default_out})")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="train nothing: rebuild the tables (and plots) from the finished runs in DIR")
    p.add_argument("--preset", default="mnist-small", choices=sorted(PRESETS),
                   help="base configuration of every run (default: mnist-small)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a configuration field of every run, e.g. --set model.free_bits=0 "
                        "(repeatable)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="training time per run in seconds (train.time_budget), the same for every run "
                        "(default: 300 when neither --budget nor --max-steps is given)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="optimiser steps per run (train.max_steps); with --budget, whichever comes first")
    p.add_argument("--eval-subset", type=int, default=1000, metavar="N",
                   help="evaluate on N test images, a fixed random choice (0: all; default: 1000)")
    p.add_argument("--k", type=int, default=default_k,
                   help=f"importance samples of the IW bound on the test NLL (default: {default_k}; the paper "
                        "uses 4096; evaluation costs k decoder passes per test image)")
    p.add_argument("--eval-batch-size", type=int, default=50, metavar="N",
                   help="test images per evaluation batch (default: 50)")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="runs trained at once, each in its own process (default: CPU cores // --threads)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads per run (default: 1)")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``vlae sweep`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "sweep", help="KL and NLL as the decoder's receptive field grows (posterior collapse)",
        description="Train one model per (decoder depth, kernel size, prior) with the same budget, evaluate "
                    "each on the same test images, and tabulate and plot the KL term and the IW NLL against "
                    "the decoder's receptive field. Rerunning continues an interrupted sweep.")
    _add_common(p, "runs/sweep", 16)  # the KL needs one sample; the NLL column is a side result here
    p.add_argument("--decoder", default="masked", choices=("masked", "gated"),
                   help="PixelCNN kind of every run (default: masked)")
    p.add_argument("--layers", default="1,2,4,8,16", metavar="LIST",
                   help="decoder depths (masked or gated layers), comma-separated (default: 1,2,4,8,16)")
    p.add_argument("--kernels", default="3,5", metavar="LIST",
                   help="odd decoder kernel sizes, comma-separated (default: 3,5)")
    p.add_argument("--priors", default="gaussian,af", metavar="LIST",
                   help="priors p(z), comma-separated, from gaussian and af (default: gaussian,af)")
    p.add_argument("--fields", default=None, metavar="LIST",
                   help="instead of --layers/--kernels: the paper's receptive fields AxB of a gated decoder, "
                        "comma-separated, e.g. 4x2,5x3,7x4,9x5 (colour presets such as cifar-small)")
    p.add_argument("--list", action="store_true",
                   help="print the grid with each point's receptive field and exit without training")
    p.set_defaults(func=_cli_sweep)
    return p


def _print_outputs(paths: dict[str, Path]) -> None:
    for path in paths.values():
        print(f"wrote {path}")


def _cli_sweep(args: argparse.Namespace) -> int:
    return command("sweep", lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    if args.report:
        _print_outputs(write_sweep_report(args.report))
        return 0
    layers = parse_list(args.layers, "--layers", int)
    kernels = parse_list(args.kernels, "--kernels", int)
    priors = parse_list(args.priors, "--priors", str)
    fields = parse_list(args.fields, "--fields", str) if args.fields is not None else []
    budget = args.budget if (args.budget is not None or args.max_steps is not None) else 300.0
    base = base_config(args.preset, args.overrides, budget, args.max_steps)
    if args.list:
        from .pixelcnn import DECODERS, GatedPixelCNN

        for t in sweep_tasks(base, args.decoder, layers, kernels, priors, fields):
            m = t.config.model
            dec = (GatedPixelCNN.from_field(m.decoder_field, 8, m.cond_channels) if m.decoder_field
                   else DECODERS[m.decoder](m.decoder_layers, m.decoder_kernel, cond_channels=m.cond_channels))
            rf = receptive_field_record(dec, m.image_shape)
            field = f" field {rf['rf_name']}," if rf["rf_name"] else ""
            print(f"{t.name:24s}{field} RF {rf['rf_size']:6d} px, {rf['rf_up']:3d} rows up, "
                  f"{rf['rf_left']:3d} cols left/right, sees {100 * rf['rf_coverage']:5.1f}% of the context")
        return 0
    sweep_config = {"preset": args.preset, "overrides": list(args.overrides), "budget": budget, "fields": fields,
                    "max_steps": args.max_steps, "command": " ".join(sys.argv)}
    records, status = run_sweep(args.out, base, decoder=args.decoder, layers=layers, kernels=kernels,
                                priors=priors, eval_subset=args.eval_subset, k=args.k,
                                eval_batch_size=args.eval_batch_size, jobs=args.jobs, threads=args.threads,
                                sweep_config=sweep_config, fields=fields)
    _print_outputs(status["outputs"])
    if status["failed"]:
        print(f"error: {len(status['failed'])} run(s) failed: {', '.join(status['failed'])}", file=sys.stderr)
        return 1
    return 0


def command(what: str, body: Callable[[], int]) -> int:
    """Run ``vlae sweep`` or ``vlae ablation`` (``what``): one ``error:`` line and
    status 2 for bad input; on SIGINT or SIGTERM one line saying how to continue
    and status 130 or 143 (the workers have checkpointed, see :func:`run_tasks`)."""
    def terminated(signum: int, frame: object) -> None:  # until run_tasks takes over the signals
        raise Stopped(signum, {})

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    again = (f"run the same command again to continue the {what} (finished runs are kept, stopped ones "
             "resume from their last checkpoint)")
    try:
        return body()
    except VLAEError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"\ninterrupted by {stop}; {again}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted by SIGINT; {again}", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def standalone(add: Callable[[Any], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse ``argv`` (the arguments after the subcommand) with the subcommand
    that ``add`` registers, and run it; what ``vlae.cli`` does for all of them."""
    parser = argparse.ArgumentParser(prog="vlae")
    name = add(parser.add_subparsers(dest="command", required=True)).prog.split()[-1]
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``vlae sweep`` without the ``vlae`` front end: ``python -m vlae.sweep --list``."""
    return standalone(add_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
