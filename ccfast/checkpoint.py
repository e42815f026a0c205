"""The inference checkpoint: the contract between training, conversion, export and every engine.

One `torch.save` file (loaded with `weights_only=True`) holding a plain dict:

    format          "ccfast-inference"        format_version  1
    arch            name in `ccfast.models.ARCHS`          arch_kwargs   dict
    num_classes     int                                    image_size    [H, W] the model was trained at
    mean, std       normalisation applied inside the model (per channel)
    ell0            ℓ0 = mean ℓ_fake over held-out real images (SPEC §3.6), or None if never estimated
    realness        the realness reading ℓ0 was estimated under ("logit" or "logsumexp")
    state_dict      backbone parameters and buffers
    ccfast_version  str                                    meta          free-form provenance (JSON-able)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CCFastError
from .io_utils import atomic_path
from .models import ARCHS, JointModel, build_model
from .validation import torch_file

FORMAT = "ccfast-inference"
FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    arch: str
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ell0: float | None = None
    realness: str = "logit"
    arch_kwargs: dict = field(default_factory=dict)
    ccfast_version: str = ""
    meta: dict = field(default_factory=dict)
    path: str = ""


def _version() -> str:
    from . import __version__

    return __version__


def save_checkpoint(path: str | os.PathLike, model: JointModel, info: CheckpointInfo) -> None:
    """Write an inference checkpoint atomically."""
    if info.arch not in ARCHS:
        raise CCFastError(f"unknown architecture {info.arch!r}")
    _check_info_numbers(info, path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a checkpoint of NaN weights would load fine and refine nothing
        raise CCFastError(f"{path}: not written: non-finite (NaN/inf) weights in {', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}; check the source weights")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": info.arch,
        "arch_kwargs": dict(info.arch_kwargs),
        "num_classes": int(info.num_classes),
        "image_size": [int(s) for s in info.image_size],
        "mean": [float(m) for m in info.mean],
        "std": [float(s) for s in info.std],
        "ell0": None if info.ell0 is None else float(info.ell0),
        "realness": info.realness,
        "state_dict": state,
        "ccfast_version": _version(),
        "meta": dict(info.meta),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, CheckpointInfo]:
    """Load and validate the raw payload; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CCFastError(
            f"{path}: no such checkpoint. Make one with `python -m ccfast.train` or convert classifier "
            "weights with `python -m ccfast.convert`"
        )
    torch_file(path, "the model.pt written by `python -m ccfast.train` or the checkpoint written by "
                     "`python -m ccfast.convert`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CCFastError(f"{path}: unreadable or truncated checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CCFastError(
            f"{path}: not a ccfast inference checkpoint (no format={FORMAT!r}); third-party weights must be "
            "converted first with `python -m ccfast.convert --arch ARCH --weights FILE --out CKPT`"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CCFastError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this ccfast reads ({FORMAT_VERSION})"
        )
    for key in ("arch", "num_classes", "image_size", "mean", "std", "state_dict"):
        if key not in payload:
            raise CCFastError(f"{path}: checkpoint lacks the field {key!r}")
    if payload["arch"] not in ARCHS:
        raise CCFastError(f"{path}: unknown architecture {payload['arch']!r}; available: {', '.join(sorted(ARCHS))}")
    info = CheckpointInfo(
        arch=payload["arch"],
        num_classes=int(payload["num_classes"]),
        image_size=tuple(payload["image_size"]),
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        ell0=payload.get("ell0"),
        realness=payload.get("realness", "logit"),
        arch_kwargs=dict(payload.get("arch_kwargs", {})),
        ccfast_version=payload.get("ccfast_version", ""),
        meta=dict(payload.get("meta", {})),
        path=str(path),
    )
    _check_info_numbers(info, path)
    return payload, info


def _check_info_numbers(info: CheckpointInfo, path) -> None:
    """A checkpoint whose normaliser or ℓ0 is not finite (or std not > 0) makes every realness NaN: refuse it."""
    values = [*info.mean, *info.std] + ([] if info.ell0 is None else [info.ell0])
    if (len(info.mean) != 3 or len(info.std) != 3 or not all(math.isfinite(float(v)) for v in values)
            or min(info.std) <= 0 or info.num_classes < 1 or min(info.image_size) < 1):
        raise CCFastError(
            f"{path}: impossible numbers in the checkpoint (mean {info.mean}, std {info.std}, ℓ0 {info.ell0}, "
            f"{info.num_classes} classes, image size {info.image_size}); rewrite it with `python -m ccfast.convert`")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[JointModel, CheckpointInfo]:
    """Build the frozen `JointModel` (eval mode, no parameter gradients) and its info."""
    payload, info = read_checkpoint(path)
    try:
        model = build_model(info.arch, info.num_classes, info.mean, info.std, **info.arch_kwargs)
        model.backbone.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, CCFastError) as exc:
        raise CCFastError(
            f"{path}: state dict does not match architecture {info.arch!r} with {info.num_classes} classes: {exc}"
        ) from exc
    model.eval().requires_grad_(False)
    return model.to(device), info


@torch.no_grad()
def estimate_ell0(
    model: JointModel, images: torch.Tensor, labels: torch.Tensor, realness: str = "logit", batch_size: int = 256
) -> float:
    """ℓ0 = mean over real images of ℓ_fake(x, c) (SPEC §3.6); `images` float NCHW in [0, 1]."""
    from .objectives import loss_fake_ref, realness_score_ref

    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        c = labels[i:i + batch_size].to(device)
        s = realness_score_ref(model(x).float(), c, realness)
        total += float(loss_fake_ref(s).double().sum())
        n += len(x)
    if n == 0:
        raise CCFastError("cannot estimate ℓ0 from an empty set of real images")
    return total / n
