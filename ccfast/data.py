"""Reading and writing image sample files, and the conversions at the file boundary.

Formats (SPEC §5 and shared/data/README.md):
- consistency-models samples: `.npz` with `arr_0` uint8 (N, H, W, 3) NHWC and `arr_1` int64 labels (N,);
- image sets: `.npz` with `images` uint8 NHWC and `labels` (N,).
Inside ccfast images are float in [0, 1], NCHW. Quantisation back to uint8 rounds to nearest
(`round(x * 255)`, SPEC §4), so an untouched uint8 input survives the float round trip bit for bit.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CCFastError
from .io_utils import atomic_path

IMAGE_KEYS = ("arr_0", "images")
LABEL_KEYS = {"arr_0": "arr_1", "images": "labels"}


@dataclass
class SampleSet:
    """Images as stored (uint8 NHWC) and their labels (int64, or None when the file has none)."""

    images: np.ndarray
    labels: np.ndarray | None
    layout: str  # "arr" (consistency-models) or "images"
    extras: dict

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_samples(path: str | os.PathLike, require_labels: bool = False, num_classes: int | None = None,
                 no_labels_hint: str = "this command needs one label per image") -> SampleSet:
    """Read a sample file in either layout and validate it; every problem names the file. `no_labels_hint`
    ends the error for a file without labels when `require_labels` (what the calling command can do instead)."""
    path = Path(path)
    if not path.exists():
        raise CCFastError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CCFastError(f"{path}: not a readable .npz file ({exc})") from exc
    with npz:
        keys = set(npz.files)
        image_key = next((k for k in IMAGE_KEYS if k in keys), None)
        if image_key is None:
            raise CCFastError(
                f"{path}: no image array; expected 'arr_0' (consistency-models samples) or 'images', found "
                f"{sorted(keys)}"
            )
        try:
            images = npz[image_key]
            label_key = LABEL_KEYS[image_key]
            labels = npz[label_key] if label_key in keys else None
            extras = {k: npz[k] for k in keys if k not in (image_key, label_key)}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise CCFastError(f"{path}: truncated or corrupt array data ({exc})") from exc
    validate_uint8_images(images, str(path))
    if labels is None:
        if require_labels:
            raise CCFastError(
                f"{path}: no labels ('{LABEL_KEYS[image_key]}'); {no_labels_hint}"
            )
    else:
        labels = validate_labels(labels, len(images), num_classes, str(path))
    return SampleSet(images=images, labels=labels, layout="arr" if image_key == "arr_0" else "images", extras=extras)


def validate_uint8_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8:
        raise CCFastError(f"{where}: images must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise CCFastError(f"{where}: images must be (N, H, W, 3) NHWC RGB, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise CCFastError(f"{where}: the file holds no images")


def validate_labels(labels, n: int, num_classes: int | None, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise CCFastError(f"{where}: labels must have shape ({n},), got {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise CCFastError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n and labels.min() < 0:
        raise CCFastError(f"{where}: negative label {int(labels.min())}")
    if num_classes is not None and n and labels.max() >= num_classes:
        raise CCFastError(
            f"{where}: label {int(labels.max())} out of range for a model with {num_classes} classes"
        )
    return labels


def save_samples(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None, layout: str = "arr", **extras
) -> None:
    """Write a sample file atomically (it appears only when complete)."""
    validate_uint8_images(images, str(path))
    arrays = {"arr_0": images} if layout == "arr" else {"images": images}
    if labels is not None:
        arrays["arr_1" if layout == "arr" else "labels"] = np.asarray(labels, dtype=np.int64)
    arrays.update(extras)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def uint8_to_float(images) -> "torch.Tensor":  # noqa: F821
    """uint8 NHWC (numpy or tensor) -> float32 NCHW in [0, 1]."""
    import torch

    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise CCFastError(f"expected uint8 images, got {t.dtype}")
    return t.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()


def float_to_uint8(x) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC numpy, rounding to nearest (SPEC §4)."""
    import torch

    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    q = torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return q.permute(0, 2, 3, 1).contiguous().numpy()


def validate_float_images(x, where: str = "images") -> None:
    """Float NCHW images in [0, 1] with 3 channels and no NaN/inf."""
    import torch

    if not torch.is_floating_point(x):
        raise CCFastError(f"{where}: expected float images in [0, 1], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise CCFastError(f"{where}: expected (N, 3, H, W) images, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise CCFastError(f"{where}: images contain NaN or inf")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise CCFastError(
            f"{where}: float images must lie in [0, 1] (got min {float(x.min()):.4g}, max {float(x.max()):.4g}); "
            "ccfast normalises inside the model"
        )
