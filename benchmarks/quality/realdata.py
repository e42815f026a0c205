"""The CIFAR-10 files of the shared data folder (shared/data/README.md): JPEG-q75 training shards, lossless test set.

`--data-dir` may name the data folder itself (holding cifar10/ and models/) or its cifar10/ sub-folder. The
training set is whatever `train_jpeg75_part*.npz` shards are present (a device call carries at most 64 MiB, so
a run may have fewer than four); which ones were used is part of every stage's recorded config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccfast.data import load_samples
from ccfast.errors import CCFastError

TRAIN_GLOB = "train_jpeg75_part*.npz"
TEST_FILE = "test.npz"
# The standard (not robust) CIFAR-10 ResNets of shared/data/models (akamaster), by ccfast architecture name.
PRETRAINED_FILES = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet56": "resnet56-4bfd9763.th"}


def cifar_dir(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    for candidate in (data_dir / "cifar10", data_dir):
        if (candidate / TEST_FILE).exists() or any(candidate.glob(TRAIN_GLOB)):
            return candidate
    raise CCFastError(f"{data_dir}: no CIFAR-10 files (expected cifar10/{TEST_FILE} and cifar10/{TRAIN_GLOB}; "
                      "see shared/data/README.md)")


def train_shards(data_dir: str | Path) -> list[Path]:
    shards = sorted(cifar_dir(data_dir).glob(TRAIN_GLOB))
    if not shards:
        raise CCFastError(f"{cifar_dir(data_dir)}: no training shards {TRAIN_GLOB}")
    return shards


def test_set(data_dir: str | Path) -> Path:
    path = cifar_dir(data_dir) / TEST_FILE
    if not path.exists():
        raise CCFastError(f"{path}: the lossless CIFAR-10 test set (the FID reference) is missing")
    return path


def pretrained_weights(data_dir: str | Path, arch: str) -> Path:
    """The standard (not robust) CIFAR ResNet of shared/data/models for `arch`: the classifiers' initialisation."""
    if arch not in PRETRAINED_FILES:
        raise CCFastError(
            f"no shared pretrained weights for --clf-arch {arch}; choose from {', '.join(PRETRAINED_FILES)}"
        )
    name = PRETRAINED_FILES[arch]
    candidates = [Path(data_dir) / "models" / name, cifar_dir(data_dir).parent / "models" / name]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise CCFastError(f"{candidates[0]}: the standard CIFAR-10 {arch} weights (the classifiers' initialisation) are "
                      "missing; they are in shared/data/models (see shared/data/README.md)")


def load_images(paths: list[Path], limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated uint8 NHWC images and int64 labels of the given files; with `limit`, a seeded random subset of
    that size in file order (the shards are sorted by class, so their first images would all be airplanes)."""
    parts = [load_samples(path, require_labels=True, num_classes=10) for path in paths]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    if limit is not None and limit < len(images):
        keep = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
        images, labels = images[keep], labels[keep]
    return images, labels
