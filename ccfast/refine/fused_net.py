"""The triton engine's `fused_net=1` network: the bottleneck ResNet's forward (ReLU masks and the pool's window
offsets saved, no activation) and input gradient without autograd, built from `ccfast.kernels.bottleneck`'s
fused blocks (issue 12). Checked through Triton's interpreter on CPU only; not yet measured on a GPU.

The composition is `ccfast.fused_resnet`'s (`logits_and_saved`, `input_grad`: normalisation, stem and max-pool
by cuDNN/torch, avgpool and fc in fp32); here it runs with `FUSED_OPS`, the Triton/cuDNN twins of its reference
per-block ops. Imports triton (through the kernels): the engine imports this module only when fused_net=1.
"""

from __future__ import annotations

import torch

from ..fused_resnet import FusedResNetSaved, FusedResNetWeights, NetOps, input_grad, logits_and_saved
from ..kernels.bottleneck import bias_relu_mask, bottleneck_dgrad, bottleneck_fwd, relu_mask_gate

FUSED_OPS = NetOps(bottleneck_fwd, bottleneck_dgrad, bias_relu_mask, relu_mask_gate)


def fused_logits_and_saved(weights: FusedResNetWeights, x: torch.Tensor) -> tuple[torch.Tensor, FusedResNetSaved]:
    """`ccfast.fused_resnet.logits_and_saved` with the fused blocks; weights from `FusedResNetWeights.cast`."""
    return logits_and_saved(weights, x, FUSED_OPS)


def fused_input_grad(weights: FusedResNetWeights, saved: FusedResNetSaved, dlogits: torch.Tensor) -> torch.Tensor:
    """`ccfast.fused_resnet.input_grad` with the fused blocks: ∂L/∂x (B, 3, H, W) fp32."""
    return input_grad(weights, saved, dlogits, FUSED_OPS)
