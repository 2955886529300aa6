"""Benchmark: naive vs fast exact sampling of the same VLAE.

Both samplers draw ``n`` images from the same model with the same generator
seed, in the same process, and must agree bit for bit; the script prints the
median samples/s of each over ``--repeats`` runs and their ratio.

    python bench/sampling.py --preset mnist-small --n 16 --repeats 3 --threads 1
    python bench/sampling.py --preset mnist-small --colour --n 4 --repeats 1   # 8-bit RGB, 7x4 field

``--colour`` turns the preset into an 8-bit RGB model (32x32, discretized
logistic mixture of 10 components, the paper's gated decoder with the 7x4
field; ``--field`` picks another); a preset that is already 8-bit (observation
``logistic_mixture``) is used as it is. The model is freshly initialised
(data-dependent init on a training batch, or on random images where no data is
at hand) unless ``--run-dir`` points at a trained run; the cost of sampling does
not depend on the weights, only the (rare) exact re-decisions of the fast
sampler do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from vlae.config import apply_overrides, get_preset
from vlae.errors import VLAEError
from vlae.model import VLAE
from vlae.sampling import METHODS, FastSampler


def build_model(args) -> VLAE:
    if args.run_dir:
        from vlae.checkpoint import load_model  # written alongside; imported only when asked for

        model, _ = load_model(args.run_dir, weights="ema", device="cpu")
        return model.eval()
    cfg = get_preset(args.preset)
    overrides = list(args.override)
    if args.colour and cfg.model.observation != "logistic_mixture":
        overrides = ["model.observation=logistic_mixture", "model.image_shape=3x32x32", "model.decoder=gated",
                     f"model.decoder_field={args.field}", "model.cond_every_layer=true"] + overrides
    if args.decoder_layers:
        overrides.append(f"model.decoder_layers={args.decoder_layers}")
    apply_overrides(cfg, overrides)
    cfg.validate()
    torch.manual_seed(args.seed)
    model = VLAE(cfg.model).eval()
    if cfg.model.observation != "bernoulli":  # 8-bit: random images are plausible enough for the init
        print("(8-bit model: initialising on random images)", file=sys.stderr)
        model.initialize(torch.randint(0, 256, (32, *cfg.model.image_shape),
                                       generator=torch.Generator().manual_seed(args.seed)).float())
        return model
    try:
        from vlae.data import load_or_fallback

        batch = load_or_fallback(cfg.train.dataset, "train", cfg.train.data_dir).binarized()[:100].float()
    except Exception as exc:  # the benchmark only needs plausible activations
        print(f"(no training data: {exc}; initialising on random images)", file=sys.stderr)
        batch = torch.bernoulli(torch.full((100, *cfg.model.image_shape), 0.13))
    model.initialize(batch)
    return model


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mnist-small", help="model preset (default: mnist-small)")
    parser.add_argument("--run-dir", default=None, help="benchmark a trained run instead of a fresh model")
    parser.add_argument("--n", type=int, default=16, help="images per sampling call (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each sampler (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--decoder-layers", type=int, default=0, help="override model.decoder_layers")
    parser.add_argument("--method", default="auto", choices=METHODS[:-1], help="fast sampling method")
    parser.add_argument("--colour", action="store_true", help="benchmark an 8-bit RGB version of the preset")
    parser.add_argument("--field", default="7x4", help="receptive field AxB of the --colour decoder (default: 7x4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and of the samples")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.decoder=gated (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.n < 1 or args.repeats < 1 or args.threads < 1:
            raise VLAEError("--n, --repeats and --threads must be >= 1")
        torch.set_num_threads(args.threads)
        model = build_model(args)
        cfg = model.cfg
        sampler = FastSampler(model, method=args.method)
        dec = model.decoder
        field = dec.receptive_field_name() or "-"
        layers = (f"{dec.vertical_layers}v+{dec.layers}h" if hasattr(dec, "vertical_layers")
                  else getattr(dec, "layers", 0))
        print(f"preset={args.preset if not args.run_dir else args.run_dir} decoder={cfg.decoder} field={field} "
              f"layers={layers} kernel={getattr(dec, 'kernel_size', '-')} latent_dim={cfg.latent_dim} "
              f"image={'x'.join(map(str, cfg.image_shape))} observation={cfg.observation} n={args.n} "
              f"repeats={args.repeats} threads={torch.get_num_threads()} method={args.method}")
        naive_t, fast_t, prior_t = [], [], []
        for r in range(args.repeats):
            if cfg.latent_dim > 0:  # the shared first stage, z ~ p(z), timed alone
                g = torch.Generator().manual_seed(args.seed + r)
                tp, _ = timed(lambda: model.prior.sample(args.n, generator=g))
                prior_t.append(tp)
            tn, xn = timed(lambda: model.sample(args.n, generator=torch.Generator().manual_seed(args.seed + r)))
            tf, xf = timed(lambda: sampler.sample(args.n, generator=torch.Generator().manual_seed(args.seed + r)))
            if not torch.equal(xn, xf):
                print(f"error: fast and naive samples differ in {int((xn != xf).sum())} pixels (repeat {r})",
                      file=sys.stderr)
                return 1
            naive_t.append(tn)
            fast_t.append(tf)
            print(f"  repeat {r}: naive {tn:8.3f} s   fast {tf:7.3f} s   identical: yes   "
                  f"exact re-decisions: {sampler.fallbacks}")
        naive_rate, fast_rate = args.n / statistics.median(naive_t), args.n / statistics.median(fast_t)
        print(f"naive: {naive_rate:10.2f} samples/s (median of {args.repeats})")
        print(f"fast:  {fast_rate:10.2f} samples/s (median of {args.repeats})")
        print(f"speed-up: {fast_rate / naive_rate:.1f}x   (bit-identical samples in all {args.repeats} repeats)")
        if prior_t:
            tp, tn, tf = statistics.median(prior_t), statistics.median(naive_t), statistics.median(fast_t)
            dn, df = tn - tp, max(tf - tp, 1e-9)
            print(f"of which z ~ p(z) alone: {tp:.3f} s per call (both samplers); decoder stage only: "
                  f"naive {dn:.3f} s, fast {df:.3f} s, speed-up {dn / df:.1f}x")
        return 0
    except VLAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
