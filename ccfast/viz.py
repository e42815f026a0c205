"""Before/after image grids as PNG, with no imaging library (zlib + the PNG chunk format).

    python -m ccfast.viz --before samples.npz --after refined.npz --out grid.png [--n 32] [--diff-gain 10]

The PNG has three rows of --n images each, images --start .. --start + n − 1 of both files:
  row 1  the images of --before (e.g. the generator's samples)
  row 2  the same images from --after (e.g. refined by python -m ccfast.refine)
  row 3  |after − before| per pixel, multiplied by --diff-gain (refinement steps of ε ≈ 1.5 in L2 over
         3×32×32 pixels are often invisible at 1×): black where nothing changed
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib

import numpy as np

from .io_utils import atomic_path


def write_png(path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an RGB PNG, atomically."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(png)


def tile(images: np.ndarray, cols: int, pad: int = 2, scale: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows·(H+pad), cols·(W+pad), 3) mosaic, each image upscaled by `scale`."""
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    rows = (n + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return out


def before_after_grid(before: np.ndarray, after: np.ndarray, diff_gain: float = 10.0, scale: int = 2) -> np.ndarray:
    """Three rows of images: before, after, amplified absolute difference."""
    diff = np.clip(np.abs(after.astype(np.int16) - before.astype(np.int16)) * diff_gain, 0, 255).astype(np.uint8)
    n = len(before)
    return tile(np.concatenate([before, after, diff]), cols=n, scale=scale)


def main(argv=None) -> int:
    from .cli import run_main
    from .data import load_samples

    p = argparse.ArgumentParser(prog="python -m ccfast.viz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="unrefined samples .npz")
    p.add_argument("--after", required=True, help="refined samples .npz")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--n", type=int, default=16, help="images per row (default 16)")
    p.add_argument("--start", type=int, default=0, help="first image index")
    p.add_argument("--diff-gain", type=float, default=10.0, help="amplification of |after − before| (default 10)")
    p.add_argument("--scale", type=int, default=2, help="pixel upscaling, 1-16 (default 2)")
    args = p.parse_args(argv)

    def body():
        from .errors import CCFastError
        from .validation import integer, number, output_path

        integer(args.n, "--n", at_least=1, at_most=4096)
        integer(args.start, "--start", at_least=0)
        integer(args.scale, "--scale", at_least=1, at_most=16)
        number(args.diff_gain, "--diff-gain", at_least=0)
        output_path(args.out, "--out", inputs=[("--before", args.before), ("--after", args.after)],
                    overwrite=args.overwrite, suffix=".png")
        before, after = load_samples(args.before).images, load_samples(args.after).images
        if before.shape[1:] != after.shape[1:]:
            raise CCFastError(f"--before {args.before} holds {before.shape[1]}×{before.shape[2]} images but --after "
                              f"{args.after} holds {after.shape[1]}×{after.shape[2]}; compare files of one image size")
        n_both = min(len(before), len(after))  # a refined file may hold only the first images of the samples
        if args.start >= n_both:
            raise CCFastError(f"--start {args.start} is past the end: --before {args.before} holds {len(before)} images"
                              f" and --after {args.after} {len(after)}; use --start 0..{n_both - 1}")
        stop = min(args.start + args.n, n_both)
        a, b = before[args.start:stop], after[args.start:stop]
        write_png(args.out, before_after_grid(a, b, args.diff_gain, args.scale))
        print(f"wrote {args.out}", file=sys.stderr)

    return run_main("python -m ccfast.viz", body)


if __name__ == "__main__":
    sys.exit(main())
