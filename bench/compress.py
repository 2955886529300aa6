"""Benchmark: the VLAE's bits-back code against its bound and against generic image codecs.

On one trained run and one set of binary or 8-bit (grey or RGB) images, measures

- vlae's bits-back stream (:mod:`vlae.codec`): bytes, bits/dim net of the initial
  bits (stated separately, with the file header), compress and decompress images/s,
  and the exact check ``decompress(compress(x)) == x`` (``--also-decode-on``: again
  with the network on another device, e.g. a file written on a GPU read on the CPU);
- the same model's -ELBO (one posterior sample per image, as the code uses) and
  IW NLL (``--k`` importance samples, on ``--iw-subset`` of the images);
- binary images: JBIG (jbigkit's ``pbmtojbg``/``jbgtopbm``; skipped with a notice
  when absent), PNG (1-bit, Pillow, ``optimize=True``), gzip, bz2 and lzma
  (strongest settings) of the bit-packed images;
- 8-bit images: PNG (8-bit grey or RGB, Pillow, ``optimize=True``), gzip, bz2 and
  lzma of the raw bytes (channel-interleaved, as in a PPM); and the lossless image
  codecs WebP (``cwebp -lossless -z 9``, Debian ``webp``), JPEG-XL (``cjxl -d 0 -e 9``,
  Debian ``libjxl-tools``) and JPEG 2000 (``opj_compress``, reversible, Debian
  ``libopenjp2-tools``), each skipped with a notice when its tools are absent.

The baselines code all images as one page (one header, one context), their most
favourable setting: a tall page, or for the image codecs a square mosaic (WebP
allows at most 16,383 pixels a side). For 8-bit images every codec is also run
per image (``--per-image``, the first N images of the set; 0: all), which is
what a user compressing single images pays: header included, no shared context.

Prints a table and writes JSON::

    python bench/compress.py --run runs/mnist-small --split test --subset 0 --out compress.json --threads 1
    python bench/compress.py --run runs/cifar-small --dataset cifar10 --subset 1000 --k 0 --threads 1
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlae.checkpoint import load_model
from vlae.codec import DEFAULT_PRECISION, compress, decompress, read_header
from vlae.codec.models import coding_device
from vlae.data import fixed_subset, load_dataset
from vlae.errors import VLAEError

from common import environment


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _row(name: str, nbytes: float, n: int, dims: int, enc_s: float | None, dec_s: float | None, exact: bool,
         **extra) -> dict:
    return {"codec": name, "bytes": nbytes, "bits_per_dim": 8 * nbytes / (n * dims),
            "nats_per_image": 8 * nbytes * math.log(2) / n,
            "compress_images_per_s": None if enc_s is None else n / max(enc_s, 1e-9),
            "decompress_images_per_s": None if dec_s is None else n / max(dec_s, 1e-9), "exact": exact, **extra}


def _speed(v: float | None) -> str:
    return f"{'-':>10s}" if v is None else f"{v:10.0f}" if v >= 10 else f"{v:10.2f}"


def _page(x: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` -> one page: ``(N * H, W)`` for one channel, ``(N * H, W, C)`` otherwise."""
    if x.shape[1] == 1:
        return x[:, 0].reshape(-1, x.shape[-1])
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, x.shape[-1], x.shape[1]))


def _unpage(page: np.ndarray, shape) -> np.ndarray:
    n, c, h, w = shape
    return page.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _pbm(page: np.ndarray) -> bytes:
    h, w = page.shape
    return f"P4\n{w} {h}\n".encode() + np.packbits(page, axis=1).tobytes()


def _from_pbm(data: bytes, shape) -> np.ndarray:
    # P4 header: magic, width, height, then one whitespace byte before the raster.
    fields, pos = [], 0
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    w, h = int(fields[1]), int(fields[2])
    bits = np.unpackbits(np.frombuffer(data[pos + 1:], dtype=np.uint8).reshape(h, -1), axis=1)[:, :w]
    return bits.reshape(shape)


def bench_jbig(x: np.ndarray, notice) -> dict | None:
    if shutil.which("pbmtojbg") is None or shutil.which("jbgtopbm") is None:
        notice("notice: JBIG skipped: pbmtojbg/jbgtopbm not found (Debian/Ubuntu: apt-get install jbigkit-bin)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, jbg, back = Path(tmp, "x.pbm"), Path(tmp, "x.jbg"), Path(tmp, "y.pbm")
        src.write_bytes(_pbm(_page(x)))
        start = time.perf_counter()  # timed with the process start: what a user pays
        subprocess.run(["pbmtojbg", str(src), str(jbg)], check=True)
        enc = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run(["jbgtopbm", str(jbg), str(back)], check=True)
        dec = time.perf_counter() - start
        exact = np.array_equal(_from_pbm(back.read_bytes(), x.shape), x)
        return _row("JBIG (pbmtojbg)", jbg.stat().st_size, len(x), x[0].size, enc, dec, exact)


def bench_png(x: np.ndarray, binary: bool) -> dict:
    from PIL import Image

    page = _page(x).astype(bool) if binary else _page(x)
    mode, name = ("1", "PNG 1-bit (Pillow)") if binary else (("L", "PNG 8-bit grey (Pillow)") if x.shape[1] == 1
                                                             else ("RGB", "PNG 8-bit RGB (Pillow)"))
    buf = io.BytesIO()
    start = time.perf_counter()
    Image.fromarray(page).save(buf, format="PNG", optimize=True)
    enc = time.perf_counter() - start
    data = buf.getvalue()
    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as im:
        back = np.asarray(im.convert(mode), dtype=np.uint8)
    dec = time.perf_counter() - start
    return _row(name, len(data), len(x), x[0].size, enc, dec, np.array_equal(_unpage(back, x.shape), x))


def bench_generic(x: np.ndarray, binary: bool) -> list[dict]:
    """gzip, bz2, lzma of the bit-packed (binary) or raw, channel-interleaved (8-bit) bytes."""
    raw = np.packbits(x.reshape(-1)).tobytes() if binary else _page(x).tobytes()
    what = "bit-packed" if binary else "raw bytes"

    def back_to_images(b: bytes) -> np.ndarray:
        a = np.frombuffer(b, np.uint8)
        return np.unpackbits(a)[:x.size].reshape(x.shape) if binary else _unpage(a, x.shape)

    rows = []
    for name, enc_fn, dec_fn in [
        (f"gzip -9 ({what})", lambda b: gzip.compress(b, 9, mtime=0), gzip.decompress),
        (f"bz2 -9 ({what})", lambda b: bz2.compress(b, 9), bz2.decompress),
        (f"lzma -9e ({what})", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    ]:
        data, enc = _timed(enc_fn, raw)
        back, dec = _timed(dec_fn, data)
        rows.append(_row(name, len(data), len(x), x[0].size, enc, dec, np.array_equal(back_to_images(back), x)))
    name = "raw bit-packed" if binary else "raw bytes (uncompressed)"
    rows.append(_row(name, len(raw), len(x), x[0].size, None, None, True))
    return rows


# Lossless image codecs driven through their command-line tools: encoder and decoder
# argument lists ({src}, {dst} substituted) and the Debian package to name when absent.
_TOOLS = [
    ("WebP lossless (cwebp -z 9)", "webp", ["cwebp", "-quiet", "-lossless", "-z", "9", "{src}", "-o", "{dst}"],
     ["dwebp", "-quiet", "{src}", "-o", "{dst}"], ".webp"),
    ("JPEG-XL lossless (cjxl -e 9)", "libjxl-tools", ["cjxl", "{src}", "{dst}", "-d", "0", "-e", "9", "--quiet"],
     ["djxl", "{src}", "{dst}", "--quiet"], ".jxl"),
    ("JPEG 2000 lossless (opj)", "libopenjp2-tools", ["opj_compress", "-i", "{src}", "-o", "{dst}", "-n", "5"],
     ["opj_decompress", "-i", "{src}", "-o", "{dst}"], ".j2k"),
]


def _mosaic(x: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` -> a near-square grid of the images ``(R * H, G * W[, C])``, padded with black."""
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = np.zeros((rows * cols, c, h, w), np.uint8)
    pad[:n] = x
    grid = pad.reshape(rows, cols, c, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return grid[..., 0] if c == 1 else grid


def _unmosaic(grid: np.ndarray, shape) -> np.ndarray:
    n, c, h, w = shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = grid.reshape(rows * h, cols * w, c)
    return grid.reshape(rows, h, cols, w, c).transpose(0, 2, 4, 1, 3).reshape(rows * cols, c, h, w)[:n]


def _tool_round_trip(page: np.ndarray, enc: list[str], dec: list[str], ext: str, tmp: Path, tag: str):
    """One image through a tool and back: (bytes, encode s, decode s, decoded page)."""
    from PIL import Image

    src, mid, back = tmp / f"{tag}.png", tmp / f"{tag}{ext}", tmp / f"{tag}-back.png"
    Image.fromarray(page).save(src, format="PNG")
    fill = lambda argv, a, b: [t.replace("{src}", str(a)).replace("{dst}", str(b)) for t in argv]  # noqa: E731
    start = time.perf_counter()  # timed with the process start: what a user pays
    subprocess.run(fill(enc, src, mid), check=True, capture_output=True)
    enc_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(fill(dec, mid, back), check=True, capture_output=True)
    dec_s = time.perf_counter() - start
    with Image.open(back) as im:
        out = np.asarray(im.convert("L" if page.ndim == 2 else "RGB"), dtype=np.uint8)
    return mid.stat().st_size, enc_s, dec_s, out


def bench_image_tools(x: np.ndarray, per_image: int, notice) -> list[dict]:
    """WebP, JPEG-XL and JPEG 2000 (lossless) on the mosaic of all images and per image."""
    rows = []
    for name, package, enc, dec, ext in _TOOLS:
        if shutil.which(enc[0]) is None or shutil.which(dec[0]) is None:
            notice(f"notice: {name} skipped: {enc[0]}/{dec[0]} not found (Debian/Ubuntu: apt-get install {package})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            size, enc_s, dec_s, out = _tool_round_trip(_mosaic(x), enc, dec, ext, Path(tmp), "all")
            rows.append(_row(f"{name}, all", size, len(x), x[0].size, enc_s, dec_s,
                             np.array_equal(_unmosaic(out, x.shape), x)))
            sub = x[:per_image] if per_image else x
            total, enc_t, dec_t, exact = 0, 0.0, 0.0, True
            for i, img in enumerate(sub):
                page = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                size, e, d, out = _tool_round_trip(np.ascontiguousarray(page), enc, dec, ext, Path(tmp), str(i))
                total, enc_t, dec_t, exact = total + size, enc_t + e, dec_t + d, exact and np.array_equal(out, page)
            rows.append(_row(f"{name}, per image", total, len(sub), x[0].size, enc_t, dec_t, exact,
                             images=len(sub)))
    return rows


def bench_per_image_generic(x: np.ndarray, per_image: int) -> list[dict]:
    """PNG, bz2 and lzma of each image on its own."""
    from PIL import Image

    sub = x[:per_image] if per_image else x
    rows = []
    for name, enc_fn, dec_fn in [
        ("PNG (Pillow), per image", lambda a: _png_bytes(a), lambda b, a: np.asarray(Image.open(io.BytesIO(b)))),
        ("bz2 -9, per image", lambda a: bz2.compress(a.tobytes(), 9),
         lambda b, a: np.frombuffer(bz2.decompress(b), np.uint8).reshape(a.shape)),
        ("lzma -9e, per image", lambda a: lzma.compress(a.tobytes(), preset=9 | lzma.PRESET_EXTREME),
         lambda b, a: np.frombuffer(lzma.decompress(b), np.uint8).reshape(a.shape)),
    ]:
        total, enc_t, dec_t, exact = 0, 0.0, 0.0, True
        for img in sub:
            page = np.ascontiguousarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            data, e = _timed(enc_fn, page)
            back, d = _timed(dec_fn, data, page)
            total, enc_t, dec_t, exact = total + len(data), enc_t + e, dec_t + d, exact and np.array_equal(back, page)
        rows.append(_row(name, total, len(sub), x[0].size, enc_t, dec_t, exact, images=len(sub)))
    return rows


def _png_bytes(page: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(page).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@torch.no_grad()
def bounds(model, x: torch.Tensor, k: int, iw_subset: int, batch: int = 100, seed: int = 0) -> dict:
    """-ELBO (one sample per image) on all of ``x``; IW NLL with ``k`` samples on a fixed subset."""
    g = torch.Generator().manual_seed(seed)
    xf = x.float()
    start = time.perf_counter()
    nelbo = torch.cat([model.terms(xf[i:i + batch], generator=g).nelbo for i in range(0, len(xf), batch)])
    elbo_s = time.perf_counter() - start
    out = {"nelbo": nelbo.mean().item(), "nelbo_se": (nelbo.std() / math.sqrt(len(nelbo))).item(),
           "elbo_images": len(nelbo), "elbo_seconds": elbo_s}
    if k > 0:
        sub = fixed_subset(xf, iw_subset)
        start = time.perf_counter()
        nll = torch.cat([-model.iw_bound(sub[i:i + 20], k=k, generator=g) for i in range(0, len(sub), 20)])
        out.update({"iw_nll": nll.mean().item(), "iw_nll_se": (nll.std() / math.sqrt(len(nll))).item(),
                    "iw_k": k, "iw_images": len(nll), "iw_seconds": time.perf_counter() - start})
        # The ELBO on the IW images too, so the gap is measured on the same images.
        idx = fixed_subset(torch.arange(len(xf)), iw_subset)
        out["nelbo_on_iw_images"] = nelbo[idx].mean().item()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder or checkpoint")
    p.add_argument("--dataset", default="binarized-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--subset", type=int, default=0, help="a fixed subset of N images (0: the whole split)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--precision", type=int, default=DEFAULT_PRECISION)
    p.add_argument("--batch", type=int, default=None, help="images per chunk (default: vlae.codec.default_batch)")
    p.add_argument("--k", type=int, default=256, help="importance samples of the IW NLL (0: skip)")
    p.add_argument("--iw-subset", type=int, default=1000, help="images for the IW NLL (0: all)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="where vlae's network runs (default cpu)")
    p.add_argument("--also-decode-on", default=None, metavar="DEVICE",
                   help="decode the file a second time with the network on DEVICE, e.g. cpu after --device cuda")
    p.add_argument("--per-image", type=int, default=0,
                   help="8-bit: images coded one by one by each baseline (the first N; 0: all)")
    p.add_argument("--out", default=None, help="JSON output")
    args = p.parse_args(argv)
    notice = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        model, cfg = load_model(args.run, weights=args.weights, device="cpu")
        for device in {args.device, args.also_decode_on} - {None}:
            coding_device(model, device)  # an absent or bad device: its one-line error now, not after the coding
        data = load_dataset(args.dataset, args.split, args.data_dir or cfg.train.data_dir)
        x = fixed_subset(data.images, args.subset)
        x = x[:, None] if x.dim() == 3 else x
        binary = model.observation.name == "bernoulli"
        n, dims = len(x), x[0].numel()
        notice(f"{n} {args.dataset} {args.split} images; model {args.run} ({cfg.preset}, prior {cfg.model.prior}, "
               f"decoder {cfg.model.decoder})")
        progress = lambda done, total: notice(f"  {done}/{total}")  # noqa: E731
        (blob, stats), enc_s = _timed(lambda: compress(model, x, precision=args.precision, batch=args.batch,
                                                        device=args.device, progress=progress, return_stats=True))
        y, dec_s = _timed(lambda: decompress(model, blob, device=args.device, progress=progress))
        exact = torch.equal(y, x)
        cross = None
        if args.also_decode_on:  # a file written with the network on one device, read on another
            y2, cross_s = _timed(lambda: decompress(model, blob, device=args.also_decode_on))
            cross = {"device": args.also_decode_on, "exact": torch.equal(y2, x), "images_per_s": n / cross_s}
        head = read_header(blob)
        header_bytes = len(blob) - 4 * head.words  # the near-ties included
        vlae_row = _row("vlae bits-back (net)", stats.net_bits / 8, n, dims, enc_s, dec_s, exact)
        vlae_row.update({"file_bytes": len(blob), "stream_bits": stats.stream_bits,
                         "initial_bits": stats.initial_bits, "header_and_crc_bytes": header_bytes,
                         "overhead_bits_per_image": (stats.initial_bits + 8 * header_bytes) / n,
                         "ideal_bits_per_dim": (stats.ideal_pixel_bits + stats.ideal_prior_bits
                                                - stats.ideal_bits_back) / (n * dims),
                         "precision": args.precision, "batch": head.batch, "near_ties": stats.ties,
                         "decoded_on_other_device": cross})
        file_row = _row("vlae file (all included)", len(blob), n, dims, enc_s, dec_s, exact)
        b = bounds(model, x, args.k, args.iw_subset)
        rows = [vlae_row, file_row]
        jbig = bench_jbig(x.numpy(), notice) if binary else None
        rows += ([jbig] if jbig else []) + [bench_png(x.numpy(), binary)] + bench_generic(x.numpy(), binary)
        if not binary:
            rows += bench_image_tools(x.numpy(), args.per_image, notice)
            rows += bench_per_image_generic(x.numpy(), args.per_image)
    except VLAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {"run": str(args.run), "preset": cfg.preset, "prior": cfg.model.prior, "decoder": cfg.model.decoder,
              "dataset": args.dataset, "split": args.split, "images": n, "dims": dims, "bounds": b, "codecs": rows,
              **environment(torch.device(args.device or "cpu")), "command": " ".join(sys.argv)}
    to_bpd = 1 / (dims * math.log(2))
    print(f"\n{n} images of {args.dataset} {args.split}, model {args.run} (preset {cfg.preset}, prior "
          f"{cfg.model.prior}), {torch.get_num_threads()} thread(s)")
    print(f"  -ELBO  {b['nelbo']:.2f} ± {b['nelbo_se']:.2f} nats/image = {b['nelbo'] * to_bpd:.4f} bits/dim "
          f"(1 posterior sample per image, all {b['elbo_images']} images)")
    if "iw_nll" in b:
        print(f"  IW NLL {b['iw_nll']:.2f} ± {b['iw_nll_se']:.2f} nats/image = {b['iw_nll'] * to_bpd:.4f} bits/dim "
              f"(k={b['iw_k']}, {b['iw_images']} images; -ELBO on those: {b['nelbo_on_iw_images']:.2f})")
    code = vlae_row["nats_per_image"]
    print(f"  vlae code {code:.2f} nats/image: {100 * (code / b['nelbo'] - 1):+.2f}% vs -ELBO; initial bits "
          f"{stats.initial_bits} + header {header_bytes} bytes = {vlae_row['overhead_bits_per_image']:.2f} "
          f"bits/image at this count")
    print(f"\n  {'codec':36s} {'bytes':>10s} {'bits/dim':>9s} {'x vlae':>7s} {'enc img/s':>10s} "
          f"{'dec img/s':>10s} exact")
    for r in rows:
        print(f"  {r['codec']:36s} {r['bytes']:10.0f} {r['bits_per_dim']:9.4f} "
              f"{r['bits_per_dim'] / vlae_row['bits_per_dim']:7.2f} {_speed(r['compress_images_per_s'])} "
              f"{_speed(r['decompress_images_per_s'])} {'yes' if r['exact'] else 'NO'}")
    if cross is not None:
        print(f"\n  the file decoded again with the network on {cross['device']}: "
              f"{'exact' if cross['exact'] else 'NOT EXACT'}, {_speed(cross['images_per_s']).strip()} img/s")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if all(r["exact"] for r in rows) and (cross is None or cross["exact"]) else 1


if __name__ == "__main__":
    sys.exit(main())
