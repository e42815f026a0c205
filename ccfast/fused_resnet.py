"""The whole bottleneck ResNet (ResNet-50 / Wide-ResNet-50-2 family, `ccfast.models.ImageNetResNet`) as a
forward that saves ReLU masks only and its input gradient, composed of `ccfast.bottleneck`'s blocks: the
reference composition (plain PyTorch, CPU-runnable), and the one composition the fused engine path runs with
the Triton ops swapped in (`ccfast.refine.fused_net`; issue 12). Not yet measured on a GPU.

The function is JointModel's f(x) for x in [0, 1] (B, 3, H, W), BatchNorm folded (`ccfast.bn_fold`):

    xn   = (x − mean) / std                                 JointModel's normalisation
    s    = conv7×7/2(xn, W0)                                the stem, its bias b0 added after the pool:
    q    = maxpool3×3/2(s) + b0                             max(a + b) = max(a) + b for a per-channel b, and
    a0   = relu(q),  m0 = q > 0                             max∘relu = relu∘max (relu is monotone), so
                                                            a0 = maxpool(relu(conv(xn) + b0)) exactly
    a_k  = block_k(a_{k−1}), m_k = its output mask          `bottleneck_fwd_ref` (16 blocks for ResNet-50)
    logits = mean_hw(a_K) @ Wfcᵀ + bfc

and the input gradient, seeded with dlogits = ∂L/∂logits (the objective head's dJ/dlogits):

    dz_K  = (dlogits @ Wfc / (H_K·W_K)) broadcast over h, w, ⊙ m_K     fc ᵀ, avgpool backward, last mask
    dz_{k−1} = block_dgrad_k(dz_k, in_mask = m_{k−1})                   blocks in reverse (m_0 for the first)
    ds    = maxpool backward of dz_0 (= ∂L/∂q, already gated by m0)   from the saved window offsets
    dx    = conv7×7/2ᵀ(ds) / std                                       stem dgrad, normalisation backward

Saved by the forward, nothing else (no activation; x itself is the caller's):
  - every block's m1, m2, m3 (1 bit per element, `BottleneckSaved`);
  - m0, the stem's ReLU mask, taken *after* the pool: 1 bit per pooled element (4× fewer than before it,
    and exact: a window whose max is ≤ 0 passes no gradient either way);
  - the max-pool's argmax as its offset from the window's top-left corner (row·W + column, W the stem
    output's width), one uint8 per pooled element while it fits (W ≤ 126 for the 3×3 pool; int16 beyond).
    The cheapest exact form: torch's own indices are int64 (8× more); recomputing the pool in the backward
    would need s, i.e. the stem convolution run again (cuDNN over 3 input channels, slow for its FLOPs); a
    4-bit window code would halve the byte but needs a kernel of its own to pack. Offsets are idx − base and
    the backward's flat indices base + offset, with base the windows' corners (cached per shape): one integer
    kernel each way. The backward scatter-adds, in fp32, into the stem's output.

`logits_and_saved` / `input_grad` take `ops` (`NetOps`): the four per-block operations. `REF_OPS` here
(fp32 math: the `_ref` functions), the fused kernels in `ccfast.refine.fused_net.FUSED_OPS`; the glue
(normalisation, stem, pool, avgpool, fc) is this one code in both, in the weights' dtype (the reference's
weights are fp32), with the pool's scatter and avgpool/fc in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .bn_fold import folded_conv_bn
from .bottleneck import BottleneckSaved, BottleneckWeights, bottleneck_dgrad_ref, bottleneck_fwd_ref, fold_bottleneck
from .conv1x1 import as_rows, from_rows, pack_relu_mask, unpack_relu_mask
from .errors import CCFastError

SUPPORTED = "a bottleneck ResNet (ccfast.models.ImageNetResNet: resnet50, wide_resnet50_2) inside a JointModel"


@dataclass
class FusedResNetWeights:
    """Folded weights of the network: the normalisation (mean, std (1, 3, 1, 1) fp32), the stem (stem_w
    (C0, Cin, 7, 7) — Cin may be zero-padded past the image's `in_channels` — and stem_b fp32), the blocks
    in order, and the head (fc_w (classes, C), fc_b; kept fp32: the avgpool and fc run in fp32)."""

    mean: torch.Tensor
    std: torch.Tensor
    stem_w: torch.Tensor
    stem_b: torch.Tensor
    blocks: list[BottleneckWeights]
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    stem_stride: int = 2
    stem_padding: int = 3
    pool: tuple[int, int, int] = (3, 2, 1)  # max-pool kernel, stride, padding
    in_channels: int = field(default=0)

    def __post_init__(self):
        if not self.in_channels:
            self.in_channels = self.stem_w.shape[1]

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> FusedResNetWeights:
        """From a `JointModel` whose backbone is `ccfast.models.ImageNetResNet`; anything else is a one-line
        CCFastError (`check_supported`). Folded in eval mode (running statistics), as the engines run a model,
        and in fp32 whatever the model's dtype (the weights' reference form); `model` is left as it is."""
        net = copy.deepcopy(check_supported(model)).float().eval()
        stem_w, stem_b = folded_conv_bn(net.conv1, net.bn1, torch.float32)
        blocks = [fold_bottleneck(b) for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        return cls(model.mean.detach().float().cpu(), model.std.detach().float().cpu(), stem_w, stem_b, blocks,
                   net.fc.weight.detach().clone(), net.fc.bias.detach().clone(), net.conv1.stride[0],
                   net.conv1.padding[0], (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding))

    def cast(self, dtype: torch.dtype, device=None, pad_channels: int = 0) -> FusedResNetWeights:
        """Convolution weights in `dtype`, channels_last (`BottleneckWeights.cast`), on `device`; normalisation,
        biases and the head fp32. pad_channels=8 zero-pads the stem's input channels to a multiple of 8 (cuDNN's
        NHWC tensor-core kernels want C % 8 == 0; the forward pads the image to match, the dgrad drops them)."""
        w = self.stem_w[:, :self.in_channels]
        if pad_channels:
            w = F.pad(w, (0, 0, 0, 0, 0, (-self.in_channels) % pad_channels))

        def f32(t):
            return t.to(device, torch.float32)

        return replace(self, mean=f32(self.mean), std=f32(self.std), stem_b=f32(self.stem_b),
                       stem_w=w.to(device, dtype).contiguous(memory_format=torch.channels_last),
                       blocks=[b.cast(dtype, device) for b in self.blocks], fc_w=f32(self.fc_w), fc_b=f32(self.fc_b))


@dataclass
class FusedResNetSaved:
    """What the forward keeps: the pool's window offsets (B, C0, Hp, Wp) uint8, m0 (B·Hp·Wp, ⌈C0/32⌉) int32,
    the stem output's (H, W) (the pool's input), the image's and the last block output's (H, W), and each
    block's `BottleneckSaved`."""

    pool_offset: torch.Tensor
    pool_mask: torch.Tensor
    stem_hw: tuple[int, int]
    image_hw: tuple[int, int]
    out_hw: tuple[int, int]
    blocks: list[BottleneckSaved]


@dataclass(frozen=True)
class NetOps:
    """The per-block operations of the composition (reference or fused; same conventions as ccfast.bottleneck):
    block_fwd(x, p) -> (y, saved); block_dgrad(dz, saved, p, in_mask) -> dx; bias_relu_mask(pre, b) ->
    (relu(pre + b), packed mask); mask_gate(g, mask) -> g ⊙ mask, for 4-D (B, C, H, W) tensors."""

    block_fwd: Callable
    block_dgrad: Callable
    bias_relu_mask: Callable
    mask_gate: Callable


def check_supported(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone of `model` if it is the supported family, else a one-line CCFastError."""
    from .models import Bottleneck, ImageNetResNet, JointModel

    backbone = getattr(model, "backbone", None)
    if not isinstance(model, JointModel) or type(backbone) is not ImageNetResNet:
        what = type(backbone if isinstance(model, JointModel) else model).__name__
        raise CCFastError(f"fused network: {what} is not supported; it needs {SUPPORTED}")
    pool, stem = backbone.maxpool, backbone.conv1
    if (not isinstance(pool, torch.nn.MaxPool2d) or pool.dilation != 1 or pool.ceil_mode
            or not all(isinstance(v, int) for v in (pool.kernel_size, pool.stride, pool.padding))
            or stem.groups != 1 or stem.dilation != (1, 1) or len(set(stem.stride)) != 1
            or len(set(stem.padding)) != 1 or any(type(b) is not Bottleneck for layer in
                                                  (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
                                                  for b in layer)):
        raise CCFastError(f"fused network: this ImageNetResNet was modified (stem, pool or blocks); needs {SUPPORTED}")
    return backbone


# ---------------------------------------------------------------- reference per-block ops and the pool


def bias_relu_mask_ref(pre: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(relu(pre + b), packed mask of pre + b > 0) for pre (B, C, H, W), fp32 math: the `_ref` of
    `ccfast.kernels.bottleneck.bias_relu_mask`."""
    q = pre.float() + bias.float().view(1, -1, 1, 1)
    return torch.relu(q), pack_relu_mask(as_rows(q) > 0)


def relu_mask_gate_ref(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """g ⊙ unpack(mask) for g (B, C, H, W): the `_ref` of `ccfast.kernels.bottleneck.relu_mask_gate`."""
    B, C, H, W = g.shape
    return from_rows(torch.where(unpack_relu_mask(mask, C), as_rows(g), 0.0), (B, H, W))


REF_OPS = NetOps(lambda x, p: bottleneck_fwd_ref(x, p)[:2], bottleneck_dgrad_ref, bias_relu_mask_ref,
                 relu_mask_gate_ref)


_WINDOW_BASES: dict[tuple, torch.Tensor] = {}


def _window_base(out_hw: tuple[int, int], W: int, stride: int, padding: int, device) -> torch.Tensor:
    """(1, 1, Ho, Wo) int64: the flat index (row·W + column) in the pool's input of each window's top-left
    corner (negative where the window starts in the padding). Cached per shape, so that a step's pool costs
    no index arithmetic beyond one subtraction (forward) and one addition (backward); not cached while a CUDA
    graph is being captured (a tensor made there belongs to the graph's pool)."""
    key = (tuple(out_hw), W, stride, padding, str(device))
    base = _WINDOW_BASES.get(key)
    if base is None:
        oh = torch.arange(out_hw[0], device=device) * stride - padding
        ow = torch.arange(out_hw[1], device=device) * stride - padding
        base = (oh.view(-1, 1) * W + ow.view(1, -1)).view(1, 1, *out_hw)
        capturing = torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()
        if not capturing:
            _WINDOW_BASES[key] = base
    return base


def _offset_dtype(kernel: int, W: int) -> torch.dtype:
    """The narrowest integer type holding every offset row·W + column of a kernel×kernel window."""
    span = (kernel - 1) * W + kernel - 1
    return torch.uint8 if span < 256 else torch.int16 if span < 2**15 else torch.int32


def maxpool_fwd(s: torch.Tensor, kernel: int, stride: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(max-pool of s, the argmax's offset from its window's top-left corner, (B, C, Ho, Wo): row·W + column
    with W the width of s; uint8 while (kernel − 1)·(W + 1) < 256, i.e. up to W = 126 for a 3×3 window)."""
    out, idx = F.max_pool2d(s, kernel, stride, padding, return_indices=True)
    base = _window_base(tuple(out.shape[2:]), s.shape[3], stride, padding, s.device)
    return out, (idx - base).to(_offset_dtype(kernel, s.shape[3]))


def maxpool_bwd(dout: torch.Tensor, offset: torch.Tensor, in_hw: tuple[int, int], kernel: int, stride: int,
                padding: int) -> torch.Tensor:
    """∂L/∂s (B, C, H, W) fp32, channels_last, from dout = ∂L/∂(pool output) and the saved window offsets:
    each output's gradient added to its argmax (windows overlap: scatter-add, in fp32)."""
    B, C, Ho, Wo = dout.shape
    H, W = in_hw
    flat = _window_base((Ho, Wo), W, stride, padding, dout.device) + offset.long()
    # (B, H·W, C) rows: the channels_last layout the fused path works in (a view there, a copy in NCHW)
    ds = torch.zeros(B, H * W, C, device=dout.device, dtype=torch.float32)
    ds.scatter_add_(1, flat.permute(0, 2, 3, 1).reshape(B, Ho * Wo, C),
                    dout.float().permute(0, 2, 3, 1).reshape(B, Ho * Wo, C))
    return ds.view(B, H, W, C).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- the composition


def logits_and_saved(weights: FusedResNetWeights, x: torch.Tensor, ops: NetOps = REF_OPS
                     ) -> tuple[torch.Tensor, FusedResNetSaved]:
    """(logits (B, classes) fp32, saved) for images x (B, 3, H, W) in [0, 1] (see the module docstring).
    Activations run in the stem weight's dtype (fp32 for `from_model`'s weights, channels_last)."""
    w = weights
    if x.ndim != 4 or x.shape[1] != w.in_channels:
        raise CCFastError(f"fused network: x must be (B, {w.in_channels}, H, W), got {tuple(x.shape)}")
    dtype = w.stem_w.dtype
    xn = (x.float() - w.mean.to(x.device)) / w.std.to(x.device)
    if w.stem_w.shape[1] != w.in_channels:  # the zero-padded channels of `cast(pad_channels=8)`
        xn = F.pad(xn, (0, 0, 0, 0, 0, w.stem_w.shape[1] - w.in_channels))
    xn = xn.to(dtype).contiguous(memory_format=torch.channels_last)
    s = F.conv2d(xn, w.stem_w, None, w.stem_stride, w.stem_padding)
    pooled, offset = maxpool_fwd(s, *w.pool)
    a, pool_mask = ops.bias_relu_mask(pooled, w.stem_b)
    a = a.to(dtype)
    saved_blocks = []
    for p in w.blocks:
        a, sv = ops.block_fwd(a, p)
        saved_blocks.append(sv)
    logits = a.float().mean((2, 3)) @ w.fc_w.t() + w.fc_b
    return logits, FusedResNetSaved(offset, pool_mask, tuple(s.shape[2:]), tuple(x.shape[2:]), tuple(a.shape[2:]),
                                    saved_blocks)


def input_grad(weights: FusedResNetWeights, saved: FusedResNetSaved, dlogits: torch.Tensor,
               ops: NetOps = REF_OPS) -> torch.Tensor:
    """∂L/∂x (B, 3, H, W) fp32 for dlogits = ∂L/∂logits (B, classes): fc ᵀ, avgpool backward gated by the last
    block's mask, the blocks in reverse, the pool's backward, the stem's dgrad, the normalisation's."""
    w = weights
    dtype = w.stem_w.dtype
    B = dlogits.shape[0]
    last = saved.blocks[-1]
    C = w.fc_w.shape[1]
    Hk, Wk = saved.out_hw
    dfeat = (dlogits.float() @ w.fc_w) / (Hk * Wk)
    dy = dfeat.to(dtype)[:, None, None, :].expand(B, Hk, Wk, C).contiguous().permute(0, 3, 1, 2)  # channels_last
    dz = ops.mask_gate(dy, last.mask_out)
    for k in range(len(w.blocks) - 1, -1, -1):
        in_mask = saved.blocks[k - 1].mask_out if k else saved.pool_mask
        dz = ops.block_dgrad(dz, saved.blocks[k], w.blocks[k], in_mask)
    ds = maxpool_bwd(dz, saved.pool_offset, saved.stem_hw, *w.pool).to(dtype)
    H, W = saved.image_hw
    dxn = torch.nn.grad.conv2d_input((B, w.stem_w.shape[1], H, W), w.stem_w, ds, stride=w.stem_stride,
                                     padding=w.stem_padding)
    return dxn[:, :w.in_channels].float() / w.std.to(dxn.device)

