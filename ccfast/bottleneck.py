"""One ResNet bottleneck block, BatchNorm folded, forward with bit-packed ReLU masks and its input gradient:
the `_ref` of `kernels/bottleneck.py` (issue 12; composed into the whole ResNet by `ccfast.fused_resnet`).

The block (torchvision's v1.5 Bottleneck, `ccfast.models.Bottleneck`, eval mode, BN folded into each
convolution's weight and bias by `ccfast.bn_fold`), x (B, Cin, H, W), width w, stride s on the 3×3:

    pre1 = conv1(x) + b1          1×1, Cin -> w         a1 = relu(pre1)     m1 = pre1 > 0   (B·H·W rows)
    pre2 = conv2(a1) + b2         3×3, stride s, pad 1  a2 = relu(pre2)     m2 = pre2 > 0   (B·Ho·Wo rows)
    pre3 = conv3(a2) + b3 + idt   1×1, w -> 4w          y  = relu(pre3)     m3 = pre3 > 0   (B·Ho·Wo rows)
    idt  = x,  or  convd(x) + bd  (1×1, stride s, Cin -> 4w: the downsample)

Gradient convention (so that blocks chain with the ReLU gradient in each GEMM's epilogue, the
`out_mask` placement of `ccfast.conv1x1`): the dgrad takes dz = ∂L/∂pre3, the gradient at the block's
final ReLU *input* — its consumer has already gated ∂L/∂y by m3 — and returns

    dx = ∂L/∂x ⊙ in_mask

where in_mask is the ReLU mask of whatever produced x (the previous block's m3), or None (dx = ∂L/∂x).
So for blocks k-1, k: dz_{k-1} = bottleneck_dgrad_ref(dz_k, saved_k, p_k, in_mask=saved_{k-1}.mask_out).
Inside the block the same rule places m2 on conv3's dgrad and m1 after conv2's; the identity path adds
dz (or the downsample's input gradient of dz) to conv1's before the in_mask gate:

    dpre2 = (dz @ W3) ⊙ m2;   dpre1 = conv2ᵀ(dpre2) ⊙ m1;   dx = (dpre1 @ W1 + dz or convdᵀ(dz)) ⊙ in_mask

What the forward saves for the backward: m1, m2 (packed, 1 bit per element) and the input's spatial size
(which a stride-2 3×3 needs to undo its rounding). The input gradient is linear in dz given the masks, so it
needs the weights and the masks only: no activation, not even x. m3 is saved too, but for the consumer
(the next block's in_mask, or the gate of dy), not for this block's dgrad. Masks are rows of the
channels_last layout (row = (b, h, w), bits along the channels), packed by `ccfast.conv1x1.pack_relu_mask`.

Everything here is plain PyTorch in fp32 math (CPU-runnable; on a GPU fp32 convolutions follow
torch.backends.cudnn.allow_tf32, which a caller wanting exact fp32 turns off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .bn_fold import fold_batchnorm
from .conv1x1 import as_rows, conv1x1_dgrad_ref, conv1x1_relu_ref, from_rows, pack_relu_mask, unpack_relu_mask
from .errors import CCFastError


@dataclass
class BottleneckWeights:
    """The folded convolutions of one block: 4-D conv weights (w1 (w, Cin, 1, 1), w2 (w, w, 3, 3), w3 (4w, w, 1, 1),
    wd (4w, Cin, 1, 1) or None) and biases; `bias_out` = b3 (+ bd), the one bias the fused conv3 epilogue adds
    (the downsample's is moved there, so its convolution needs none)."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    stride: int = 1
    wd: torch.Tensor | None = None
    bd: torch.Tensor | None = None
    bias_out: torch.Tensor = field(init=False)

    def __post_init__(self):
        if (self.wd is None) != (self.bd is None):
            raise CCFastError("bottleneck: the downsample needs both its weight and its bias")
        if self.wd is None and (self.stride != 1 or self.w1.shape[1] != self.w3.shape[0]):
            raise CCFastError(f"bottleneck: without a downsample the block needs stride 1 and Cin == Cout, got "
                              f"stride {self.stride}, Cin {self.w1.shape[1]}, Cout {self.w3.shape[0]}")
        self.bias_out = self.b3.float() if self.bd is None else self.b3.float() + self.bd.float()

    @property
    def channels(self) -> tuple[int, int, int]:
        """(Cin, width, Cout)."""
        return self.w1.shape[1], self.w1.shape[0], self.w3.shape[0]

    def cast(self, dtype: torch.dtype, device=None) -> BottleneckWeights:
        """Weights in `dtype` (channels_last, as cuDNN's NHWC kernels want them), biases in fp32 (the kernels add
        them in fp32), on `device`."""
        def w(t):
            return None if t is None else t.to(device, dtype).contiguous(memory_format=torch.channels_last)

        def b(t):
            return None if t is None else t.to(device, torch.float32)

        return BottleneckWeights(w(self.w1), b(self.b1), w(self.w2), b(self.b2), w(self.w3), b(self.b3),
                                 self.stride, w(self.wd), b(self.bd))


@dataclass
class BottleneckSaved:
    """What a block's forward keeps: mask1 (B·H·W, ⌈w/32⌉), mask2 and mask_out (B·Ho·Wo, ⌈w/32⌉ and ⌈Cout/32⌉)
    int32, and the input's (H, W). The dgrad reads mask1, mask2 and in_hw; mask_out is for the consumer."""

    mask1: torch.Tensor
    mask2: torch.Tensor
    mask_out: torch.Tensor
    in_hw: tuple[int, int]


def fold_bottleneck(block: torch.nn.Module) -> BottleneckWeights:
    """The folded weights of a torchvision-style Bottleneck (`ccfast.models.Bottleneck`) in eval mode, folded by
    `ccfast.bn_fold.fold_batchnorm`, the engine's one folding."""
    if block.training:
        raise CCFastError("fold_bottleneck: the block must be in eval mode (folding uses the running statistics)")
    folded, status = fold_batchnorm(block)
    if status != "on":
        raise CCFastError(f"fold_bottleneck: BatchNorm folding failed ({status})")
    convs = {name: m for name, m in folded.named_modules() if isinstance(m, torch.nn.Conv2d)}
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()):
        raise CCFastError("fold_bottleneck: a BatchNorm was left unfolded")
    for name, conv in convs.items():
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise CCFastError(f"fold_bottleneck: {name} has groups {conv.groups}, dilation {conv.dilation}; only "
                              "groups=1, dilation=1 (ResNet-50, Wide-ResNet-50-2) is supported")
    c1, c2, c3 = convs["conv1"], convs["conv2"], convs["conv3"]
    if c2.padding != (1, 1) or c2.stride[0] != c2.stride[1] or c2.kernel_size != (3, 3):
        raise CCFastError(f"fold_bottleneck: conv2 must be 3×3, padding 1, square stride; got {c2}")
    down = convs.get("downsample.0")

    def wb(conv):
        return conv.weight.detach().clone(), conv.bias.detach().clone()

    wd, bd = wb(down) if down is not None else (None, None)
    return BottleneckWeights(*wb(c1), *wb(c2), *wb(c3), stride=c2.stride[0], wd=wd, bd=bd)


def bottleneck_torch(x: torch.Tensor, p: BottleneckWeights) -> torch.Tensor:
    """The block as plain, differentiable PyTorch in x's dtype (F.conv2d everywhere): what a user writes, the
    benchmark's compiled recipe, and the low-precision yardstick of the tests."""
    dt = x.dtype
    a1 = torch.relu(F.conv2d(x, p.w1.to(dt), p.b1.to(dt)))
    a2 = torch.relu(F.conv2d(a1, p.w2.to(dt), p.b2.to(dt), stride=p.stride, padding=1))
    idt = x if p.wd is None else F.conv2d(x, p.wd.to(dt), p.bd.to(dt), stride=p.stride)
    return torch.relu(F.conv2d(a2, p.w3.to(dt), p.b3.to(dt)) + idt)


def bottleneck_fwd_ref(x: torch.Tensor, p: BottleneckWeights
                       ) -> tuple[torch.Tensor, BottleneckSaved, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(y, saved, (pre1, pre2, pre3)) for x (B, Cin, H, W): fp32 math, y (B, Cout, Ho, Wo) in x's dtype, the
    pre-activations as fp32 rows (tests use them to tell which mask bits sit within rounding of zero)."""
    B, _, H, W = x.shape
    xf = x.float()
    a1, m1, pre1 = conv1x1_relu_ref(as_rows(xf), p.w1.flatten(1).float(), p.b1)
    pre2_4d = F.conv2d(from_rows(a1, (B, H, W)), p.w2.float(), p.b2.float(), stride=p.stride, padding=1)
    Ho, Wo = pre2_4d.shape[2:]
    pre2 = as_rows(pre2_4d)
    a2, m2 = torch.relu(pre2), pack_relu_mask(pre2 > 0)
    idt = xf if p.wd is None else F.conv2d(xf, p.wd.float(), p.bd.float(), stride=p.stride)
    y, m3, pre3 = conv1x1_relu_ref(a2, p.w3.flatten(1).float(), p.b3, as_rows(idt))
    return from_rows(y, (B, Ho, Wo)).to(x.dtype), BottleneckSaved(m1, m2, m3, (H, W)), (pre1, pre2, pre3)


def conv3x3_dgrad_gate_ref(dpre2_rows, mask1, p: BottleneckWeights, bhw_in, bhw_out):
    """dpre1 = conv2ᵀ(dpre2) ⊙ m1 as fp32 rows: the 3×3's input gradient (weights only), gated."""
    B, H, W = bhw_in
    w = p.w2.shape[0]
    da1 = torch.nn.grad.conv2d_input((B, w, H, W), p.w2.float(), from_rows(dpre2_rows.float(), bhw_out),
                                     stride=p.stride, padding=1)
    return torch.where(unpack_relu_mask(mask1, w), as_rows(da1), 0.0)


def bottleneck_dgrad_ref(dz: torch.Tensor, saved: BottleneckSaved, p: BottleneckWeights,
                         in_mask: torch.Tensor | None = None) -> torch.Tensor:
    """dx = ∂L/∂x ⊙ in_mask for dz = ∂L/∂pre3 (B, Cout, Ho, Wo) (see the module docstring): fp32 math, dx
    (B, Cin, H, W) in dz's dtype. in_mask (B·H·W, ⌈Cin/32⌉) int32 or None."""
    B, cout, Ho, Wo = dz.shape
    H, W = saved.in_hw
    cin = p.w1.shape[1]
    dz_rows = as_rows(dz.float())
    dpre2 = conv1x1_dgrad_ref(dz_rows, None, p.w3.flatten(1).float(), out_mask=saved.mask2)
    dpre1 = conv3x3_dgrad_gate_ref(dpre2, saved.mask1, p, (B, H, W), (B, Ho, Wo))
    if p.wd is None:
        r = dz_rows
    else:
        r = as_rows(torch.nn.grad.conv2d_input((B, cin, H, W), p.wd.float(), dz.float(), stride=p.stride))
    dx = conv1x1_dgrad_ref(dpre1, None, p.w1.flatten(1).float(), residual=r, out_mask=in_mask)
    return from_rows(dx, (B, H, W)).to(dz.dtype)
