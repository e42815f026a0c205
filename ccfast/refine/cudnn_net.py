"""The triton engine's `fused_net=1 fused_ops=cudnn` network: the bottleneck ResNet's forward and input gradient
without autograd, each convolution one cuDNN graph with its bias, residual and ReLU (forward) or its residual
sum and ReLU gate (input gradient) fused (`kernels/cudnn_conv.py`; issue 12). H200, ResNet-50 64×64 bf16: 0.99×
the compile+graph recipe at B=256, 0.95 ms per step at B=1 (benchmarks/results/bench_refine_h200_4f86a0e_cudnn.md).

The composition is `ccfast.fused_resnet`'s (normalisation, stem and max-pool by cuDNN/torch, avgpool and fc in
fp32) with `ccfast.conv_epilogue.activation_saving_ops` built from the cuDNN ops: the forward keeps ReLU outputs
(bf16) rather than bit masks, since cuDNN's relu_backward gates by its forward tensor. Imports the cuDNN
frontend (on first use of an op): the engine imports this module only when asked for.
"""

from __future__ import annotations

import torch

from ..conv_epilogue import activation_saving_ops
from ..fused_resnet import FusedResNetSaved, FusedResNetWeights, input_grad, logits_and_saved
from ..kernels.cudnn_conv import conv_bias_act, conv_dgrad_gate

CUDNN_OPS = activation_saving_ops(conv_bias_act, conv_dgrad_gate)


def fused_logits_and_saved(weights: FusedResNetWeights, x: torch.Tensor) -> tuple[torch.Tensor, FusedResNetSaved]:
    """`ccfast.fused_resnet.logits_and_saved` with the cuDNN blocks; weights from `FusedResNetWeights.cast`."""
    return logits_and_saved(weights, x, CUDNN_OPS)


def fused_input_grad(weights: FusedResNetWeights, saved: FusedResNetSaved, dlogits: torch.Tensor) -> torch.Tensor:
    """`ccfast.fused_resnet.input_grad` with the cuDNN blocks: ∂L/∂x (B, 3, H, W) fp32."""
    return input_grad(weights, saved, dlogits, CUDNN_OPS)
