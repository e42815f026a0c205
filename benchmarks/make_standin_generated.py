"""Make STAND-IN "generated" images until the project has a class-conditional generator.

These are NOT samples of any generative model: they are real images degraded on purpose (Gaussian blur, a
per-image colour cast and gain, Gaussian noise), kept with their true labels and written in the
consistency-models sample format (`arr_0` uint8 NHWC, `arr_1` int64 labels) so that `python -m ccfast.train
--fake` reads them like real samples. They give the discriminator a distribution shift to learn, nothing more;
numbers obtained with them say nothing about refining a real generator's samples.

    python benchmarks/make_standin_generated.py --real /work/shared/data/cifar10/train_jpeg75_part1.npz \
        --out standin_generated.npz --n 5000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

STANDIN_NOTE = "stand-in generated images: degraded real images (blur + colour cast + noise), not generator samples"


def degrade(images: np.ndarray, seed: int = 0, strength: float = 1.0, batch: int = 1024) -> np.ndarray:
    """uint8 NHWC -> uint8 NHWC: blur (σ = 1.0·strength px), colour gain ±20% and offset ±0.08 per channel,
    noise σ = 0.06.

    Quantised by truncation, as the consistency-models sampler does (`.to(uint8)` after scaling)."""
    g = torch.Generator().manual_seed(seed)
    sigma = 1.0 * strength
    radius = max(1, int(round(3 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / max(sigma, 1e-6)) ** 2)
    taps = taps / taps.sum()
    out = np.empty_like(images)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255.0
        n, c = x.shape[:2]
        padded = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
        kx = taps.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
        ky = taps.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
        x = torch.nn.functional.conv2d(torch.nn.functional.conv2d(padded, kx, groups=c), ky, groups=c)
        gain = 1.0 + 0.2 * strength * (2 * torch.rand(n, c, 1, 1, generator=g) - 1)
        offset = 0.08 * strength * (2 * torch.rand(n, c, 1, 1, generator=g) - 1)
        x = x * gain + offset + 0.06 * strength * torch.randn(x.shape, generator=g)
        out[start:start + batch] = (x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def write_standins(path, images: np.ndarray, labels: np.ndarray, seed: int = 0, strength: float = 1.0) -> None:
    from ccfast.data import save_samples

    save_samples(path, degrade(images, seed, strength), labels.astype(np.int64), layout="arr")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=STANDIN_NOTE)
    p.add_argument("--real", required=True, help=".npz with images/labels (or arr_0/arr_1) to degrade")
    p.add_argument("--out", required=True, help="stand-in samples .npz (consistency-models layout)")
    p.add_argument("--n", type=int, default=None, help="use the first N images (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0, help="scales blur, colour cast and noise (default 1)")
    args = p.parse_args(argv)
    from ccfast.data import load_samples

    s = load_samples(args.real, require_labels=True)
    n = len(s) if args.n is None else min(args.n, len(s))
    write_standins(args.out, s.images[:n], s.labels[:n], args.seed, args.strength)
    print(f"wrote {args.out}: {n} {STANDIN_NOTE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
