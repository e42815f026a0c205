"""One ResNet bottleneck block (BN folded, channels_last), forward and input gradient, with every pointwise
step fused into a GEMM epilogue or one small kernel: the fused twin of `ccfast.bottleneck` (issue 12).

Used by the triton engine only with fused_net=1 (ccfast/refine/fused_net.py composes the whole ResNet), and not
yet measured on a GPU (benchmarks/bench_bottleneck.py does that); only checked through Triton's interpreter on CPU
(tests/test_kernel_bottleneck.py, tests/test_fused_resnet.py).

What is fused and why. The compiled recipe runs each convolution as a cuDNN call followed by Inductor's
pointwise kernels (bias, ReLU, residual add; in the backward `threshold_backward` and the residual sum),
and saves every ReLU's bf16 output for the backward. Here (notation and gradient convention of
`ccfast.bottleneck`: the dgrad takes dz = ∂L/∂pre3, already gated by the block's output mask, and gates
its dx by `in_mask`, the ReLU mask of whatever produced x):

    forward  a1, m1 = conv1x1_relu(x, W1, b1)                      1×1: bias, ReLU, mask in the epilogue
             pre2   = conv2d(a1, W2, stride s, pad 1)              3×3: cuDNN, storage dtype, no bias
             a2, m2 = bias_relu_mask(pre2, b2)                     ONE kernel (below): bias + ReLU + mask
             idt    = x  or  conv2d(x, Wd, stride s)               downsample: cuDNN, its bias moved to b3
             y,  m3 = conv1x1_relu(a2, W3, b3 (+ bd), idt)         1×1: bias, residual, ReLU, mask
    dgrad    dpre2  = conv1x1_dgrad(dz, W3, out_mask=m2)           m2 in the epilogue (no extra pass)
             da1    = conv2d_input(W2, dpre2)                      3×3: cuDNN dgrad
             dpre1  = relu_mask_gate(da1, m1)                      ONE kernel (below): da1 ⊙ m1
             r      = dz  or  conv1x1_dgrad(dz, Wd) (stride 1)  or  conv2d_input(Wd, dz) (stride 2: cuDNN,
                      which writes the zeros between the strided rows in the same pass)
             dx     = conv1x1_dgrad(dpre1, W1, residual=r, out_mask=in_mask)   residual + gate in the epilogue

m1 cannot go into a 1×1 epilogue: it gates the 3×3's input gradient, which cuDNN computes. Either a pass of
its own (`relu_mask_gate`, the default: reads da1 and 1 bit per element, writes dpre1) or conv1's dgrad
prologue (`mask1="prologue"`: no extra pass, but on the H200 that prologue ran 2-30× slower than cuDNN,
kernels/conv1x1.py); the benchmark times both. Saved for the backward: m1, m2 (1 bit per element) and the
input's (H, W); no activation (the input gradient needs weights and masks only). m3 is the consumer's.

Kernels. Both are row-tiled pointwise kernels over (M, C) rows of a channels_last activation: program
(pid_m, pid_c) owns BLOCK_M rows × BLOCK_C channels, BLOCK_C a multiple of 32 so a tile covers whole mask
words (layout of `ccfast.conv1x1.pack_relu_mask`: bit i of word j = channel 32j + i). Math in fp32, one
rounding to the storage dtype at the store; the mask bit is taken from the fp32 pre-activation.

    bias_relu_mask   pre (M, C), b (C,)  ->  y = relu(pre + b) (pre's dtype), mask = pack(pre + b > 0)
    relu_mask_gate   g (M, C), mask      ->  g ⊙ unpack(mask) (g's dtype)

Registered as `torch.ops.ccfast.bias_relu_mask` and `torch.ops.ccfast.relu_mask_gate` (opaque to
`torch.compile`, capturable in CUDA graphs); `bottleneck_fwd` / `bottleneck_dgrad` are plain compositions
of registered ops and aten convolutions, so they trace and capture as they are. In fp32 the cuDNN 3×3
follows torch.backends.cudnn.allow_tf32 (the engine's tf32 option); the 1×1 GEMMs are exact fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ccfast.bottleneck import (
    BottleneckSaved,
    BottleneckWeights,
    bottleneck_dgrad_ref,
    bottleneck_fwd_ref,
    fold_bottleneck,
)
from ccfast.conv1x1 import BITS, mask_words
from ccfast.errors import CCFastError

from .conv1x1 import (
    bit_or,
    check_operands,
    conv1x1_dgrad,
    conv1x1_relu,
    fold_rows,
    interpreted,
    to_rows,
    unit_stride_rows,
    unpack_bits,
)

__all__ = [
    "BottleneckSaved",
    "BottleneckWeights",
    "bias_relu_mask",
    "bottleneck_dgrad",
    "bottleneck_dgrad_ref",
    "bottleneck_fwd",
    "bottleneck_fwd_ref",
    "fold_bottleneck",
    "interpreted",
    "relu_mask_gate",
]


@triton.jit
def _bias_relu_mask_kernel(pre_ptr, b_ptr, y_ptr, mask_ptr, M, C, stride_pm, stride_ym, stride_mm,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # y = relu(pre + b), mask = pack(pre + b > 0): the 3×3's epilogue that cuDNN does not run for us.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = offs_m.to(tl.int64)
    valid = (offs_m < M)[:, None] & (offs_c < C)[None, :]
    pre = tl.load(pre_ptr + rows[:, None] * stride_pm + offs_c[None, :], mask=valid, other=0.0).to(tl.float32)
    pre += tl.load(b_ptr + offs_c, mask=offs_c < C, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + offs_c[None, :], tl.maximum(pre, 0.0).to(y_ptr.dtype.element_ty),
             mask=valid)
    bits = tl.where((pre > 0.0) & valid, 1, 0).to(tl.int32) << (tl.arange(0, BLOCK_C) % 32)[None, :]
    words = tl.reduce(tl.reshape(bits, (BLOCK_M, BLOCK_C // 32, 32)), 2, bit_or)  # disjoint bits: or == sum
    offs_w = tl.program_id(1) * (BLOCK_C // 32) + tl.arange(0, BLOCK_C // 32)
    tl.store(mask_ptr + rows[:, None] * stride_mm + offs_w[None, :], words,
             mask=(offs_m < M)[:, None] & (offs_w < tl.cdiv(C, 32))[None, :])


@triton.jit
def _relu_mask_gate_kernel(g_ptr, mask_ptr, out_ptr, M, C, stride_gm, stride_mm, stride_om,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # out = g ⊙ unpack(mask): the ReLU gradient after the 3×3's cuDNN dgrad (dy ⊙ [pre > 0] from 1 bit).
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = offs_m.to(tl.int64)
    valid = (offs_m < M)[:, None] & (offs_c < C)[None, :]
    g = tl.load(g_ptr + rows[:, None] * stride_gm + offs_c[None, :], mask=valid, other=0.0)
    keep = unpack_bits(mask_ptr, rows, stride_mm, offs_c, valid)
    tl.store(out_ptr + rows[:, None] * stride_om + offs_c[None, :], tl.where(keep, g, 0.0).to(out_ptr.dtype.element_ty),
             mask=valid)


def _pointwise_blocks(C: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_C): whole mask words across, ~4096 elements a program (a bandwidth-bound tile size;
    not tuned on a GPU yet)."""
    block_c = min(128, max(BITS, triton.next_power_of_2(C)))
    return max(8, 4096 // block_c), block_c


def _launch(kernel, M, C, *args):
    bm, bc = _pointwise_blocks(C)
    kernel[(triton.cdiv(M, bm), triton.cdiv(C, bc))](*args, BLOCK_M=bm, BLOCK_C=bc, num_warps=4)


@torch.library.custom_op("ccfast::bias_relu_mask", mutates_args=())
def _bias_relu_mask_op(pre: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pre.ndim != 2 or bias.shape != (pre.shape[1],):
        raise CCFastError(f"bias_relu_mask: pre (M, C) and bias (C,) expected, got {tuple(pre.shape)}, "
                          f"{tuple(bias.shape)}")
    check_operands("bias_relu_mask", {"pre": pre, "bias": bias}, pre.dtype)
    pre = unit_stride_rows(pre)
    M, C = pre.shape
    y = torch.empty_like(pre, memory_format=torch.contiguous_format)
    mask = torch.empty((M, mask_words(C)), dtype=torch.int32, device=pre.device)
    if M and C:
        _launch(_bias_relu_mask_kernel, M, C, pre, bias, y, mask, M, C, pre.stride(0), y.stride(0), mask.stride(0))
    return y, mask


@_bias_relu_mask_op.register_fake
def _(pre, bias):
    return pre.new_empty(pre.shape), pre.new_empty((pre.shape[0], mask_words(pre.shape[1])), dtype=torch.int32)


@torch.library.custom_op("ccfast::relu_mask_gate", mutates_args=())
def _relu_mask_gate_op(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if g.ndim != 2 or mask.shape != (g.shape[0], mask_words(g.shape[1])) or mask.dtype != torch.int32:
        raise CCFastError(f"relu_mask_gate: g (M, C) and an int32 mask (M, ⌈C/32⌉) expected, got {tuple(g.shape)}, "
                          f"{mask.dtype} {tuple(mask.shape)}")
    check_operands("relu_mask_gate", {"g": g, "mask": mask}, g.dtype)
    g, mask = unit_stride_rows(g), unit_stride_rows(mask)
    M, C = g.shape
    out = torch.empty_like(g, memory_format=torch.contiguous_format)
    if M and C:
        _launch(_relu_mask_gate_kernel, M, C, g, mask, out, M, C, g.stride(0), mask.stride(0), out.stride(0))
    return out


@_relu_mask_gate_op.register_fake
def _(g, mask):
    return g.new_empty(g.shape)


def bias_relu_mask(pre: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(relu(pre + bias) in pre's dtype, packed mask of pre + bias > 0) for pre (M, C) rows or (B, C, H, W)
    (best channels_last: then no copy; the output is channels_last); bias (C,) any float dtype."""
    rows, bhw = to_rows(pre)
    y, mask = torch.ops.ccfast.bias_relu_mask(rows, bias)
    return fold_rows(y, bhw), mask


def relu_mask_gate(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """g ⊙ unpack(mask) for g (M, C) rows or (B, C, H, W) (output channels_last), mask (M, ⌈C/32⌉) int32."""
    rows, bhw = to_rows(g)
    return fold_rows(torch.ops.ccfast.relu_mask_gate(rows, mask), bhw)


def _check_weights(name: str, x: torch.Tensor, p: BottleneckWeights) -> None:
    for key in ("w1", "w2", "w3", "wd"):
        w = getattr(p, key)
        if w is not None and (w.dtype != x.dtype or w.device != x.device):
            raise CCFastError(f"{name}: weight {key} is {w.dtype} on {w.device}, the activations {x.dtype} on "
                              f"{x.device}; use BottleneckWeights.cast(dtype, device)")


def bottleneck_fwd(x: torch.Tensor, p: BottleneckWeights, *, blocks: tuple[int, int, int] | None = None
                   ) -> tuple[torch.Tensor, BottleneckSaved]:
    """(y, saved) for x (B, Cin, H, W) (best channels_last), p = `BottleneckWeights.cast(x.dtype, x.device)`:
    the fused twin of `ccfast.bottleneck.bottleneck_fwd_ref`. y (B, Cout, Ho, Wo) channels_last in x's dtype.
    `blocks` forces the 1×1 GEMMs' tile (tests)."""
    if x.ndim != 4 or x.shape[1] != p.channels[0]:
        raise CCFastError(f"bottleneck_fwd: x must be (B, {p.channels[0]}, H, W), got {tuple(x.shape)}")
    _check_weights("bottleneck_fwd", x, p)
    a1, m1 = conv1x1_relu(x, p.w1, p.b1, blocks=blocks)
    a2, m2 = bias_relu_mask(F.conv2d(a1, p.w2, None, stride=p.stride, padding=1), p.b2)
    idt = x if p.wd is None else F.conv2d(x, p.wd, None, stride=p.stride)  # bd is in p.bias_out
    y, m3 = conv1x1_relu(a2, p.w3, p.bias_out, idt, blocks=blocks)
    return y, BottleneckSaved(m1, m2, m3, (x.shape[2], x.shape[3]))


def bottleneck_dgrad(dz: torch.Tensor, saved: BottleneckSaved, p: BottleneckWeights,
                     in_mask: torch.Tensor | None = None, *, mask1: str = "gate",
                     blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """dx = ∂L/∂x ⊙ in_mask for dz = ∂L/∂pre3 (B, Cout, Ho, Wo): the fused twin of
    `ccfast.bottleneck.bottleneck_dgrad_ref` (same convention). dx (B, Cin, H, W) channels_last in dz's dtype.
    mask1 "gate" (relu_mask_gate after the 3×3 dgrad) or "prologue" (conv1's dgrad gates while loading)."""
    if mask1 not in ("gate", "prologue"):
        raise CCFastError(f"bottleneck_dgrad: mask1 must be 'gate' or 'prologue', got {mask1!r}")
    cin, width, cout = p.channels
    if dz.ndim != 4 or dz.shape[1] != cout:
        raise CCFastError(f"bottleneck_dgrad: dz must be (B, {cout}, Ho, Wo), got {tuple(dz.shape)}")
    _check_weights("bottleneck_dgrad", dz, p)
    B = dz.shape[0]
    H, W = saved.in_hw
    dpre2 = conv1x1_dgrad(dz, None, p.w3, out_mask=saved.mask2, blocks=blocks)
    da1 = torch.nn.grad.conv2d_input((B, width, H, W), p.w2, dpre2, stride=p.stride, padding=1)
    dpre1, m1 = (relu_mask_gate(da1, saved.mask1), None) if mask1 == "gate" else (da1, saved.mask1)
    if p.wd is None:
        r = dz
    elif p.stride == 1:
        r = conv1x1_dgrad(dz, None, p.wd, blocks=blocks)
    else:
        r = torch.nn.grad.conv2d_input((B, cin, H, W), p.wd, dz, stride=p.stride)
    return conv1x1_dgrad(dpre1, m1, p.w1, r, out_mask=in_mask, blocks=blocks)

