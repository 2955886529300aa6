"""Benchmark: bf16 autocast against fp32 training, the same run otherwise (same seed,
data and steps): the loss curves, the final validation -ELBO and the speed, and which
of the two ``train.precision=auto`` should pick (the faster, when its final -ELBO is
within ``--tolerance`` of fp32's).

    python bench/precision.py --device cuda --preset mnist-paper --batch-size 128 --steps 600 \\
        --data-dir DATA --json precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from vlae.config import apply_overrides, get_preset
from vlae.train import train

from common import write_json


def run(args, precision: str, folder: Path) -> dict:
    cfg = apply_overrides(get_preset(args.preset), args.override)
    t = cfg.train
    t.max_steps, t.epochs, t.eval_subset, t.progress = args.steps, 0, args.valid_images, "off"
    t.precision, t.device, t.seed, t.cuda_graph = precision, args.device, args.seed, args.cuda_graph
    t.batch_size = args.batch_size or t.batch_size
    t.data_dir = args.data_dir
    summary = train(cfg, folder, quiet=True, log_every=args.log_every)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["loss"]) for r in records if "split" not in r and "loss" in r]
    return {"precision": precision, "images_per_s": summary["images_per_s"], "valid_nelbo": summary["valid"]["nelbo"],
            "valid_kl": summary["valid"]["kl"], "skipped": summary["skipped"], "cuda_graph": summary["cuda_graph"],
            "data": summary["data"], "loss_curve": curve}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mnist-paper")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the preset's")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graph", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--data-dir", default=None, help="folder of the preset's dataset (else its fallback)")
    parser.add_argument("--valid-images", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="how much worse (relative -ELBO) bf16 may end and still count as equal quality "
                        "(default: 0.5%%)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(args, p, Path(tmp) / p) for p in ("fp32", "bf16")]
    fp32, bf16 = rows
    gap = (bf16["valid_nelbo"] - fp32["valid_nelbo"]) / abs(fp32["valid_nelbo"])
    pairs = dict(fp32["loss_curve"])
    # the second half of the run: the first windows hold the initial losses, orders of magnitude larger
    diffs = [abs(loss - pairs[step]) / abs(pairs[step]) for step, loss in bf16["loss_curve"]
             if step in pairs and step > args.steps // 2]
    equal = gap <= args.tolerance  # bf16 at most this much worse than fp32
    faster = bf16["images_per_s"] > fp32["images_per_s"]
    choice = "bf16" if (equal and faster) else "fp32"
    for r in rows:
        print(f"{r['precision']}: {r['images_per_s']:9.1f} img/s, final valid -ELBO {r['valid_nelbo']:.3f} nats "
              f"(KL {r['valid_kl']:.2f}), {r['skipped']} skipped, graph {r['cuda_graph']}")
    print(f"bf16 - fp32: -ELBO {100 * gap:+.3f}%, mean |relative loss difference| over the second half's windows "
          f"{100 * sum(diffs) / max(1, len(diffs)):.2f}%; speed x{bf16['images_per_s'] / fp32['images_per_s']:.2f}; "
          f"auto should pick {choice}")
    if args.json:
        write_json(args.json, {"benchmark": "precision", "preset": args.preset, "steps": args.steps,
                               "rows": rows, "relative_nelbo_gap": gap,
                               "mean_relative_loss_difference_second_half": sum(diffs) / max(1, len(diffs)),
                               "equal_quality": equal,
                               "bf16_faster": faster, "choice": choice})
    return 0


if __name__ == "__main__":
    sys.exit(main())
