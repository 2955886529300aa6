"""Benchmark: the speed-up of importance-weighted evaluation against an earlier
commit of this repository, measured in the same run.

Two worker processes hold the same preset's model (same seed, same random
images): one imports ``vlae`` from this checkout, the other from ``--reference``
(a git revision, extracted with ``git archive``; default: the last commit before
the evaluation speed-ups). The parent asks them in turn, round after round, to
time :func:`vlae.evaluate.evaluate_model` for ``--seconds``; the two rates of a
round are taken moments apart on the same machine, so a busy machine slows
both alike. Printed per preset: each side's median importance samples/s and
the ratio of the medians, with the ratio of every round. ``--compile``
evaluates this checkout with ``compile=True`` (the reference stays eager); it
compiles in the warm-up, which is not timed.

    python bench/eval_speedup.py --presets mnist-paper mnist-gated --threads 2 --json results/eval_speedup.json
    python bench/eval_speedup.py --compile --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The last commit before the IW evaluation was sped up (per-image encoder and
# first masked layer, fixed effective weights, channels-last, cropped masked kernels).
DEFAULT_REFERENCE = "b85123a"


def _worker(args) -> int:
    """Answers one timing request per line read from stdin with one JSON line."""
    import time

    import torch

    from vlae.evaluate import evaluate_model

    from common import build_model, random_images

    torch.set_num_threads(args.threads)
    cfg, model = build_model(args.preset, [], torch.device("cpu"), args.seed)
    model.eval()
    x = random_images(cfg, args.images, torch.Generator().manual_seed(args.seed))

    options = {"compile": True} if args.compile else {}  # the reference may predate the option

    def call():
        with torch.no_grad():
            evaluate_model(model, x, k=args.k, batch_size=args.images, progress=False, **options)

    call()  # warm-up (and compilation)
    import vlae

    print(json.dumps({"module": str(Path(vlae.__file__).resolve())}), flush=True)
    for _line in sys.stdin:
        times = []
        budget = time.perf_counter() + args.seconds
        while time.perf_counter() < budget or len(times) < 2:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(json.dumps({"samples_per_s": args.images * args.k / statistics.median(times)}), flush=True)
    return 0


def _reference_tree(revision: str, into: Path) -> Path:
    """``src/`` of ``revision`` extracted under ``into``; one-line error if git cannot."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"],
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"error: cannot read revision {revision!r} of {ROOT} with git: "
                         f"{archive.stderr.decode().strip().splitlines()[-1] if archive.stderr else 'git failed'}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


class _Side:
    """One worker process importing vlae from ``src``, asked for a rate per round."""

    script = Path(__file__).resolve()
    key = "samples_per_s"

    def worker_args(self, args, preset: str) -> list[str]:
        extra = ["--compile"] if args.compile and self.name == "current" else []
        return ["--preset", preset, "--threads", str(args.threads), "--images", str(args.images), "--k", str(args.k),
                "--seconds", str(args.seconds), "--seed", str(args.seed), *extra]

    def __init__(self, name: str, src: Path, args, preset: str):
        env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{HERE}", OMP_NUM_THREADS=str(args.threads),
                   PYTHONDONTWRITEBYTECODE="1")
        self.name = name
        command = [sys.executable, str(self.script), "--worker", *self.worker_args(args, preset)]
        self.process = subprocess.Popen(command, env=env, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        module = Path(self._read()["module"])
        if src.resolve() not in module.parents:  # an installed copy shadowing the tree would time the wrong code
            self.close()
            raise SystemExit(f"error: the {name} worker imported vlae from {module}, not from {src}")

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"error: the {self.name} worker exited (code {self.process.wait()})")
        return json.loads(line)

    def rate(self) -> float:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self._read()[self.key]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def interleaved_rates(side: type, preset: str, reference_src: Path, args) -> dict[str, list[float]]:
    """Each side's rate per round, the two sides timed in turn (alternating who goes first)."""
    sides = {"reference": side("reference", reference_src, args, preset),
             "current": side("current", ROOT / "src", args, preset)}
    rates: dict[str, list[float]] = {"reference": [], "current": []}
    try:
        for r in range(args.rounds):
            order = ["reference", "current"] if r % 2 == 0 else ["current", "reference"]
            for name in order:
                rates[name].append(sides[name].rate())
    finally:
        for worker in sides.values():
            worker.close()
    return rates


def bench_preset(preset: str, reference_src: Path, args) -> dict:
    rates = interleaved_rates(_Side, preset, reference_src, args)
    ref, cur = statistics.median(rates["reference"]), statistics.median(rates["current"])
    return {"preset": preset, "reference_samples_per_s": ref, "current_samples_per_s": cur, "speedup": cur / ref,
            "round_ratios": [c / r for c, r in zip(rates["current"], rates["reference"])], "rates": rates}


def comparison_parser(doc: str, presets: list[str], reference: str, why: str) -> argparse.ArgumentParser:
    """The options every same-run comparison against an earlier commit takes (and the worker's own)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=presets, help="presets to measure")
    parser.add_argument("--reference", default=reference,
                        help=f"git revision to compare against (default: {reference}, {why})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each worker (default: 2)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per preset (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and images")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = comparison_parser(__doc__, ["mnist-paper", "mnist-gated"], DEFAULT_REFERENCE, "before the speed-ups")
    parser.add_argument("--images", type=int, default=8, help="images per evaluate_model call (default: 8)")
    parser.add_argument("--k", type=int, default=128, help="importance samples per image (default: 128)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per side per round (default: 4)")
    parser.add_argument("--compile", action="store_true",
                        help="evaluate this checkout with torch.compile (the reference stays eager)")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if min(args.threads, args.images, args.k, args.rounds) < 1 or args.seconds <= 0:
        parser.error("--threads, --images, --k and --rounds must be >= 1 and --seconds > 0")
    if shutil.which("git") is None:
        parser.error("git is needed to extract the reference revision")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        reference_src = _reference_tree(args.reference, Path(tmp))
        print(f"IW evaluation, importance samples/s ({args.images} images x k={args.k} per call, "
              f"{args.threads} threads, {args.rounds} alternating rounds of {args.seconds:g} s per side)")
        current = "current, compiled" if args.compile else "current"
        print(f"{'preset':<14}{args.reference + ' (reference)':>24}{current:>19}{'speed-up':>10}  per round")
        for preset in args.presets:
            r = bench_preset(preset, reference_src, args)
            results.append(r)
            print(f"{preset:<14}{r['reference_samples_per_s']:>24.0f}{r['current_samples_per_s']:>19.0f}"
                  f"{r['speedup']:>9.2f}x  " + " ".join(f"{x:.2f}" for x in r["round_ratios"]), flush=True)
    if args.json:
        from common import write_json

        write_json(args.json, {"reference": args.reference, "threads": args.threads, "images": args.images,
                               "k": args.k, "seconds": args.seconds, "rounds": args.rounds, "compile": args.compile,
                               "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
