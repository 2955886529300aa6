"""Combine bench/train.py and bench/eval.py results into one report with the projected
wall-clock time of the paper's protocols (:data:`vlae.protocols.PROTOCOLS`) on the
measured device.

A protocol's training time is its images (static MNIST: 300 epochs of the 60,000
training and validation images, the other binary datasets likewise; the CIFAR-10 DenseNet
schedule: about 530k steps of 128) over the fastest training-loop
rate measured for its preset at its batch size, in any mode and precision (the row
used is named); its evaluation time is ``k`` samples for each of its test images over
the measured IW rate of its preset.

    python bench/protocol.py train_bf16.json train_fp32.json eval.json --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys

from vlae.protocols import PROTOCOLS

from common import write_json


def project(trains: list[dict], evals: list[dict], stand_in: str | None = None) -> list[dict]:
    def mine(row: dict, p) -> bool:
        return row["preset"] == stand_in if stand_in else row["preset"] == p.preset

    out = []
    for p in PROTOCOLS.values():
        rows = [dict(r, precision=r.get("precision", "bf16" if t.get("bf16") else "fp32")) for t in trains
                for r in t["rows"] if mine(r, p) and (stand_in or r["batch_size"] == p.batch_size)]
        rated = [(r.get("loop_images_per_s", r["images_per_s"]), r) for r in rows]
        item: dict = {"protocol": p.name, "preset": p.preset, "batch_size": p.batch_size,
                      "train_images": p.train_images, "eval_k": p.eval_k, "test_images": p.test_images}
        if rated:
            rate, best = max(rated, key=lambda pair: pair[0])
            item.update({"train_images_per_s": rate, "train_mode": best.get("mode"), "precision": best["precision"],
                         "rate_is": "loop" if "loop_images_per_s" in best else "bare step",
                         "train_hours": p.train_images / rate / 3600})
        erows = [r for e in evals for r in e["rows"] if mine(r, p)]
        if erows:
            e = max(erows, key=lambda r: r["samples_per_s"])
            item.update({"iw_samples_per_s": e["samples_per_s"],
                         "eval_hours": p.eval_samples / e["samples_per_s"] / 3600})
        if "train_hours" in item and "eval_hours" in item:
            item["total_hours"] = item["train_hours"] + item["eval_hours"]
        out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="outputs of bench/train.py and bench/eval.py (--json)")
    parser.add_argument("--out", required=True, help="the combined JSON report")
    parser.add_argument("--stand-in", default=None, metavar="PRESET",
                        help="project from this preset's rows instead of the protocols' own (dry runs)")
    args = parser.parse_args(argv)
    loaded = []
    for path in args.results:
        try:
            with open(path) as f:
                loaded.append(json.load(f))
        except (OSError, ValueError) as exc:
            print(f"note: skipping {path}: {exc}", file=sys.stderr)
    trains = [r for r in loaded if r.get("benchmark") == "train"]
    evals = [r for r in loaded if r.get("benchmark") == "eval"]
    rows = project(trains, evals, args.stand_in)
    for r in rows:
        train = (f"train {r['train_images_per_s']:9.1f} img/s ({r['train_mode']}, {r['precision']}) -> "
                 f"{r['train_hours']:7.2f} h" if "train_hours" in r else "train: not measured")
        evaluation = (f"IW eval {r['iw_samples_per_s']:9.1f} samples/s -> {r['eval_hours']:6.2f} h"
                      if "eval_hours" in r else "IW eval: not measured")
        print(f"{r['protocol']:<13} {train}; {evaluation}")
    precision = [r for r in loaded if r.get("benchmark") == "precision"]
    write_json(args.out, {"train": trains, "eval": evals, "precision": precision, "stand_in": args.stand_in,
                          "projection": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
