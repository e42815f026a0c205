"""A convolution with its pointwise epilogue, forward and input gradient, in plain PyTorch (fp32 math): the `_ref`
of `kernels/cudnn_conv.py` (issue 12) and the per-convolution steps of a ResNet bottleneck written so (the
cuDNN block of `ccfast.refine.cudnn_net`).

    conv_bias_act_ref    y  = relu(conv2d(x, W, stride, padding) + b (+ r))
    conv_dgrad_gate_ref  dx = (conv2d_input(W, dy) (+ a)) ⊙ [gate > 0]

gate is a ReLU's output a = relu(pre): a > 0 ⇔ pre > 0 (both false at 0, where ReLU's gradient is taken as 0,
as torch's threshold_backward does), so the activation the forward keeps is the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bottleneck import BottleneckWeights
from .fused_resnet import NetOps


def bias_act_epilogue(y: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None, relu: bool,
                      dtype: torch.dtype) -> torch.Tensor:
    """relu(y (+ bias) (+ residual)) in fp32 math, in `dtype`, channels_last: the forward epilogue, of the
    reference and of cudnn_conv's "epilogue in torch" rung alike."""
    q = y.float()
    if bias is not None:
        q = q + bias.float().reshape(1, -1, 1, 1)
    if residual is not None:
        q = q + residual.float()
    if relu:
        q = torch.relu(q)
    return q.to(dtype).contiguous(memory_format=torch.channels_last)


def dgrad_gate_epilogue(dx: torch.Tensor, add: torch.Tensor | None, gate: torch.Tensor | None,
                        dtype: torch.dtype) -> torch.Tensor:
    """(dx (+ add)) ⊙ [gate > 0] in fp32 math, in `dtype`, channels_last: the input gradient's epilogue, of the
    reference and of cudnn_conv's "epilogue in torch" rung alike."""
    q = dx.float() if add is None else dx.float() + add.float()
    if gate is not None:
        q = torch.where(gate > 0, q, 0.0)
    return q.to(dtype).contiguous(memory_format=torch.channels_last)


def conv_bias_act_ref(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0,
                      residual: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """relu(conv2d(x, w) (+ bias) (+ residual)) in fp32 math (relu=False: no ReLU), in x's dtype, channels_last."""
    y = F.conv2d(x.float(), w.float(), stride=stride, padding=padding)
    return bias_act_epilogue(y, bias, residual, relu, x.dtype)


def conv_dgrad_gate_ref(dy: torch.Tensor, w: torch.Tensor, in_hw: tuple[int, int], stride: int = 1,
                        padding: int = 0, gate: torch.Tensor | None = None,
                        add: torch.Tensor | None = None) -> torch.Tensor:
    """(conv2d_input(w, dy) (+ add)) ⊙ [gate > 0] in fp32 math, returned in dy's dtype, channels_last."""
    B, C = dy.shape[0], w.shape[1]
    dx = torch.nn.grad.conv2d_input((B, C, *in_hw), w.float(), dy.float(), stride=stride, padding=padding)
    return dgrad_gate_epilogue(dx, add, gate, dy.dtype)


# ---------------------------------------------------------------- a bottleneck block from these two ops


@dataclass
class ActivationSaved:
    """What the block's forward keeps for its input gradient: the ReLU outputs a1, a2 (their masks gate the
    gradient), the block's output y as `mask_out` (the consumer's gate: the next block's in_mask, or the last
    block's dy), and the input's (H, W)."""

    a1: torch.Tensor
    a2: torch.Tensor
    mask_out: torch.Tensor
    in_hw: tuple[int, int]


def activation_saving_ops(conv_fwd: Callable = conv_bias_act_ref, conv_dgrad: Callable = conv_dgrad_gate_ref
                          ) -> NetOps:
    """`ccfast.fused_resnet.NetOps` for a bottleneck ResNet built from a conv-with-epilogue pair (the `_ref`s
    here, or `kernels.cudnn_conv`'s): each convolution one call, ReLU outputs saved as the masks. With the
    conventions of `ccfast.bottleneck` (dz = ∂L/∂pre3, dx gated by in_mask, the producer of x's activation):

        a1 = relu(conv1(x) + b1)          a2 = relu(conv2(a1) + b2)          (3×3, stride s, padding 1)
        y  = relu(conv3(a2) + b3 (+ bd) + idt),   idt = x  or  convd(x) (no bias: bd is in conv3's)
        dpre2 = conv3ᵀ(dz) ⊙ [a2 > 0]     dpre1 = conv2ᵀ(dpre2) ⊙ [a1 > 0]
        dx    = (conv1ᵀ(dpre1) + (dz  or  convdᵀ(dz))) ⊙ [in_mask > 0]

    The stem's bias + ReLU and the gate of the last block's gradient are plain torch (one pointwise each)."""

    def block_fwd(x: torch.Tensor, p: BottleneckWeights) -> tuple[torch.Tensor, ActivationSaved]:
        a1 = conv_fwd(x, p.w1, p.b1)
        a2 = conv_fwd(a1, p.w2, p.b2, stride=p.stride, padding=1)
        idt = x if p.wd is None else conv_fwd(x, p.wd, None, stride=p.stride, relu=False)
        y = conv_fwd(a2, p.w3, p.bias_out, residual=idt)
        return y, ActivationSaved(a1, a2, y, tuple(x.shape[2:]))

    def block_dgrad(dz: torch.Tensor, saved: ActivationSaved, p: BottleneckWeights,
                    in_mask: torch.Tensor | None = None) -> torch.Tensor:
        dpre2 = conv_dgrad(dz, p.w3, tuple(saved.a2.shape[2:]), gate=saved.a2)
        dpre1 = conv_dgrad(dpre2, p.w2, saved.in_hw, stride=p.stride, padding=1, gate=saved.a1)
        r = dz if p.wd is None else conv_dgrad(dz, p.wd, saved.in_hw, stride=p.stride)
        return conv_dgrad(dpre1, p.w1, saved.in_hw, gate=in_mask, add=r)

    def bias_relu(pre: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = bias_act_epilogue(pre, bias, None, True, pre.dtype)
        return a, a

    def gate(g: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.where(act > 0, g, 0.0).to(g.dtype)

    return NetOps(block_fwd, block_dgrad, bias_relu, gate)
