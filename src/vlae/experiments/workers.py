"""Worker processes: at most ``jobs`` at a time, one fresh process per run
(:class:`Workers`), and what SIGINT or SIGTERM does to them (:class:`Stopped`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from .task_run import init_worker, run_task

__all__ = ["STOP_GRACE", "Stopped", "Workers", "start_context"]

#: Seconds a stopped sweep waits for its workers to checkpoint before killing them.
STOP_GRACE = 60.0


class Stopped(KeyboardInterrupt):
    """A sweep or ablation stopped by SIGINT or SIGTERM (:func:`vlae.experiments.runner.run_tasks`).

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


class Workers:
    """At most ``jobs`` worker processes, one per run, and what happens on SIGINT or SIGTERM."""

    def __init__(
        self,
        context: multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext,
        jobs: int,
        init: tuple,
    ):
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
        process = self.context.Process(
            target=_worker, args=(payload, send, *self.init), name=payload["name"], daemon=False
        )
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
                outcome = (
                    "failed",
                    f"the worker process ended without a result ({how})",
                    f"the worker process of {name} ended without a result ({how})\n",
                )
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
        init_worker(threads, data, test_images)
        outcome: tuple = ("done", run_task(payload))
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


def start_context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
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
