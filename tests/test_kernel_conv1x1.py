"""The fused 1×1 convolution kernels (`ccfast.kernels.conv1x1`) against their `_ref` twins in
`ccfast.conv1x1` (fp32 math): forward + bias + residual + ReLU + packed mask, and the masked input gradient
with its gated residual.

Natively on a CUDA GPU (fixed tiles and the autotuned path) and, without one, through Triton's interpreter
on CPU tensors (TRITON_INTERPRET=1, set before the kernels are imported) with small shapes.
"""

from __future__ import annotations

import pytest
import torch

from factories import triton_kernels_or_skip

CUDA = triton_kernels_or_skip("the Triton kernels need `pip install 'ccfast[triton]'`")

from ccfast.conv1x1 import (  # noqa: E402
    conv1x1_dgrad_ref,
    conv1x1_relu_ref,
    mask_words,
    pack_relu_mask,
    unpack_relu_mask,
)
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.kernels.conv1x1 import conv1x1_dgrad, conv1x1_relu  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")

DTYPES = (torch.float32, torch.bfloat16)
# (M, K, N): M not a multiple of any tile, batch-1-sized M (4, 9), ragged K (48, 40, 200), N not a multiple
# of 32 (40, 72: a partial mask word), and one shape with everything aligned.
SHAPES = [(70, 48, 40), (4, 64, 96), (9, 40, 72), (33, 64, 64), (130, 200, 32)]
if CUDA:
    SHAPES += [(1000, 256, 64), (4096, 64, 256), (16, 1024, 256)]
# Tiles: interpreter: its default (32³) and one larger; GPU: two fixed Hopper tiles (the autotuned path is
# tested on its own below: autotuning every case would compile every configuration for each).
BLOCKS = [(64, 64, 32), (128, 128, 64)] if CUDA else [None, (64, 64, 32)]
BLOCK_IDS = ["64x64x32", "128x128x64"] if CUDA else ["default", "64x64x32"]


def _cases():
    """(M, K, N, blocks): every shape with every tile on a GPU; the interpreter's second tile (slow: one
    program at a time) only on the ragged shapes."""
    return [pytest.param(*shape, blocks, id=f"M{shape[0]}-K{shape[1]}-N{shape[2]}-{bid}")
            for shape in SHAPES for blocks, bid in zip(BLOCKS, BLOCK_IDS, strict=False)
            if CUDA or blocks is None or shape in (SHAPES[0], SHAPES[4])]
# fp32: the same products summed in another order (exact fp32 on the GPU too: input_precision="ieee").
TOL_FP32 = {"rtol": 1e-5, "atol": 1e-5}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _forward_inputs(M, K, N, dtype, seed, residual):
    g = _gen(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) * 0.5
    r = torch.randn(M, N, generator=g) if residual else None
    def to(t):
        return None if t is None else t.to(DEVICE, dtype)
    return to(x), to(w), b.to(DEVICE), to(r)


def _assert_bf16_like_torch(out, ref_fp32, torch_bf16):
    """bf16 judged against fp32 with plain PyTorch bf16's own error as the yardstick, plus one bf16 ulp
    (≤ 2^-7 relative) per element: the GPU rounds the fp32 result to nearest, the interpreter toward zero."""
    yardstick = (torch_bf16.float() - ref_fp32).abs().max()
    excess = (out.float() - ref_fp32).abs() - (yardstick + 2**-7 * ref_fp32.abs())
    assert excess.max() <= 0, (excess.max().item(), yardstick.item())


def _check_mask(mask, pre, N, y):
    """Bits equal pre > 0 wherever pre is not within rounding of 0 (few places), 0 past the last channel,
    and agree with y > 0 everywhere (they come from one value)."""
    assert mask.dtype == torch.int32 and mask.shape == (pre.shape[0], mask_words(N))
    bits = unpack_relu_mask(mask, mask_words(N) * 32)
    assert not bits[:, N:].any(), "bits past the last channel must be 0"
    near_zero = pre.abs() <= 1e-5 * (1 + pre.abs().max())
    assert near_zero.float().mean() < 0.01, "too few unambiguous bits to test anything"
    assert torch.equal(bits[:, :N][~near_zero], (pre > 0)[~near_zero])
    assert torch.equal(bits[:, :N], y.float() > 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("M,K,N,blocks", _cases())
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_forward_matches_ref(M, K, N, dtype, blocks, residual):
    x, w, b, r = _forward_inputs(M, K, N, dtype, seed=M * K + N, residual=residual)
    y, mask = conv1x1_relu(x, w, b, r, blocks=blocks)
    y_ref, mask_ref, pre = conv1x1_relu_ref(x, w, b, r)
    assert y.dtype == dtype and y.shape == (M, N)
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, **TOL_FP32)
    else:
        torch_bf16 = torch.relu(x @ w.t() + b.to(dtype) + (r if r is not None else 0))
        _assert_bf16_like_torch(y, pre.clamp_min(0), torch_bf16)
    _check_mask(mask, pre, N, y)
    assert torch.equal(mask_ref, pack_relu_mask(pre > 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("M,K,N,blocks", _cases())
@pytest.mark.parametrize("residual", ["none", "plain", "gated"] if CUDA else ["none", "gated"])
def test_dgrad_matches_ref(M, K, N, dtype, blocks, residual):
    """dx (M, K) = (dy ⊙ mask) @ W + residual (⊙ its mask); W is (N, K) as in the forward."""
    g = _gen(M + 7 * K + N)
    dy = torch.randn(M, N, generator=g).to(DEVICE, dtype)
    keep = torch.rand(M, N, generator=g) > 0.4
    mask = pack_relu_mask(keep).to(DEVICE)
    w = (torch.randn(N, K, generator=g) / N**0.5).to(DEVICE, dtype)
    r = torch.randn(M, K, generator=g).to(DEVICE, dtype) if residual != "none" else None
    keep_r = torch.rand(M, K, generator=g) > 0.5
    r_mask = pack_relu_mask(keep_r).to(DEVICE) if residual == "gated" else None
    dx = conv1x1_dgrad(dy, mask, w, r, r_mask, blocks=blocks)
    assert dx.dtype == dtype and dx.shape == (M, K)
    ref = conv1x1_dgrad_ref(dy.float(), mask, w.float(), None if r is None else r.float(), r_mask)
    if dtype == torch.float32:
        torch.testing.assert_close(dx, ref, **TOL_FP32)
    else:
        dz = torch.where(keep.to(DEVICE), dy, 0)
        torch_bf16 = dz @ w
        if r is not None:
            torch_bf16 = torch_bf16 + (torch.where(keep_r.to(DEVICE), r, 0) if r_mask is not None else r)
        _assert_bf16_like_torch(dx, ref, torch_bf16)
    # The mask must actually gate: flipping it changes dx (the test would pass a kernel that ignores it).
    dx_all = conv1x1_dgrad(dy, pack_relu_mask(torch.ones_like(keep)).to(DEVICE), w, r, r_mask, blocks=blocks)
    assert (dx_all.float() - dx.float()).abs().max() > 1e-2


@pytest.mark.skipif(not CUDA, reason="autotuning needs a GPU (the interpreter runs one fixed tile)")
@pytest.mark.parametrize("M,K,N", [(1000, 256, 64), (4, 512, 2048)])
def test_autotuned_path(M, K, N):
    """blocks=None on a GPU: the configuration the autotuner picks computes the same function."""
    x, w, b, r = _forward_inputs(M, K, N, torch.bfloat16, seed=9, residual=True)
    y, mask = conv1x1_relu(x, w, b, r)
    _, _, pre = conv1x1_relu_ref(x, w, b, r)
    _assert_bf16_like_torch(y, pre.clamp_min(0), torch.relu(x @ w.t() + b.to(x.dtype) + r))
    _check_mask(mask, pre, N, y)
    dy = torch.randn(M, N, device=DEVICE).to(torch.bfloat16)
    dx = conv1x1_dgrad(dy, mask, w, x, mask[:, : mask_words(K)] if N >= K else None)
    ref = conv1x1_dgrad_ref(dy.float(), mask, w.float(), x.float(), mask[:, : mask_words(K)] if N >= K else None)
    keep_r = unpack_relu_mask(mask[:, : mask_words(K)], K) if N >= K else torch.ones_like(x, dtype=torch.bool)
    torch_bf16 = torch.where(unpack_relu_mask(mask, N), dy, 0) @ w + torch.where(keep_r, x, 0)
    _assert_bf16_like_torch(dx, ref, torch_bf16)


def test_pack_unpack_round_trip():
    keep = torch.rand(5, 70, generator=_gen(1)) > 0.5
    keep[:, [31, 63]] = True  # bit 31 is the int32 sign bit
    packed = pack_relu_mask(keep)
    assert packed.shape == (5, 3) and packed.dtype == torch.int32 and (packed[:, :2] < 0).all()
    assert torch.equal(unpack_relu_mask(packed, 70), keep)
    assert int(pack_relu_mask(torch.tensor([[True, False, True]]))) == 0b101


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_conv_layout_batch_one_and_a_bottleneck(dtype):
    """(B, C, H, W) channels_last in and out, B=1, against F.conv2d; the forward's mask feeds the dgrad,
    and the dgrad against autograd through conv2d + ReLU (a bottleneck's last 1×1 with its identity)."""
    g = _gen(3)
    x = torch.randn(1, 48, 3, 5, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(40, 48, 1, 1, generator=g) / 7).to(DEVICE, dtype)
    b = torch.randn(40, generator=g).to(DEVICE)
    idt = torch.randn(1, 40, 3, 5, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    y, mask = conv1x1_relu(x, w, b, idt)
    assert y.shape == (1, 40, 3, 5) and y.is_contiguous(memory_format=torch.channels_last)
    # float64 reference: an fp32 conv2d on a GPU would run in TF32 (cuDNN's default) and be the less exact side.
    xf = x.double().requires_grad_()
    yf = torch.relu(torch.nn.functional.conv2d(xf, w.double(), b.double()) + idt.double())
    tol = TOL_FP32 if dtype == torch.float32 else {"rtol": 2**-7, "atol": 2**-7}
    torch.testing.assert_close(y.double(), yf.detach(), **tol)
    dy = torch.randn(1, 40, 3, 5, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    (dx_ref,) = torch.autograd.grad(yf, xf, dy.double())
    dx = conv1x1_dgrad(dy, mask, w)
    assert dx.shape == x.shape and dx.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(dx.double(), dx_ref, **(TOL_FP32 if dtype == torch.float32 else
                                                         {"rtol": 2**-6, "atol": 2**-6}))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_dgrad_mask_in_epilogue(M, K, N, dtype, residual):
    """The other placement of the ReLU gradient: dy arrives gated (mask=None), the result is gated by the
    ReLU of the convolution's input (out_mask) after the residual add; and both placements at once."""
    g = _gen(3 * M + K + 5 * N)
    dy = torch.randn(M, N, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, K, generator=g) / N**0.5).to(DEVICE, dtype)
    r = torch.randn(M, K, generator=g).to(DEVICE, dtype) if residual else None
    keep_out = torch.rand(M, K, generator=g) > 0.5
    out_mask = pack_relu_mask(keep_out).to(DEVICE)
    keep = torch.rand(M, N, generator=g) > 0.4
    mask = pack_relu_mask(keep).to(DEVICE)
    for m, keep_in in ((None, torch.ones_like(keep)), (mask, keep)):
        dx = conv1x1_dgrad(dy, m, w, r, out_mask=out_mask)
        ref = conv1x1_dgrad_ref(dy.float(), m, w.float(), None if r is None else r.float(), None, out_mask)
        assert torch.equal(dx[~keep_out.to(DEVICE)], torch.zeros_like(dx[~keep_out.to(DEVICE)]))
        if dtype == torch.float32:
            torch.testing.assert_close(dx, ref, **TOL_FP32)
        else:
            torch_bf16 = torch.where(keep_in.to(DEVICE), dy, 0) @ w + (r if r is not None else 0)
            _assert_bf16_like_torch(dx, ref, torch.where(keep_out.to(DEVICE), torch_bf16, 0))


def test_visible_to_torch_compile():
    x, w, b, _ = _forward_inputs(9, 40, 72, torch.float32, seed=5, residual=False)

    def step(x):
        y, mask = conv1x1_relu(x, w, b)
        return conv1x1_dgrad(y * 1.0, mask, w)

    out = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    y_ref, mask_ref, _ = conv1x1_relu_ref(x, w, b)
    torch.testing.assert_close(out, conv1x1_dgrad_ref(y_ref, mask_ref, w), **TOL_FP32)


def test_bad_inputs_raise_clear_errors():
    x, w, b, _ = _forward_inputs(9, 40, 72, torch.float32, seed=5, residual=False)
    with pytest.raises(CCFastError, match="weight \\(N, K\\)"):
        conv1x1_relu(x, w[:, :8], b)
    with pytest.raises(CCFastError, match="bias"):
        conv1x1_relu(x, w, b[:5])
    with pytest.raises(CCFastError, match="must match"):
        conv1x1_relu(x, w.to(torch.bfloat16), b)
    with pytest.raises(CCFastError, match="multiples of 32"):
        conv1x1_relu(x, w, b, blocks=(32, 48, 32))
    y, mask = conv1x1_relu(x, w, b)
    with pytest.raises(CCFastError, match="out_mask must be int32"):
        conv1x1_dgrad(y, mask, w, out_mask=mask)
    with pytest.raises(CCFastError, match="mask must be int32"):
        conv1x1_dgrad(y, mask[:, :1], w)
    with pytest.raises(CCFastError, match="residual_mask needs a residual"):
        conv1x1_dgrad(y, mask, w, None, mask[:, : mask_words(40)].contiguous())
    with pytest.raises(CCFastError, match="residual must have shape"):
        conv1x1_dgrad(y, mask, w, y)
