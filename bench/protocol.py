"""Combine bench/train.py and bench/eval.py results into one report with the
projected wall-clock time of the paper's protocol on the measured device.

The paper's static-MNIST protocol: train for ``--epochs`` epochs (300, as the
authors' launcher) over ``--train-images`` images (train + valid, 60,000 - 10,000
test = 50,000), then evaluate the IW bound with k = 4096 on the 10,000 test images.

    python bench/protocol.py train.json eval.json --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys

from common import write_json


def project(train: dict, evaluation: dict, epochs: int, train_images: int) -> list[dict]:
    evals = {row["preset"]: row for row in evaluation["rows"]}
    out = []
    for row in train["rows"]:
        rate = row.get("loop_images_per_s", row["images_per_s"])
        item = {"preset": row["preset"], "train_images_per_s": rate,
                "train_hours": epochs * train_images / rate / 3600}
        if row["preset"] in evals:
            e = evals[row["preset"]]
            item.update({"iw_samples_per_s": e["samples_per_s"], "eval_hours": e["protocol"]["projected_hours"],
                         "eval_protocol": e["protocol"]})
        out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_json", help="output of bench/train.py --json")
    parser.add_argument("eval_json", help="output of bench/eval.py --json")
    parser.add_argument("--epochs", type=int, default=300, help="training epochs of the protocol (default: 300)")
    parser.add_argument("--train-images", type=int, default=50000, help="images per epoch (default: 50,000)")
    parser.add_argument("--out", required=True, help="the combined JSON report")
    args = parser.parse_args(argv)
    try:
        with open(args.train_json) as f:
            train = json.load(f)
        with open(args.eval_json) as f:
            evaluation = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the benchmark results: {exc}", file=sys.stderr)
        return 2
    rows = project(train, evaluation, args.epochs, args.train_images)
    for r in rows:
        print(f"{r['preset']:<14} train {r['train_images_per_s']:8.1f} img/s -> {r['train_hours']:7.2f} h for "
              f"{args.epochs} epochs; IW eval {r.get('iw_samples_per_s', float('nan')):9.1f} samples/s -> "
              f"{r.get('eval_hours', float('nan')):7.2f} h")
    write_json(args.out, {"train": train, "eval": evaluation, "protocol": {"epochs": args.epochs,
                          "train_images": args.train_images}, "projection": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
