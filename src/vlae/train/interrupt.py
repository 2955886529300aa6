"""Stopping on SIGINT and SIGTERM: finish the step, checkpoint, say how to continue."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

__all__ = ["Interrupted", "StopSignals"]


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; ``checkpoint`` (if not ``None``) resumes it.

    A :class:`KeyboardInterrupt`, so code that already handles Ctrl-C handles
    it too; the command line exits with ``exit_status`` (130 or 143).
    """

    def __init__(self, signum: int, run_dir: Path, checkpoint: Path | None, step: int | None):
        self.signum, self.run_dir, self.checkpoint, self.step = signum, run_dir, checkpoint, step
        name = signal.Signals(signum).name
        where = f" at step {step}" if step is not None else ""
        saved = f"wrote {checkpoint}" if checkpoint is not None else "no checkpoint written in this session"
        super().__init__(f"{name}{where}: {saved}; continue with `vlae train --resume --run-dir {run_dir}`")

    def __reduce__(self):  # picklable (process pools send exceptions back to the parent)
        return type(self), (self.signum, self.run_dir, self.checkpoint, self.step)

    @property
    def exit_status(self) -> int:
        """128 + the signal number, the shell's convention (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """Turns the first SIGINT or SIGTERM into a request (``signum``) to stop after the
    current step; a second one interrupts at once. Only in the main thread (elsewhere
    Python cannot install handlers, and the signals keep their usual meaning)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.signum = run_dir, 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise Interrupted(signum, self.run_dir, None, None)
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
