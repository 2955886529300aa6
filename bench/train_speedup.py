"""Benchmark: the ``vlae train`` loop's speed against an earlier commit of this
repository, measured in the same run on the CPU.

Two worker processes train the same preset on the same random images with the same
seed: one imports ``vlae`` from this checkout, the other from ``--reference`` (a git
revision; default: the last commit before the training loop became a sync-free
:class:`vlae.train.Trainer`). The parent asks them in turn, round after round, for the
images/s of one :func:`vlae.train.train` run of ``--steps`` steps, timed from its
third step to its last (set-up and the final validation are not timed); a busy
machine slows both alike. Printed per preset: each side's median and the ratio of
the medians, with the ratio of every round.

    python bench/train_speedup.py --presets mnist-small mnist-paper --threads 2 --json results/train_speedup.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from eval_speedup import _reference_tree, _Side, comparison_parser, interleaved_rates

DEFAULT_REFERENCE = "dfd450d"  # the training loop with a host synchronisation every step


def _worker(args) -> int:
    """Answers one timing request per line read from stdin with one JSON line."""
    import time

    import torch

    from vlae.config import get_preset
    from vlae.train import train

    from common import random_images

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    t = cfg.train
    t.max_steps, t.epochs, t.eval_subset, t.progress, t.device, t.seed = args.steps, 1, 16, "off", "cpu", args.seed
    t.batch_size = args.batch_size or t.batch_size
    images = random_images(cfg, t.batch_size * (args.steps + 4), torch.Generator().manual_seed(args.seed))
    data = {"train": images.to(torch.uint8), "valid": images[:16].to(torch.uint8)}

    def rate() -> float:
        stamps: dict[int, float] = {}

        def stamp(record):
            if record["step"] in (3, args.steps):
                stamps[record["step"]] = time.perf_counter()

        with tempfile.TemporaryDirectory() as run_dir:
            train(cfg, run_dir, quiet=True, data=data, callback=stamp)
        return (args.steps - 3) * t.batch_size / (stamps[args.steps] - stamps[3])

    import vlae

    print(json.dumps({"module": str(Path(vlae.__file__).resolve())}), flush=True)
    for _line in sys.stdin:
        print(json.dumps({"images_per_s": rate()}), flush=True)
    return 0


class _TrainSide(_Side):
    script = Path(__file__).resolve()
    key = "images_per_s"

    def worker_args(self, args, preset: str) -> list[str]:
        return ["--preset", preset, "--threads", str(args.threads), "--steps", str(args.steps),
                "--batch-size", str(args.batch_size), "--seed", str(args.seed)]


def main(argv: list[str] | None = None) -> int:
    parser = comparison_parser(__doc__, ["mnist-small", "mnist-paper"], DEFAULT_REFERENCE,
                               "the loop with a host synchronisation every step")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run (default: 20)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0: each preset's own)")
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if min(args.threads, args.rounds) < 1 or args.steps < 6 or args.batch_size < 0:
        parser.error("--threads and --rounds must be >= 1, --steps >= 6, --batch-size >= 0")
    if shutil.which("git") is None:
        parser.error("git is needed to extract the reference revision")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        reference_src = _reference_tree(args.reference, Path(tmp))
        print(f"vlae train loop, images/s ({args.steps} steps per run, {args.threads} threads, "
              f"{args.rounds} alternating rounds)")
        print(f"{'preset':<14}{args.reference + ' (reference)':>24}{'current':>12}{'ratio':>8}  per round")
        for preset in args.presets:
            rates = interleaved_rates(_TrainSide, preset, reference_src, args)
            ref, cur = statistics.median(rates["reference"]), statistics.median(rates["current"])
            ratios = [c / r for c, r in zip(rates["current"], rates["reference"])]
            results.append({"preset": preset, "reference_images_per_s": ref, "current_images_per_s": cur,
                            "ratio": cur / ref, "round_ratios": ratios, "rates": rates})
            print(f"{preset:<14}{ref:>24.1f}{cur:>12.1f}{cur / ref:>7.2f}x  " + " ".join(f"{x:.2f}" for x in ratios),
                  flush=True)
    if args.json:
        from common import write_json

        write_json(args.json, {"reference": args.reference, "threads": args.threads, "steps": args.steps,
                               "rounds": args.rounds, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
