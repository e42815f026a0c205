"""1×1 convolutions as GEMMs with their pointwise neighbours, and compact ReLU masks: the `_ref` of
`kernels/conv1x1.py` (issue 12).

In channels_last a 1×1, stride-1 convolution over (B, Cin, H, W) is a matrix product over rows
M = B·H·W: x viewed as (M, Cin) times the weight (Cout, Cin) transposed. The refinement step needs, per
such convolution, the forward with its bias, an optional residual and a ReLU, and later the gradient
with respect to its input only (no weight gradients, SPEC §4):

    forward   pre = x @ Wᵀ + b (+ r);   y = relu(pre);   mask = pre > 0            (M, Cout)
    dgrad     dx  = ((dy ⊙ mask) @ W  (+ r ⊙ mask_r)) ⊙ mask_out                 (M, Cin)

where in the dgrad `r` is a residual gradient (the identity path of a bottleneck) gated by its own ReLU
mask `mask_r` (that of the block output, of width Cin), and every mask is optional. Two equivalent ways
to place the ReLU gradients in a chain of convolutions: gate dy while loading it (`mask`, the ReLU of this
convolution's output), or gate the result while storing it (`mask_out`, the ReLU of its input, i.e. of
the layer before) so that the next dgrad receives an already gated dy. The backward needs the mask, not the
pre-activation: 1 bit per element is kept instead of 2 bytes (bf16), packed little-endian into int32
words along the channel dimension, word j of a row holding channels 32j..32j+31, bit i channel 32j+i
(bits past the last channel are 0).

Everything here is plain PyTorch with fp32 math, the spec of record the Triton kernels are tested against.
"""

from __future__ import annotations

import torch

BITS = 32  # channels per mask word


def mask_words(channels: int) -> int:
    """Number of int32 words per row of a packed mask over `channels` channels."""
    return (channels + BITS - 1) // BITS


def pack_relu_mask(keep: torch.Tensor) -> torch.Tensor:
    """(M, C) bool -> (M, ⌈C/32⌉) int32, bit i of word j = keep[:, 32j + i]."""
    M, C = keep.shape
    words = mask_words(C)
    padded = torch.zeros(M, words * BITS, dtype=torch.int64, device=keep.device)
    padded[:, :C] = keep.to(torch.int64)
    weights = torch.bitwise_left_shift(torch.ones(BITS, dtype=torch.int64, device=keep.device),
                                       torch.arange(BITS, device=keep.device))
    packed = (padded.view(M, words, BITS) * weights).sum(dim=2)  # disjoint bits: sum == or, < 2^32
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_relu_mask(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """(M, ⌈C/32⌉) int32 -> (M, C) bool: the inverse of `pack_relu_mask`."""
    shifts = torch.arange(BITS, device=mask.device, dtype=torch.int32)
    bits = torch.bitwise_right_shift(mask.to(torch.int32)[:, :, None], shifts) & 1
    return bits.reshape(mask.shape[0], -1)[:, :channels].bool()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B·H·W, C): the rows of the channels_last layout, the row order of every packed mask (a view
    when t is channels_last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def from_rows(rows: torch.Tensor, bhw: tuple[int, int, int]) -> torch.Tensor:
    """(B·H·W, C) rows -> (B, C, H, W) in channels_last (a view when the rows are contiguous): `as_rows` undone."""
    B, H, W = bhw
    return rows.reshape(B, H, W, rows.shape[1]).permute(0, 3, 1, 2)


def conv1x1_relu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mask, pre) for x (M, K), weight (N, K), bias (N,), residual (M, N) or None.

    fp32 math; y is returned in x's dtype, mask packed (`pack_relu_mask`), pre in fp32 (tests use it to
    tell which mask bits sit within rounding of zero).
    """
    pre = x.float() @ weight.float().t() + bias.float()
    if residual is not None:
        pre = pre + residual.float()
    return torch.relu(pre).to(x.dtype), pack_relu_mask(pre > 0), pre


def conv1x1_dgrad_ref(dy: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor,
                      residual: torch.Tensor | None = None, residual_mask: torch.Tensor | None = None,
                      out_mask: torch.Tensor | None = None) -> torch.Tensor:
    """dx = ((dy ⊙ mask) @ W + residual ⊙ residual_mask) ⊙ out_mask for dy (M, N), weight (N, K), mask
    (M, ⌈N/32⌉), residual (M, K), residual_mask and out_mask (M, ⌈K/32⌉); a mask that is None gates
    nothing. fp32 math, dx in dy's dtype."""
    N, K = weight.shape
    dz = dy.float() if mask is None else torch.where(unpack_relu_mask(mask, N), dy.float(), 0.0)
    dx = dz @ weight.float()
    if residual is not None:
        r = residual.float()
        if residual_mask is not None:
            r = torch.where(unpack_relu_mask(residual_mask, K), r, 0.0)
        dx = dx + r
    if out_mask is not None:
        dx = torch.where(unpack_relu_mask(out_mask, K), dx, 0.0)
    return dx.to(dy.dtype)
