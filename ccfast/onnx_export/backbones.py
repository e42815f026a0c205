"""Walk each supported backbone of `ccfast.models` into a `layers.Sequential` (forward + VJP emitters).

The walk follows each architecture's `forward` as written in models.py. Afterwards every leaf module of
the backbone must have been visited: a layer the walk does not know (a swapped activation, an extra
dropout) is an error naming it, never a silently wrong gradient.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import CCFastError
from ..models import Bottleneck, CifarBasicBlock, CifarResNet, ImageNetResNet, LambdaShortcut, TinyNet
from .layers import (
    ConvBN,
    GlobalAvgPoolFlatten,
    Identity,
    Layer,
    Linear,
    MaxPool,
    ReLU,
    Residual,
    Sequential,
    SubsamplePadShortcut,
)

SUPPORTED = {TinyNet: "tiny", CifarResNet: "cifar_resnet20..110", ImageNetResNet: "resnet50, wide_resnet50_2"}


class _Walk:
    def __init__(self, maxpool_scatter: str, dgrad: str):
        self.visited: set[int] = set()
        self.maxpool_scatter = maxpool_scatter
        self.dgrad = dgrad

    def mark(self, *modules):
        for m in modules:
            if m is not None:
                self.visited.add(id(m))

    def expect(self, module, kind, where: str):
        if not isinstance(module, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise CCFastError(
                f"cannot export layer {where} of type {type(module).__name__}: the exporter expects {names} "
                "there (it writes forward and gradient only for the layers of ccfast's backbones)"
            )
        self.mark(module)
        return module

    def conv_bn(self, conv, bn, where: str) -> ConvBN:
        self.expect(conv, nn.Conv2d, f"{where}.conv")
        if bn is not None:
            self.expect(bn, nn.BatchNorm2d, f"{where}.bn")
        try:
            return ConvBN(conv, bn, where, self.dgrad)
        except (TypeError, ValueError) as exc:
            raise CCFastError(f"cannot export {where}: {exc}") from exc

    def relu(self, module, where: str) -> ReLU:
        if module is not None:
            self.expect(module, nn.ReLU, where)
        return ReLU(where)

    def maxpool(self, module, where: str) -> MaxPool:
        self.expect(module, nn.MaxPool2d, where)
        try:
            return MaxPool(module, where, self.maxpool_scatter)
        except ValueError as exc:
            raise CCFastError(f"cannot export {where}: {exc}") from exc

    def head(self, pool, fc, where: str) -> list[Layer]:
        if pool is not None:
            self.expect(pool, nn.AdaptiveAvgPool2d, f"{where}.avgpool")
            if pool.output_size not in (1, (1, 1)):
                raise CCFastError(f"cannot export {where}.avgpool: output size {pool.output_size}, expected 1")
        self.expect(fc, nn.Linear, f"{where}.fc")
        return [GlobalAvgPoolFlatten(f"{where}.avgpool"), Linear(fc, f"{where}.fc")]


def _tiny(net: TinyNet, w: _Walk) -> list[Layer]:
    return [
        w.conv_bn(net.conv1, net.bn1, "conv1"), ReLU("relu1"), w.maxpool(net.pool, "pool"),
        Residual(w.conv_bn(net.conv2, net.bn2, "conv2"), Identity(), "res2"),
        w.conv_bn(net.conv3, None, "conv3"), ReLU("relu3"),
        *w.head(None, net.fc, "head"),
    ]


def _cifar(net: CifarResNet, w: _Walk) -> list[Layer]:
    layers: list[Layer] = [w.conv_bn(net.conv1, net.bn1, "conv1"), ReLU("relu1")]
    for stage in ("layer1", "layer2", "layer3"):
        seq = w.expect(getattr(net, stage), nn.Sequential, stage)
        for i, block in enumerate(seq):
            where = f"{stage}.{i}"
            w.expect(block, CifarBasicBlock, where)
            branch = Sequential([w.conv_bn(block.conv1, block.bn1, f"{where}.conv1"), ReLU(f"{where}.relu1"),
                                 w.conv_bn(block.conv2, block.bn2, f"{where}.conv2")])
            if isinstance(block.shortcut, LambdaShortcut):
                w.mark(block.shortcut)
                shortcut: Layer = SubsamplePadShortcut(block.shortcut.pad, f"{where}.shortcut")
            else:
                w.expect(block.shortcut, nn.Identity, f"{where}.shortcut")
                shortcut = Identity()
            layers.append(Residual(branch, shortcut, where))
    return layers + w.head(None, net.linear, "head")


def _imagenet(net: ImageNetResNet, w: _Walk) -> list[Layer]:
    layers: list[Layer] = [
        w.conv_bn(net.conv1, net.bn1, "conv1"),
        w.relu(net.relu, "relu"),
        w.maxpool(net.maxpool, "maxpool"),
    ]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        seq = w.expect(getattr(net, stage), nn.Sequential, stage)
        for i, block in enumerate(seq):
            where = f"{stage}.{i}"
            w.expect(block, Bottleneck, where)
            w.relu(block.relu, f"{where}.relu")
            branch = Sequential([
                w.conv_bn(block.conv1, block.bn1, f"{where}.conv1"), ReLU(f"{where}.relu1"),
                w.conv_bn(block.conv2, block.bn2, f"{where}.conv2"), ReLU(f"{where}.relu2"),
                w.conv_bn(block.conv3, block.bn3, f"{where}.conv3"),
            ])
            if block.downsample is None:
                shortcut: Layer = Identity()
            else:
                ds = w.expect(block.downsample, nn.Sequential, f"{where}.downsample")
                if len(ds) != 2:
                    raise CCFastError(
                        f"cannot export {where}.downsample: expected (Conv2d, BatchNorm2d), got {len(ds)} layers"
                    )
                shortcut = w.conv_bn(ds[0], ds[1], f"{where}.downsample")
            layers.append(Residual(branch, shortcut, where))
    return layers + w.head(net.avgpool, net.fc, "head")


def backbone_layers(backbone: nn.Module, maxpool_scatter: str = "conv", dgrad: str = "conv") -> Sequential:
    """The backbone as forward+VJP emitters; a `CCFastError` names any layer that cannot be exported.
    `maxpool_scatter`: how max-pool gradients are scattered back (`layers.MaxPool`); `dgrad`: how convolution
    gradients are written (`layers.ConvBN`)."""
    walk = _Walk(maxpool_scatter, dgrad)
    walk.mark(backbone)
    for cls, fn in ((TinyNet, _tiny), (CifarResNet, _cifar), (ImageNetResNet, _imagenet)):
        if type(backbone) is cls:
            layers = fn(backbone, walk)
            break
    else:
        raise CCFastError(
            f"cannot export backbone {type(backbone).__name__}: the step-graph exporter supports "
            + ", ".join(f"{c.__name__} ({a})" for c, a in SUPPORTED.items())
        )
    for name, module in backbone.named_modules():
        if id(module) not in walk.visited and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            raise CCFastError(f"cannot export layer {name!r} of type {type(module).__name__}: the exporter does not "
                              f"know where it sits in {type(backbone).__name__}'s forward")
    return Sequential(layers)
