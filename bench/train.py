"""Benchmark: training throughput per preset, against the hardware's dense-GEMM rate.

For each preset it measures, in one process:

- the bare training step (forward, backward, Adamax update on one batch) in
  images/s, its FLOPs (counted) and the achieved GFLOP/s;
- the same step inside ``vlae.train.train`` (data indexing, free bits,
  gradient clipping, Polyak averaging, logging), as a fraction of the bare rate
  (both as total images over total time, the bare step timed right before);
- a dense ``1024 x 1024`` fp32 matrix product on the same device, the reference
  that the achieved FLOP/s is divided by.

    python bench/train.py --presets mnist-small mnist-paper --threads 2 --json results/bench_train.json

Images are random (binary at MNIST's ink density, or 8-bit values): the cost of a
step does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

from common import build_model, count_flops, environment, gemm_gflops, random_images, timed_rate, write_json

DEFAULT_PRESETS = ["mnist-small", "mnist-paper", "mnist-gated"]


def bare_step(model, cfg, x: torch.Tensor, bf16: bool, compile: bool):
    """One optimiser step as the training loop takes it, without the bookkeeping."""
    optimizer = torch.optim.Adamax(model.parameters(), lr=cfg.train.lr)
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    forward = torch.compile(model) if compile else model  # model(x) returns the bound's terms

    def step():
        with autocast():
            terms = forward(x)
            loss = terms.recon.mean() + model.kl_penalty(terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()

    return step


def loop_rate(cfg, device: torch.device, steps: int, bf16: bool, compile: bool) -> float:
    """images/s of ``vlae.train.train`` between its 3rd and last step (no epoch end
    falls inside, so no validation pass is timed)."""
    from vlae.train import train

    cfg.train.max_steps = steps
    cfg.train.epochs = 1
    cfg.train.eval_subset = 16
    cfg.train.device = str(device)
    cfg.train.precision = "bf16" if bf16 else "fp32"
    cfg.train.progress = "off"
    cfg.train.compile = compile
    n = cfg.train.batch_size * (steps + 4)
    images = random_images(cfg, n, torch.Generator().manual_seed(1)).to(torch.uint8)
    stamps: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as run_dir:
        train(cfg, run_dir, quiet=True, data={"train": images, "valid": images[:16]},
              callback=lambda record: stamps.append((record["step"], time.perf_counter())))
    (s0, t0), (s1, t1) = stamps[2], stamps[-1]
    return (s1 - s0) * cfg.train.batch_size / (t1 - t0)


def bench_preset(name: str, args, device: torch.device, reference: float) -> dict:
    cfg, model = build_model(name, args.override, device, args.seed)
    batch = args.batch_size or cfg.train.batch_size
    cfg.train.batch_size = batch
    x = random_images(cfg, batch, torch.Generator().manual_seed(args.seed)).to(device)
    flops = count_flops(bare_step(model, cfg, x, args.bf16, compile=False))  # the counter needs eager mode
    step = bare_step(model, cfg, x, args.bf16, args.compile)
    rate, calls = timed_rate(step, batch, device, args.seconds)
    gflops = flops / batch * rate / 1e9
    row = {"preset": name, "batch_size": batch, "gflop_per_image": flops / batch / 1e9, "images_per_s": rate,
           "timed_steps": calls, "achieved_gflops": gflops, "gemm_gflops": reference,
           "fraction_of_gemm": gflops / reference}
    if not args.no_loop:
        # The loop's rate is total images over total time, so the bare step's is taken the same way
        # (its median would drop the slow calls the loop pays for), right before the loop.
        # On a machine whose speed drifts, alternate the two (--loop-rounds) and take the median ratio.
        bares, loops = [], []
        for _ in range(args.loop_rounds):
            bares.append(timed_rate(step, batch, device, args.seconds, statistic="mean")[0])
            loops.append(loop_rate(cfg, device, args.loop_steps, args.bf16, args.compile))
        ratios = [loop / bare for loop, bare in zip(loops, bares)]
        row.update({"bare_mean_images_per_s": statistics.median(bares), "loop_images_per_s": statistics.median(loops),
                    "loop_fraction_of_bare": statistics.median(ratios), "loop_fraction_per_round": ratios})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, help="presets to measure")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0: each preset's own)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per measurement (default: 5)")
    parser.add_argument("--loop-steps", type=int, default=20, help="steps of the vlae.train loop to time")
    parser.add_argument("--loop-rounds", type=int, default=1,
                        help="alternating bare/loop measurements; the median ratio is reported (default: 1)")
    parser.add_argument("--no-loop", action="store_true", help="skip the vlae.train loop measurement")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AVX512-bf16, or CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as vlae train --compile)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and images")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every preset (repeatable)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads < 0 or args.seconds <= 0 or args.loop_steps < 4 or args.batch_size < 0 or args.loop_rounds < 1:
        parser.error("--threads and --batch-size must be >= 0, --seconds > 0, --loop-steps >= 4, --loop-rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    reference = gemm_gflops(device, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    print(f"dense GEMM reference: {reference:.1f} GFLOP/s ({'bf16' if args.bf16 else 'fp32'}, {device}, "
          f"{torch.get_num_threads()} threads)")
    rows = [bench_preset(name, args, device, reference) for name in args.presets]
    print(f"{'preset':<14}{'batch':>6}{'GFLOP/img':>11}{'img/s':>9}{'GFLOP/s':>9}{'of GEMM':>9}"
          f"{'loop img/s':>12}{'loop/bare':>10}")
    for r in rows:
        loop = (f"{r['loop_images_per_s']:>12.1f}{r['loop_fraction_of_bare']:>10.2f}"
                if "loop_images_per_s" in r else "")
        print(f"{r['preset']:<14}{r['batch_size']:>6}{r['gflop_per_image']:>11.4f}{r['images_per_s']:>9.1f}"
              f"{r['achieved_gflops']:>9.1f}{r['fraction_of_gemm']:>9.2f}{loop}")
    if args.json:
        write_json(args.json, {"benchmark": "train", "environment": environment(device), "bf16": args.bf16,
                               "compile": args.compile,
                               "gemm_gflops": reference, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
