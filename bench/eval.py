"""Benchmark: importance-weighted evaluation throughput per preset, against the
hardware's dense-GEMM rate, with the projected time of the paper's protocol.

For each preset it measures the library's IW evaluation
(:func:`vlae.evaluate.evaluate_model`: what ``vlae eval`` runs) on a batch of images in
importance samples per second (one sample = one decoder evaluation of one
image), the FLOPs per sample (counted), the achieved GFLOP/s and its fraction of
a dense ``1024 x 1024`` matrix product measured on the same device in the same
run; and projects the paper's protocol (``k`` samples for each of ``--test-images``
images) from the measured rate.

    python bench/eval.py --presets mnist-small mnist-paper --threads 2 --json results/bench_eval.json
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch

from vlae.evaluate import evaluate_model

from common import build_model, count_flops, environment, gemm_gflops, random_images, timed_rate, write_json

DEFAULT_PRESETS = ["mnist-small", "mnist-paper", "mnist-gated"]


def bench_preset(name: str, args, device: torch.device, reference: float) -> dict:
    cfg, model = build_model(name, args.override, device, args.seed)
    model.eval()
    x = random_images(cfg, args.images, torch.Generator().manual_seed(args.seed)).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext

    def run(compiled: bool = args.compile):
        with torch.no_grad(), autocast():
            evaluate_model(model, x, k=args.k, batch_size=args.images, chunk=args.chunk, progress=False,
                           compile=compiled)

    samples = args.images * args.k
    flops = count_flops(lambda: run(False))  # the same operations; counted without the compiler
    rate, calls = timed_rate(run, samples, device, args.seconds, warmup=1)
    gflops = flops / samples * rate / 1e9
    protocol_s = args.test_images * args.protocol_k / rate
    return {"preset": name, "images": args.images, "k": args.k, "gflop_per_sample": flops / samples / 1e9,
            "samples_per_s": rate, "timed_calls": calls, "compiled": args.compile, "achieved_gflops": gflops,
            "gemm_gflops": reference,
            "fraction_of_gemm": gflops / reference, "protocol": {"k": args.protocol_k, "images": args.test_images,
                                                                 "projected_hours": protocol_s / 3600}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, help="presets to measure")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--images", type=int, default=8, help="images per iw_bound call (default: 8)")
    parser.add_argument("--k", type=int, default=128, help="importance samples per image per call (default: 128)")
    parser.add_argument("--chunk", type=int, default=0, help="samples per pass (0: the library's choice)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per preset (default: 5)")
    parser.add_argument("--protocol-k", type=int, default=4096, help="k of the projected protocol (paper: 4096)")
    parser.add_argument("--test-images", type=int, default=10000, help="test images of the projected protocol")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AVX512-bf16, or CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the per-pass computation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and images")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every preset (repeatable)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if min(args.images, args.k, args.protocol_k, args.test_images) < 1 or args.chunk < 0 or args.seconds <= 0:
        parser.error("--images, --k, --protocol-k and --test-images must be >= 1, --chunk >= 0, --seconds > 0")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
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
    print(f"{'preset':<14}{'GFLOP/sample':>14}{'samples/s':>11}{'GFLOP/s':>9}{'of GEMM':>9}"
          f"{'protocol (h)':>14}")
    for r in rows:
        print(f"{r['preset']:<14}{r['gflop_per_sample']:>14.4f}{r['samples_per_s']:>11.1f}"
              f"{r['achieved_gflops']:>9.1f}{r['fraction_of_gemm']:>9.2f}{r['protocol']['projected_hours']:>14.1f}")
    print(f"protocol: k={args.protocol_k} on {args.test_images} test images, projected from the measured rate")
    if args.json:
        write_json(args.json, {"benchmark": "eval", "environment": environment(device), "bf16": args.bf16,
                               "gemm_gflops": reference, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
