"""The fused L2 PGD step (`ccfast.kernels.pgd_step`) against its `_ref` twin `ccfast.pgd.pgd_step_ref`.

Natively on a CUDA GPU (the full B × size × dtype × layout matrix of issue 5) and, without one, through
Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set before the kernels are imported), with the
B=256 rows thinned.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from factories import triton_kernels_or_skip

CUDA = triton_kernels_or_skip("the Triton kernels need `pip install 'ccfast[triton]'`")

from ccfast.errors import CCFastError  # noqa: E402
from ccfast.kernels.pgd_step import MAX_SINGLE_BLOCK, pgd_step  # noqa: E402
from ccfast.pgd import per_example_l2_norm, pgd_step_ref  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")

BATCHES, SIZES, DTYPES = (1, 3, 17, 256), (32, 37, 64), (torch.float32, torch.bfloat16)
# Both sides do fp32 math; the per-image sums differ in order only (~1e-7 relative), so fp32 results agree
# to a few ulp. A bf16 result is one rounding of the same fp32 value: the two may land on adjacent bf16
# values when the fp32 values straddle a rounding boundary, so allow one bf16 ulp on [0, 1] (2^-8).
TOL = {torch.float32: {"rtol": 0, "atol": 1e-6}, torch.bfloat16: {"rtol": 0, "atol": 2**-8}}


def _matrix():
    full = list(itertools.product(BATCHES, SIZES, DTYPES, (False, True)))
    if CUDA:
        return full
    small = [c for c in full if c[0] != 256]
    return small + [(256, 32, torch.float32, False), (256, 64, torch.bfloat16, True)]


def _inputs(B, hw, dtype, channels_last=False, seed=0, c=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, c, hw, hw, generator=g)
    x0 = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)  # x already off x0: the ball is active
    grad = torch.randn(x.shape, generator=g) * torch.rand(B, 1, 1, 1, generator=g) * 10
    active = torch.rand(B, generator=g) > 0.3
    if B > 1:
        grad[1] = 0.0  # zero gradient: no step, no NaN
        active[1] = True
    active[0] = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    def cast(t):
        return t.to(DEVICE, dtype).contiguous(memory_format=fmt)
    return cast(x), cast(grad), cast(x0), active.to(DEVICE)


def _check(x, g, x0, active, alpha, eps, ascend=False, block=0):
    ref = pgd_step_ref(x, g, x0, active, alpha, eps, ascend=ascend)
    out = pgd_step(x, g, x0, active, alpha, eps, ascend, block=block)
    assert out.dtype == x.dtype and out.shape == x.shape and out.stride() == x.stride()
    torch.testing.assert_close(out.float(), ref.float(), **TOL[x.dtype])
    assert torch.equal(out[~active], x[~active]), "a stopped image must come back bit for bit"
    # In place, with the step counter: same values, counter += active.
    x_inplace = x.clone()
    steps = torch.full((x.shape[0],), 5, dtype=torch.int64, device=DEVICE)
    ret = pgd_step(x_inplace, g, x0, active, alpha, eps, ascend, inplace=True, steps=steps, block=block)
    assert ret is x_inplace
    torch.testing.assert_close(x_inplace.float(), ref.float(), **TOL[x.dtype])
    assert torch.equal(x_inplace[~active], x[~active])
    assert torch.equal(steps, 5 + active.long())
    return out


@pytest.mark.parametrize("B,hw,dtype,channels_last", _matrix(), ids=lambda v: str(v).replace("torch.", ""))
def test_matches_ref(B, hw, dtype, channels_last):
    x, g, x0, active = _inputs(B, hw, dtype, channels_last, seed=B * hw)
    out = _check(x, g, x0, active, alpha=0.5, eps=1.0)
    if dtype == torch.float32:  # (a bf16 rounding of every pixel may leave the ball by ~2^-9·sqrt(N))
        dist = per_example_l2_norm(out[active] - x0[active])
        assert (dist <= 1.0 + 1e-5).all(), "a moved image must end in the ε-ball around x0"
    assert out.float().min() >= 0 and out.float().max() <= 1


@pytest.mark.parametrize("eps,ascend", [(None, False), (0.05, True), (100.0, False)])
def test_projection_and_direction_variants(eps, ascend):
    """No projection, a ball so small that every step is projected, one so large that none is."""
    x, g, x0, active = _inputs(17, 37, torch.float32, seed=11)
    _check(x, g, x0, active, alpha=0.3, eps=eps, ascend=ascend)


@pytest.mark.parametrize("hw,block", [(37, 1024), (64, 4096), (80, 0)])
def test_multi_pass_path(hw, block):
    """Images that do not fit one block (or a forced small block) take the three-pass loop."""
    assert hw != 80 or 3 * hw * hw > MAX_SINGLE_BLOCK
    for dtype in DTYPES:
        x, g, x0, active = _inputs(3, hw, dtype, channels_last=dtype == torch.bfloat16, seed=hw)
        _check(x, g, x0, active, alpha=0.5, eps=1.0, block=block)
        _check(x, g, x0, active, alpha=0.5, eps=None, block=block)


def test_other_channel_counts_and_mixed_dtypes():
    """Any C×H×W; g and x0 in other dtypes and layouts than x are accepted (made to match x)."""
    x, g, x0, active = _inputs(5, 20, torch.float32, channels_last=True, seed=5, c=1)
    _check(x, g, x0, active, alpha=0.2, eps=0.5)
    x, g, x0, active = _inputs(5, 32, torch.float32, channels_last=True, seed=6)
    g_other = g.to(torch.bfloat16).contiguous()
    ref = pgd_step_ref(x, g_other, x0.contiguous(), active, 0.2, 0.5)
    out = pgd_step(x, g_other, x0.contiguous(), active, 0.2, 0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_all_inactive_and_zero_gradients():
    x, g, x0, _ = _inputs(4, 32, torch.float32)
    none = torch.zeros(4, dtype=torch.bool, device=DEVICE)
    assert torch.equal(pgd_step(x, g, x0, none, 0.5, 1.0), x)
    all_on = torch.ones(4, dtype=torch.bool, device=DEVICE)
    out = pgd_step(x, torch.zeros_like(g), x0, all_on, 0.5, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, pgd_step_ref(x, torch.zeros_like(g), x0, all_on, 0.5, 1.0), rtol=0, atol=1e-6)


def test_visible_to_torch_compile():
    x, g, x0, active = _inputs(3, 32, torch.float32)

    def step(x, g):
        out = pgd_step(x, g, x0, active, 0.5, 1.0)
        return out * 1.0

    out = torch.compile(step, backend="aot_eager", fullgraph=True)(x, g)
    torch.testing.assert_close(out, pgd_step_ref(x, g, x0, active, 0.5, 1.0), rtol=0, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    x, g, x0, active = _inputs(3, 32, torch.float32)
    with pytest.raises(CCFastError, match="one shape"):
        pgd_step(x, g[:, :, :8], x0, active, 0.5, 1.0)
    with pytest.raises(CCFastError, match="bool mask"):
        pgd_step(x, g, x0, active.long(), 0.5, 1.0)
    with pytest.raises(CCFastError, match="fp32, bf16 or fp16"):
        pgd_step(x.double(), g, x0, active, 0.5, 1.0)
    with pytest.raises(CCFastError, match="only in place"):
        pgd_step(x, g, x0, active, 0.5, 1.0, steps=torch.zeros(3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(CCFastError, match="contiguous or channels_last"):
        pgd_step(x[:, :, :, :16], g[:, :, :, :16], x0[:, :, :, :16], active, 0.5, 1.0, inplace=True)
