"""The tutorial exercises: every reference solution passes its checker, every
untouched exercise fails with "not implemented yet" (no traceback), and every
planted bug (``tests/exercise_mutants.py``) is caught -- first by the check that
names the mistake, with a diagnosis that says so, before any training run.

Cost (CPU time, one thread): the five solution checkers run once each in a
subprocess; their training checks dominate (exercises 2, 3 and 5: about 25, 35
and 30 s, marked ``slow``). The untouched exercises and the ~110 mutants fail on
exact checks within about a second of CPU each (the exercise-3 ones, which
replay short training runs, about two). The whole file: about 3 minutes of CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
sys.path.insert(0, str(EXERCISES))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checker import run_file  # noqa: E402
from exercise_mutants import MUTANTS, Mutant, mutate  # noqa: E402

torch.set_num_threads(1)

NAMES = sorted(p.name for p in EXERCISES.glob("exercise_0*.py"))


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_five_exercises_with_solutions():
    assert NAMES == ["exercise_01_masked_conv.py", "exercise_02_pixelcnn_prior.py",
                     "exercise_03_posterior_collapse.py", "exercise_04_flow_prior.py",
                     "exercise_05_vlae_complete.py"]
    for name in NAMES:
        assert (EXERCISES / "solutions" / name).is_file(), name


TRAINS = {"exercise_02_pixelcnn_prior.py", "exercise_03_posterior_collapse.py", "exercise_05_vlae_complete.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in TRAINS else n for n in NAMES])
def test_solution_passes(name):
    result = _run(f"exercises/{name}", "--solution")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All " in result.stdout and "checks passed" in result.stdout, output
    assert "FAIL" not in result.stdout and "SKIP" not in result.stdout, output


@pytest.mark.parametrize("name", NAMES)
def test_untouched_exercise_fails_with_not_implemented(name):
    result = _run(f"exercises/{name}")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "not implemented yet: " in result.stdout, output
    assert "Traceback" not in output, output
    assert "PASS" not in result.stdout, output  # nothing passes before the TODOs are done
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("FAIL", "SKIP"))]
    assert lines and all(line.strip().startswith("FAIL") or "SKIP" in line for line in lines)


def test_every_exercise_has_at_least_ten_mutants():
    counts = {name: sum(m.exercise == name for m in MUTANTS) for name in NAMES}
    assert all(n >= 10 for n in counts.values()), counts
    assert len({m.id for m in MUTANTS}) == len(MUTANTS), "mutant names must be unique"


def _todos(name: str) -> list[str]:
    """The ``TODO (n)`` markers of an exercise, one per piece the learner writes."""
    import re

    return sorted(set(re.findall(r"# TODO \((\d+)\)", (EXERCISES / name).read_text())), key=int)


def test_mutants_cover_every_todo():
    # Every TODO's solution code is changed by at least one mutant: the region between the
    # function's signature and the next definition must contain the text some mutant replaces.
    import re

    for name in NAMES:
        exercise, solution = (EXERCISES / name).read_text(), (EXERCISES / "solutions" / name).read_text()
        olds = [old for m in MUTANTS if m.exercise == name for old, _ in [(m.old, m.new), *m.more]]
        for todo in _todos(name):
            where = exercise.index(f"# TODO ({todo})")
            function = re.findall(r"def (\w+)\(", exercise[:where])[-1]
            owner = re.findall(r"^class (\w+)|^def \w+", exercise[:where], re.M)[-1]  # the enclosing class, if any
            start = solution.index(f"def {function}(", solution.index(f"class {owner}") if owner else 0)
            end = solution.find("\n    def ", start + 1)
            end = min(e for e in (end, solution.find("\ndef ", start + 1), solution.find("\nclass ", start + 1),
                                  len(solution)) if e > 0)
            body = solution[start:end]
            assert any(old in body for old in olds), f"{name}: no mutant changes TODO ({todo}) in {function}"


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_mutant_is_caught_before_training(mutant: Mutant, tmp_path):
    source = (EXERCISES / "solutions" / mutant.exercise).read_text()
    target = tmp_path / mutant.exercise
    target.write_text(mutate(source, mutant))
    status, output, outcomes = run_file(EXERCISES / mutant.exercise, target)
    assert status != 0, output
    failed = [o for o in outcomes if o.status == "FAIL"]
    # The first failure is the check that names the mistake, with its diagnosis: the learner fixes it first.
    assert failed and mutant.fails in failed[0].name, \
        f"expected the first FAIL to be {mutant.fails!r}; got {[o.name for o in failed]}\n{output}"
    assert mutant.says in failed[0].message + "\n" + failed[0].hint, \
        f"the diagnosis {mutant.says!r} is missing from the first FAIL:\n{output}"
    # Caught by an exact check: the training checks were skipped, not run.
    assert all(o.status == "SKIP" for o in outcomes if o.expensive), output
    assert "Traceback" not in output, output


def test_mutate_refuses_a_substitution_that_does_not_match():
    bogus = Mutant("exercise_01_masked_conv.py", "bogus", "this text is not in the solution", "x", "", "")
    with pytest.raises(AssertionError):
        mutate((EXERCISES / "solutions" / bogus.exercise).read_text(), bogus)


def test_checker_cli_errors(tmp_path):
    result = _run("exercises/exercise_01_masked_conv.py", "--target", str(tmp_path / "missing.py"))
    assert result.returncode == 2 and "no such file" in result.stderr
    broken = tmp_path / "broken.py"
    broken.write_text((EXERCISES / "solutions" / "exercise_01_masked_conv.py").read_text().replace(
        "mask = torch.zeros(kh, kw)", "mask = torch.zeros(kh, kw)[None]"))
    status, output, _ = run_file(EXERCISES / "exercise_01_masked_conv.py", broken)
    assert status == 1 and "Traceback" not in output
    assert "has shape (1, 3, 3)" in output or "your code raised" in output, output


def test_quick_skips_training_and_still_passes():
    status, output, outcomes = run_file(EXERCISES / "exercise_05_vlae_complete.py",
                                        EXERCISES / "solutions" / "exercise_05_vlae_complete.py", quick=True)
    assert status == 0, output
    assert [o.status for o in outcomes if o.expensive] == ["SKIP"], output
    assert all(o.status == "PASS" for o in outcomes if not o.expensive), output


def test_readme_lists_every_exercise():
    readme = (EXERCISES / "README.md").read_text()
    for name in NAMES:
        assert name in readme, name
    assert "--solution" in readme


def test_time_budget_stops_a_slow_run_and_scales_with_the_reference():
    from _checker import CheckFailed, TimeBudget

    def busy(seconds: float) -> None:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    torch.manual_seed(3)
    state = torch.get_rng_state()
    budget = TimeBudget(lambda: (busy(0.01), torch.randn(5)), steps=10, floor=0.02)
    assert torch.equal(torch.get_rng_state(), state)  # the calibration leaves the check's random numbers alone
    assert 0.15 <= budget.seconds < 0.5  # 1.5 * 10 steps * about 0.01 s, above the floor
    budget.check(0)  # within budget: no failure
    busy(budget.seconds + 0.05)
    with pytest.raises(CheckFailed, match="ran over its budget"):
        budget.check(7)
    assert TimeBudget(lambda: None, steps=10, floor=2.0).seconds == 2.0  # a fast reference: the floor holds
