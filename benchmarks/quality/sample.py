"""Draw samples from a trained consistency model into a consistency-models `.npz` (arr_0 uint8 NHWC, arr_1 labels).

Samplers (Song et al. 2023, Algorithm 1): one step x = f(σ_max·z, σ_max); two steps then re-noise to σ_mid,
x' = x + sqrt(σ_mid² − σ_min²)·z', and denoise again, x = f(x', σ_mid). σ_mid = 0.821 is iCT's CIFAR-10
two-step midpoint. Each output is clamped to [-1, 1] and quantised as the consistency-models sampler does.

Seeds. Labels (balanced over the classes, shuffled) and the noises z, z' depend only on (seed, n), never on the
batch size or the model, so every generator and step count sees the same seeds: image i of the CT, ACT,
1-step and 2-step files starts from the same z_i with the same label, and the image grids compare like with like.
"""

from __future__ import annotations

import numpy as np
import torch

from ccfast.data import save_samples

from .consistency import ConsistencyModel, model_space_to_uint8

SIGMA_MID_CIFAR10 = 0.821


def sample_plan(n: int, num_classes: int, seed: int, image_size: int = 32):
    """(labels int64 (n,), z (n,3,H,W), z' (n,3,H,W)) for a set of n samples, on the CPU."""
    labels = np.random.default_rng(seed).permutation(np.arange(n) % num_classes).astype(np.int64)
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn((n, 3, image_size, image_size), generator=g)
    z2 = torch.randn((n, 3, image_size, image_size), generator=g)
    return labels, z1, z2


@torch.no_grad()
def generate(model: ConsistencyModel, n: int, steps: int, seed: int, sigma_mid: float = SIGMA_MID_CIFAR10,
             batch_size: int = 500, device="cpu", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n samples with 1 or 2 steps: (uint8 NHWC images, labels)."""
    from tqdm.auto import tqdm

    if steps not in (1, 2):
        raise ValueError(f"steps must be 1 or 2, got {steps}")
    sched = model.sched
    if steps == 2 and not sched.sigma_min < sigma_mid < sched.sigma_max:
        raise ValueError(f"sigma_mid must lie in ({sched.sigma_min}, {sched.sigma_max}), got {sigma_mid}")
    labels, z1, z2 = sample_plan(n, model.net.cfg.num_classes, seed, model.net.cfg.image_size)
    out = np.empty((n, model.net.cfg.image_size, model.net.cfg.image_size, 3), dtype=np.uint8)
    device = torch.device(device)
    for start in tqdm(range(0, n, batch_size), desc=f"sample {steps}-step", disable=not progress, leave=False):
        sl = slice(start, min(n, start + batch_size))
        y = torch.from_numpy(labels[sl]).to(device)
        b = y.shape[0]
        x = model(z1[sl].to(device) * sched.sigma_max, torch.full((b,), sched.sigma_max, device=device), y).clamp(-1, 1)
        if steps == 2:
            x_mid = x + (sigma_mid ** 2 - sched.sigma_min ** 2) ** 0.5 * z2[sl].to(device)
            x = model(x_mid, torch.full((b,), sigma_mid, device=device), y).clamp(-1, 1)
        out[sl] = model_space_to_uint8(x).cpu().numpy()
    return out, labels


def write_samples(path, images: np.ndarray, labels: np.ndarray) -> None:
    """Atomically, in the consistency-models layout."""
    save_samples(path, images, labels, layout="arr")
