"""Backbones, the `JointModel` wrapper (normalisation inside) and weight loaders.

Backbones are written here with the parameter names of their usual sources, so their checkpoints load
without torchvision: ResNet-50 / Wide-ResNet-50-2 (torchvision and MadryLab `robustness` names, fed 64×64
directly as the paper does), the CIFAR ResNet-20/32/44/56/110 with option-A shortcuts (He et al. 2016;
akamaster/pytorch_resnet_cifar10 names), and `tiny`, a small residual net for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CCFastError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class JointModel(nn.Module):
    """f(x): [0, 1] images -> C logits, normalisation inside (SPEC §1).

    One network, two readings of its logits: classifier (softmax) and discriminator (realness score).
    """

    def __init__(self, backbone: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


# ---------------------------------------------------------------- CIFAR ResNets (option-A shortcuts)


class LambdaShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad channels (no parameters), as in He et al. 2016 §4.2."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = LambdaShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# ---------------------------------------------------------------- torchvision-style ResNet-50 family


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, width_per_group: int = 64, downsample=None):
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """torchvision's ResNet with Bottleneck blocks; same parameter names, so its state dicts load.

    `stage_planes` (the four stages' planes; the stem has stage_planes[0] channels) is torchvision's
    (64, 128, 256, 512) unless a test wants the same family at a small width."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, width_per_group: int = 64,
                 stage_planes: tuple[int, int, int, int] = (64, 128, 256, 512)):
        super().__init__()
        self.inplanes = stage_planes[0]
        self.conv1 = nn.Conv2d(3, stage_planes[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip(stage_planes, layers, strict=False)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            blocks = [Bottleneck(self.inplanes, planes, stride, width_per_group, downsample)]
            self.inplanes = planes * 4
            blocks += [Bottleneck(self.inplanes, planes, 1, width_per_group) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stage_planes[-1] * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------- tiny test net


class TinyNet(nn.Module):
    """A small residual net with every layer kind the engines must handle (conv, BN, ReLU, max-pool,
    strided conv, residual add, global average pool, linear). For tests and quick checks only."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, 2, 1, bias=True)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(x + self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---------------------------------------------------------------- registry

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "tiny": lambda num_classes=10, **kw: TinyNet(num_classes, **kw),
    "cifar_resnet20": lambda num_classes=10: CifarResNet(20, num_classes),
    "cifar_resnet32": lambda num_classes=10: CifarResNet(32, num_classes),
    "cifar_resnet44": lambda num_classes=10: CifarResNet(44, num_classes),
    "cifar_resnet56": lambda num_classes=10: CifarResNet(56, num_classes),
    "cifar_resnet110": lambda num_classes=10: CifarResNet(110, num_classes),
    "resnet50": lambda num_classes=1000: ImageNetResNet((3, 4, 6, 3), num_classes),
    "wide_resnet50_2": lambda num_classes=1000: ImageNetResNet((3, 4, 6, 3), num_classes, width_per_group=128),
}

# Head parameter names, for re-initialising the classifier when the class count changes.
HEAD_PREFIX = {"tiny": "fc.", "resnet50": "fc.", "wide_resnet50_2": "fc."} | {
    k: "linear." for k in ARCHS if k.startswith("cifar_")
}


def build_backbone(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in ARCHS:
        raise CCFastError(f"unknown architecture {arch!r}; available: {', '.join(sorted(ARCHS))}")
    try:
        return ARCHS[arch](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise CCFastError(f"architecture {arch!r} does not take the options {kwargs}: {exc}") from exc


def build_model(arch: str, num_classes: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs) -> JointModel:
    return JointModel(build_backbone(arch, num_classes, **kwargs), mean, std)


# ---------------------------------------------------------------- loading third-party weights

_STRIP_PREFIXES = ("module.model.", "model.", "module.", "backbone.")


def load_weights_file(path: str | os.PathLike):
    """`torch.load` onto the CPU with weights_only=True; a missing or unreadable file is a CCFastError."""
    path = Path(path)
    if not path.exists():
        raise CCFastError(f"{path}: no such weights file")
    from .validation import torch_file

    torch_file(path, "a weights file saved by PyTorch (.pt, .pth, .th)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/alien files
        raise CCFastError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({exc})") from exc


def extract_state_dict(obj, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Find the backbone state dict in torchvision/timm files, akamaster `.th` files and MadryLab
    `robustness` checkpoints; return it with prefixes stripped, plus any normaliser found.

    robustness checkpoints hold `model` (or `state_dict`) with keys under `module.model.` (the classifier),
    `module.attacker.model.` (a copy for the attacker, dropped) and `module.normalizer.new_mean/new_std`.
    """
    sd = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CCFastError(
            f"{where}: no state dict of tensors found (top-level keys: "
            f"{list(obj)[:8] if isinstance(obj, dict) else type(obj)})"
        )
    norm = {}
    out = {}
    for k, v in sd.items():
        if "attacker." in k:
            continue
        if "normalizer.new_mean" in k:
            norm["mean"] = tuple(float(t) for t in v.flatten())
            continue
        if "normalizer.new_std" in k:
            norm["std"] = tuple(float(t) for t in v.flatten())
            continue
        for p in _STRIP_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = v
    return out, norm


def load_backbone_weights(
    backbone: nn.Module, path: str | os.PathLike, fresh_head: bool | None = None, arch: str | None = None
) -> dict:
    """Load third-party weights into `backbone`. With `fresh_head=None`, the head is re-initialised
    only when its shape differs (a different class count); `True` always re-initialises it.
    Returns the normaliser found in the file (may be empty)."""
    sd, norm = extract_state_dict(load_weights_file(path), str(path))
    own = backbone.state_dict()
    head = HEAD_PREFIX.get(arch or "", None)
    if head is not None:
        mismatched = any(k.startswith(head) and k in own and own[k].shape != v.shape for k, v in sd.items())
        if fresh_head or (fresh_head is None and mismatched):
            sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own_keys = {k for k in own if not k.endswith("num_batches_tracked")}
    missing = own_keys - set(sd)
    if head is not None:
        missing_nonhead = {k for k in missing if not k.startswith(head)}
    else:
        missing_nonhead = missing
    unexpected = set(sd) - set(own)
    if missing_nonhead or unexpected:
        raise CCFastError(
            f"{path}: weights do not match architecture {arch or type(backbone).__name__}: "
            f"{len(missing_nonhead)} missing (e.g. {sorted(missing_nonhead)[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})"
        )
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise CCFastError(
                f"{path}: parameter {k} has shape {tuple(v.shape)}, architecture expects {tuple(own[k].shape)}"
            )
    backbone.load_state_dict(sd, strict=False)
    return norm
