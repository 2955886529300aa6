"""Benchmark: training throughput per preset, batch size and execution mode, against the
hardware's dense-GEMM rate.

For each ``PRESET[:BATCH]`` and each mode it measures, in one process:

- the bare training step: :class:`vlae.train.step.TrainStep`, the step ``vlae train``
  takes (forward, backward, clipping, the update, the skip decision and the Polyak
  average on the device), on one batch, in images/s over a stretch of calls with one
  synchronisation at the end; its FLOPs (counted) and the achieved GFLOP/s;
- the same step inside ``vlae.train.train`` (data indexing, schedules, the statistics
  read every 20 steps, logging), as a fraction of the bare rate;
- a dense ``1024 x 1024`` matrix product on the same device, the reference that the
  achieved FLOP/s is divided by.

Modes: ``eager`` (one kernel launch at a time), ``graph`` (the step replayed as one
CUDA graph: ``vlae train --cuda-graph on``), ``compile`` (``torch.compile`` of the
model, static shapes: ``--compile``) and ``compile+graph``.

    python bench/train.py --presets mnist-small mnist-paper --threads 2 --json results/bench_train.json
    python bench/train.py --device cuda --bf16 --presets mnist-paper:128 cifar-paper:32 --modes eager graph

Images are random (binary at MNIST's ink density, or 8-bit values): the cost of a
step does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from vlae.runtime import Runtime
from vlae.train.loop import GRAPH_WARMUP
from vlae.train.step import TrainStep

from common import build_model, count_flops, environment, gemm_gflops, random_images, synchronize, write_json

DEFAULT_PRESETS = ["mnist-small", "mnist-paper", "mnist-gated"]
MODES = ("eager", "graph", "compile", "compile+graph")
WINDOW = 4096  # rows of statistics the bare step keeps before it starts over (it never reads them)


def bare_step(model, cfg, x: torch.Tensor, bf16: bool, mode: str):
    """The step ``vlae train`` takes, on one batch, without the loop around it."""
    cuda = x.device.type == "cuda"
    lr = torch.tensor(cfg.train.lr, device=x.device) if cuda else cfg.train.lr  # as vlae train sets it
    opt_cls = torch.optim.Adamax if cfg.train.optimizer == "adamax" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=lr, capturable=cuda)
    forward = model
    if "compile" in mode:
        from torch._inductor import config as inductor

        inductor.fallback_random = True  # as vlae train --compile
        forward = torch.compile(model, dynamic=False)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.train.polyak > 0 else None
    soft = cfg.train.soft_free_bits
    step = TrainStep(model, forward, optimizer, Runtime(x.device, bf16=bf16), tuple(x.shape), WINDOW,
                     grad_clip=cfg.train.grad_clip, hard_free_bits=not soft,
                     soft_target=cfg.model.free_bits * cfg.model.data_dims if soft else 0.0, ema=ema,
                     polyak=cfg.train.polyak)
    step.x.copy_(x)

    def run() -> None:
        if step.pending == WINDOW:  # start the rows over without reading them (a read synchronises)
            step.pending = 0
            step.slot.zero_()
        step()

    if "graph" in mode:
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                run()
        torch.cuda.current_stream().wait_stream(side)
        step.capture()
    return run


def rate_over(fn, items: int, device: torch.device, seconds: float, warmup: int = 3) -> tuple[float, int]:
    """items/s of ``fn`` over calls filling about ``seconds``, one synchronisation at the end
    (the way a training loop runs), and the number of calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 5:
        for _ in range(10):
            fn()
        calls += 10
        if device.type == "cuda" and calls % 100 == 0:
            synchronize(device)  # keeps the host's clock within 100 steps of the device's
    synchronize(device)
    return items * calls / (time.perf_counter() - start), calls


def loop_rate(cfg, device: torch.device, steps: int, bf16: bool, mode: str) -> float:
    """images/s of ``vlae.train.train`` from the step after its warm-up (and graph capture) to
    its last step (no epoch end falls inside, so no validation pass is timed)."""
    from vlae.reproduce import training_rate

    cfg = copy.deepcopy(cfg)
    cfg.train.device, cfg.train.precision = str(device), "bf16" if bf16 else "fp32"
    cfg.train.compile = "compile" in mode
    cfg.train.cuda_graph = "on" if "graph" in mode else "off"
    images = random_images(cfg, cfg.train.batch_size * (steps + 4), torch.Generator().manual_seed(1)).to(torch.uint8)
    return training_rate(cfg, steps, data={"train": images, "valid": images[:16]})[0]


def bench(spec: str, mode: str, args, device: torch.device, reference: float) -> dict:
    name, _, batch_text = spec.partition(":")
    cfg, model = build_model(name, args.override, device, args.seed)
    batch = int(batch_text) if batch_text else (args.batch_size or cfg.train.batch_size)
    cfg.train.batch_size = batch
    x = random_images(cfg, batch, torch.Generator().manual_seed(args.seed)).to(device)
    flops = count_flops(bare_step(copy.deepcopy(model), cfg, x, args.bf16, "eager"))  # counted eagerly
    start = time.perf_counter()
    step = bare_step(model, cfg, x, args.bf16, mode)
    step()
    synchronize(device)
    setup = time.perf_counter() - start  # capture and compilation
    rate, calls = rate_over(step, batch, device, args.seconds)
    gflops = flops / batch * rate / 1e9
    row = {"preset": name, "batch_size": batch, "mode": mode, "precision": "bf16" if args.bf16 else "fp32",
           "gflop_per_image": flops / batch / 1e9, "images_per_s": rate, "timed_steps": calls,
           "setup_seconds": setup, "achieved_gflops": gflops, "gemm_gflops": reference,
           "fraction_of_gemm": gflops / reference}
    if not args.no_loop:
        # on a machine whose speed drifts, alternate the two (--loop-rounds) and take the median ratio
        bares, loops = [], []
        for _ in range(args.loop_rounds):
            bares.append(rate_over(step, batch, device, args.seconds)[0])
            loops.append(loop_rate(cfg, device, args.loop_steps, args.bf16, mode))
        ratios = [loop / bare for loop, bare in zip(loops, bares)]
        row.update({"bare_images_per_s": statistics.median(bares), "loop_images_per_s": statistics.median(loops),
                    "loop_fraction_of_bare": statistics.median(ratios), "loop_fraction_per_round": ratios})
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, metavar="PRESET[:BATCH]",
                        help="presets to measure, each with an optional batch size")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES, help="execution modes (default: eager)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch size (0: each preset's own)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per measurement (default: 5)")
    parser.add_argument("--loop-steps", type=int, default=20, help="steps of the vlae.train loop to time")
    parser.add_argument("--loop-rounds", type=int, default=1,
                        help="alternating bare/loop measurements; the median ratio is reported (default: 1)")
    parser.add_argument("--no-loop", action="store_true", help="skip the vlae.train loop measurement")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AVX512-bf16, or CUDA)")
    parser.add_argument("--compile", action="store_true", help="shorthand for --modes compile")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and images")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every preset (repeatable)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.compile:
        args.modes = ["compile"]
    if args.threads < 0 or args.seconds <= 0 or args.batch_size < 0 or args.loop_rounds < 1:
        parser.error("--threads and --batch-size must be >= 0, --seconds > 0, --loop-rounds >= 1")
    if args.loop_steps < GRAPH_WARMUP + 6:
        parser.error(f"--loop-steps must be >= {GRAPH_WARMUP + 6} (warm-up and capture come first)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if device.type != "cuda" and any("graph" in m for m in args.modes):
        print("error: the graph modes need --device cuda", file=sys.stderr)
        return 2
    reference = gemm_gflops(device, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    print(f"dense GEMM reference: {reference:.1f} GFLOP/s ({'bf16' if args.bf16 else 'fp32'}, {device}, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'preset':<18}{'batch':>6} {'mode':<14}{'GFLOP/img':>10}{'img/s':>10}{'GFLOP/s':>9}{'of GEMM':>9}"
          f"{'loop img/s':>12}{'loop/bare':>10}")
    rows = []
    for spec in args.presets:
        for mode in args.modes:
            rows.append(bench(spec, mode, args, device, reference))
            r = rows[-1]
            loop = (f"{r['loop_images_per_s']:>12.1f}{r['loop_fraction_of_bare']:>10.2f}"
                    if "loop_images_per_s" in r else "")
            print(f"{r['preset']:<18}{r['batch_size']:>6} {r['mode']:<14}{r['gflop_per_image']:>10.4f}"
                  f"{r['images_per_s']:>10.1f}{r['achieved_gflops']:>9.1f}{r['fraction_of_gemm']:>9.2f}{loop}",
                  flush=True)
            if args.json:  # after every row: a run stopped by its time limit keeps what it measured
                write_json(args.json, {"benchmark": "train", "environment": environment(device), "bf16": args.bf16,
                                       "modes": args.modes, "gemm_gflops": reference, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
