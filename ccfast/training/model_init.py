"""Build the joint model a run starts from (SPEC §3.5): random, a ccfast inference checkpoint, or any third-party
file `ccfast.models.load_backbone_weights` reads (torchvision/timm, akamaster CIFAR ResNets, MadryLab
`robustness`). The classification head is freshly initialised when the class count differs or when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..checkpoint import FORMAT, read_checkpoint
from ..errors import CCFastError
from ..models import (
    HEAD_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JointModel,
    build_model,
    load_backbone_weights,
    load_weights_file,
)


@dataclass
class InitialModel:
    model: JointModel
    arch_kwargs: dict = field(default_factory=dict)
    description: str = ""  # one line for the log: where the weights came from, what happened to the head


def _head_keys(model: JointModel, arch: str) -> list[str]:
    prefix = HEAD_PREFIX.get(arch)
    if prefix is None:
        raise CCFastError(f"architecture {arch!r} has no known classification head to re-initialise")
    return [k for k in model.backbone.state_dict() if k.startswith(prefix)]


def build_initial_model(arch: str, num_classes: int, init: str | None, fresh_head: bool,
                        mean=None, std=None) -> InitialModel:
    """The model before the first update, normalisation set (explicit > the init file's > ImageNet's)."""
    if init is None:
        model = build_model(arch, num_classes)
        _set_norm(model, mean or IMAGENET_MEAN, std or IMAGENET_STD)
        return InitialModel(model, {}, f"{arch}: random initialisation, {num_classes} classes")

    raw = load_weights_file(init)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        payload, info = read_checkpoint(init)
        if info.arch != arch:
            raise CCFastError(f"--init {init} is a {info.arch!r} checkpoint but --arch is {arch!r}")
        model = build_model(arch, num_classes, **info.arch_kwargs)
        state = dict(payload["state_dict"])
        head = _head_keys(model, arch)
        reason = ""
        if fresh_head:
            reason = "asked (--fresh-head)"
        elif info.num_classes != num_classes:
            reason = f"class count {num_classes} differs from the checkpoint's {info.num_classes}"
        if reason:
            state = {k: v for k, v in state.items() if k not in head}
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(head) or (missing and not reason):
            raise CCFastError(
                f"--init {init}: state dict does not fit {arch!r} (missing {missing[:3]}, unexpected {unexpected[:3]})")
        _set_norm(model, mean or info.mean, std or info.std)
        head_text = f"fresh head ({reason})" if reason else "head loaded"
        return InitialModel(
            model,
            dict(info.arch_kwargs),
            f"{arch} from ccfast checkpoint {init} (trained ℓ0 {info.ell0}); {head_text}; {num_classes} classes",
        )

    model = build_model(arch, num_classes)
    head = _head_keys(model, arch)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if k in head}
    norm = load_backbone_weights(model.backbone, init, fresh_head=True if fresh_head else None, arch=arch)
    after = model.backbone.state_dict()
    kept_fresh = all(torch.equal(before[k], after[k]) for k in head)
    _set_norm(model, mean or norm.get("mean", IMAGENET_MEAN), std or norm.get("std", IMAGENET_STD))
    head_text = ("fresh head (asked, --fresh-head)" if fresh_head else
                 "fresh head (the file's class count differs)") if kept_fresh else "head loaded"
    return InitialModel(model, {}, f"{arch} from third-party weights {init}; {head_text}; {num_classes} classes")


def _set_norm(model: JointModel, mean, std) -> None:
    with torch.no_grad():
        model.mean.copy_(torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        model.std.copy_(torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))
