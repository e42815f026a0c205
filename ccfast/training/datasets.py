"""Labelled image sets for training: reading them, checking them, ordering batches, augmenting.

Sources (all decoded to uint8 NHWC in memory):
- `.npz` with `images`/`labels` or `arr_0`/`arr_1` (consistency-models samples) — `ccfast.data.load_samples`;
- a folder with one sub-folder of images per class (classes numbered in sorted name order, as torchvision's
  ImageFolder does);
- downsampled-ImageNet batches (Chrabaszcz et al. 2017): pickle files `train_data_batch_*` / `val_data` (or
  `.npz` with the same keys) holding `data` (N, 3·H·W) uint8 in planar R, G, B order and `labels` numbered
  from 1. A folder of such batch files is read whole. The pickles are read with an unpickler that only
  rebuilds numpy arrays and lists, so a hostile file cannot run code.

Batches are drawn from an endless stream of epochs, each a seeded permutation: the global batch of iteration
t is a pure function of (seed, stream, t), which makes `--resume` exact and lets DDP ranks take disjoint
slices of the same global batch.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import load_samples, validate_labels, validate_uint8_images
from ..errors import CCFastError, require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_BATCH_PATTERNS = ("*data_batch*", "val_data*")


@dataclass
class LabelledImages:
    """uint8 NHWC images with int64 labels (0-based), and where they came from.

    `rows` (optional) selects the rows of `images`/`labels` that make up this set, so that a training set carved
    out of a large array (the ℓ0 hold-out) is a view, not a copy."""

    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0] if self.rows is None else len(self.rows))

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 NHWC images, int64 labels) of positions `index` of this set."""
        index = np.asarray(index)
        rows = index if self.rows is None else self.rows[index]
        return self.images[rows], self.labels[rows]

    def all_labels(self) -> np.ndarray:
        return self.labels if self.rows is None else self.labels[self.rows]

    def view(self, index: np.ndarray) -> "LabelledImages":
        rows = np.asarray(index) if self.rows is None else self.rows[index]
        return LabelledImages(self.images, self.labels, list(self.sources), rows)

    def copy_of(self, index: np.ndarray) -> "LabelledImages":
        images, labels = self.take(index)
        return LabelledImages(images, labels, list(self.sources))


# ---------------------------------------------------------------- reading


def load_labelled(paths: list[str], role: str) -> LabelledImages:
    """Read and concatenate every source in `paths`; all must hold images of one size, with labels."""
    if not paths:
        raise CCFastError(f"no {role} images given")
    parts = [_load_one(Path(p), role) for p in paths]
    sizes = {p.image_size for p in parts}
    if len(sizes) > 1:
        raise CCFastError(f"{role} sources hold images of different sizes {sorted(sizes)}: " + ", ".join(paths))
    if len(parts) == 1:
        return parts[0]
    return LabelledImages(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                          [s for p in parts for s in p.sources])


def _load_one(path: Path, role: str) -> LabelledImages:
    where = f"{role} {path}"
    if not path.exists():
        raise CCFastError(f"{where}: no such file or folder")
    if path.is_dir():
        batches = sorted(f for pattern in IMAGENET_BATCH_PATTERNS for f in path.glob(pattern) if f.is_file())
        if batches:
            parts = [_load_imagenet_batch(f, f"{role} {f}") for f in batches]
            return LabelledImages(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                                  [str(path)])
        return _load_class_folders(path, where)
    if zipfile.is_zipfile(path):
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
        if "data" in keys and not keys & {"images", "arr_0"}:
            return _load_imagenet_batch(path, where)
        samples = load_samples(path, require_labels=True,
                               no_labels_hint="training needs one label per image (arr_1 or labels in the .npz)")
        return LabelledImages(samples.images, samples.labels, [str(path)])
    return _load_imagenet_batch(path, where)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists and scalars only; any other callable named in the pickle is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles store raw bytes as latin-1 text to re-encode
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            import importlib

            try:
                return getattr(importlib.import_module(module), name)
            except ImportError:  # numpy 1 pickles name numpy.core, numpy 2 moved it to numpy._core
                return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")


def _load_imagenet_batch(path: Path, where: str) -> LabelledImages:
    """One downsampled-ImageNet batch: `data` (N, 3·H·W) planar RGB, `labels` 1..1000."""
    try:
        if zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as npz:
                batch = {k: npz[k] for k in npz.files}
        else:
            with open(path, "rb") as fh:
                batch = _ArrayUnpickler(fh, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        OSError,
        zipfile.BadZipFile,
        AttributeError,
        TypeError,
    ) as exc:
        raise CCFastError(
            f"{where}: not a readable image file (.npz, image folder or downsampled-ImageNet batch): {exc}"
        ) from exc
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise CCFastError(f"{where}: a downsampled-ImageNet batch needs 'data' and 'labels', found {keys}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2:
        raise CCFastError(f"{where}: 'data' must be uint8 (N, 3·H·W), got {data.dtype} {data.shape}")
    side = int(round((data.shape[1] / 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise CCFastError(f"{where}: rows of {data.shape[1]} values are not square RGB images")
    images = np.ascontiguousarray(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))
    validate_uint8_images(images, where)
    labels = validate_labels(np.asarray(batch["labels"]), len(images), None, where)
    if labels.min() < 1:
        raise CCFastError(f"{where}: downsampled-ImageNet labels start at 1, found {int(labels.min())}")
    return LabelledImages(images, labels - 1, [str(path)])


def _load_class_folders(root: Path, where: str) -> LabelledImages:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise CCFastError(f"{where}: a folder of training images needs one sub-folder per class (none found)")
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise CCFastError(
            f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its {len(class_dirs)} class folders"
        )
    image_module = require("PIL.Image", "dev", "reading a folder of training images")
    decoded = []
    for f in files:
        with image_module.open(f) as im:
            decoded.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    shapes = {a.shape for a in decoded}
    if len(shapes) > 1:
        raise CCFastError(f"{where}: images of different sizes {sorted(shapes)[:4]}; resize them to one size first")
    return LabelledImages(np.stack(decoded), np.asarray(labels, dtype=np.int64), [str(root)])


def split_holdout(images: LabelledImages, n_holdout: int, seed: int) -> tuple[LabelledImages, LabelledImages | None]:
    """Set aside `n_holdout` images (a seeded random choice) that training never sees (for ℓ0, SPEC §3.6)."""
    if n_holdout == 0:
        return images, None
    if n_holdout >= len(images):
        raise CCFastError(
            f"cannot hold out {n_holdout} of {len(images)} real images for ℓ0 and still train; "
            "lower --ell0-holdout or pass held-out images with --ell0-data"
        )
    perm = np.random.default_rng(seed).permutation(len(images))
    return images.view(np.sort(perm[n_holdout:])), images.copy_of(np.sort(perm[:n_holdout]))


# ---------------------------------------------------------------- batches


class BatchStream:
    """Iteration t's global batch of indices, from an endless run of seeded epoch permutations.

    Batch t covers positions [t·B, (t+1)·B) of the concatenated permutations, so no image is dropped and a set
    smaller than a batch still works. Pure function of (seed, stream, t): resuming needs no sampler state.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int):
        if n < 1:
            raise CCFastError("cannot draw batches from an empty image set")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self._cache: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.stream) * 1_000_033 + epoch)
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def global_batch(self, t: int) -> torch.Tensor:
        start, stop = t * self.batch_size, (t + 1) * self.batch_size
        parts = []
        for epoch in range(start // self.n, (stop - 1) // self.n + 1):
            lo, hi = max(start, epoch * self.n) - epoch * self.n, min(stop, (epoch + 1) * self.n) - epoch * self.n
            parts.append(self._epoch(epoch)[lo:hi])
        return torch.cat(parts)


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that one DDP rank handles (contiguous, equal shares)."""
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def to_device_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on `device` (copied as uint8, converted there)."""
    rows = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    return rows.permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------- augmentation (real images only)


@dataclass
class AugmentDraw:
    """Random choices for a global batch (drawn on the CPU, so every device and rank sees the same numbers)."""

    flip: torch.Tensor     # (B,) bool
    shift: torch.Tensor    # (B, 2) int64 offsets into the padded image, in [0, 2·pad]


def draw_augmentation(batch_size: int, pad: int, generator: torch.Generator) -> AugmentDraw:
    flip = torch.rand(batch_size, generator=generator) < 0.5
    shift = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator)
    return AugmentDraw(flip=flip, shift=shift)


def crop_pad(image_size: int) -> int:
    """Padding for random crops: 4 pixels at 32×32 (the usual CIFAR recipe), scaled with the image."""
    return max(1, image_size // 8)


def augment(x: torch.Tensor, mode: str, draw: AugmentDraw) -> torch.Tensor:
    """Horizontal flips ("flip"), plus random crops of the reflect-padded image ("crop-flip"), per example."""
    if mode == "none":
        return x
    flip = draw.flip.to(x.device)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if mode == "crop-flip":
        B, C, H, W = x.shape
        pad = crop_pad(min(H, W))
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        shift = draw.shift.to(x.device)
        rows = (shift[:, 0:1] + torch.arange(H, device=x.device)).view(B, 1, H, 1)
        cols = (shift[:, 1:2] + torch.arange(W, device=x.device)).view(B, 1, 1, W)
        batch = torch.arange(B, device=x.device).view(B, 1, 1, 1)
        chan = torch.arange(C, device=x.device).view(1, C, 1, 1)
        x = padded[batch, chan, rows, cols]
    return x.contiguous()
