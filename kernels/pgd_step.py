"""Fused L2 PGD step: normalise, step, project onto the ε-ball, clamp, skip stopped images — one kernel.

What is fused and why. The reference (`ccfast.pgd.pgd_step_ref`) is ~15 PyTorch ops over B×C×H×W: two
per-image norms, two broadcasts, the step, the projection, the clamp, the `where` that keeps stopped images
untouched, and dtype casts. Each one reads or writes the whole batch, and at batch 1 each is a separate
launch. Here one program owns one image:

    ĝ  = g / ‖g‖₂                 (0 where ‖g‖ ≤ 1e-12: a flat objective takes no step, never NaN)
    y  = x ∓ α·ĝ                  (− descends J in refinement, + ascends a loss in training attacks)
    δ  = y − x0;   x' = x0 + δ·min(1, ε/‖δ‖₂)          Π_{B2(x0, ε)}   SPEC §3.4, §4
    x' = clamp(x', 0, 1)          (keeps ‖x' − x0‖ ≤ ε since x0 ∈ [0, 1])
    stopped images (active = 0) are not read past their flag and, in place, not written: bit-for-bit
    unchanged (SPEC §4). Optionally `steps[i] += 1` for each image that moved (the engine's step count).

Images up to `MAX_SINGLE_BLOCK` elements (3×64×64 = 12,288 fits) are held in registers: x, g and x0 are
read once and x' written once, the fewest bytes possible (16 B/pixel-channel in fp32). Larger images take
three passes over the image (‖g‖, ‖δ‖, write). All math is fp32 whatever the storage dtype (fp32, bf16,
fp16); x' is rounded once to x's dtype. Layout: the op is elementwise within an image plus per-image
sums, so any layout works in which every image is one dense block (NCHW contiguous or channels_last),
provided x, g, x0 (and the output) share it — the launcher makes g and x0 match x's strides if needed.

The `_ref` twin is `ccfast.pgd.pgd_step_ref`. Registered as `torch.ops.ccfast.pgd_step` (returns a new
tensor) and `torch.ops.ccfast.pgd_step_` (updates x, and the step counter, in place).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ccfast.errors import CCFastError
from ccfast.pgd import NORM_FLOOR

MAX_SINGLE_BLOCK = 16384


@triton.jit
def _pgd_step_kernel(
    x_ptr, g_ptr, x0_ptr, out_ptr, active_ptr, steps_ptr,
    signed_alpha, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
    HAS_EPS: tl.constexpr, INPLACE: tl.constexpr, COUNT_STEPS: tl.constexpr, NORM_FLOOR: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = row * N
    offs = tl.arange(0, BLOCK)
    moving = tl.load(active_ptr + row) != 0
    if moving:
        if SINGLE_BLOCK:
            mask = offs < N
            g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            g_norm = tl.sqrt(tl.sum(g * g, axis=0))
            g_scale = tl.where(g_norm > NORM_FLOOR, 1.0 / tl.maximum(g_norm, NORM_FLOOR), 0.0)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(x0_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            delta = (x + signed_alpha * (g * g_scale)) - x0
            if HAS_EPS:
                d_norm = tl.sqrt(tl.sum(delta * delta, axis=0))
                factor = tl.where(d_norm > eps, eps / tl.maximum(d_norm, NORM_FLOOR), 1.0)
                delta = delta * factor
            x_new = tl.minimum(tl.maximum(x0 + delta, 0.0), 1.0)
            tl.store(out_ptr + base + offs, x_new.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            # Pass 1: ‖g‖².
            acc = tl.zeros([BLOCK], tl.float32)
            for start in range(0, N, BLOCK):
                m = start + offs < N
                gb = tl.load(g_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                acc += gb * gb
            g_norm = tl.sqrt(tl.sum(acc, axis=0))
            g_scale = tl.where(g_norm > NORM_FLOOR, 1.0 / tl.maximum(g_norm, NORM_FLOOR), 0.0)
            # Pass 2: ‖δ‖² (only when projecting).
            factor = 1.0
            if HAS_EPS:
                acc = tl.zeros([BLOCK], tl.float32)
                for start in range(0, N, BLOCK):
                    m = start + offs < N
                    gb = tl.load(g_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                    xb = tl.load(x_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                    x0b = tl.load(x0_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                    db = (xb + signed_alpha * (gb * g_scale)) - x0b
                    acc += db * db
                d_norm = tl.sqrt(tl.sum(acc, axis=0))
                factor = tl.where(d_norm > eps, eps / tl.maximum(d_norm, NORM_FLOOR), 1.0)
            # Pass 3: write (recomputing δ is cheaper than storing it).
            for start in range(0, N, BLOCK):
                m = start + offs < N
                gb = tl.load(g_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                xb = tl.load(x_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                x0b = tl.load(x0_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
                db = ((xb + signed_alpha * (gb * g_scale)) - x0b) * factor
                x_new = tl.minimum(tl.maximum(x0b + db, 0.0), 1.0)
                tl.store(out_ptr + base + start + offs, x_new.to(out_ptr.dtype.element_ty), mask=m)
        if COUNT_STEPS:
            tl.store(steps_ptr + row, tl.load(steps_ptr + row) + 1)
    else:
        if not INPLACE:  # out-of-place: a stopped image is copied through unchanged
            for start in range(0, N, BLOCK):
                m = start + offs < N
                tl.store(out_ptr + base + start + offs, tl.load(x_ptr + base + start + offs, mask=m), mask=m)


def interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_pgd_step_kernel).__name__ == "InterpretedFunction"


def _dense_per_image(t: torch.Tensor) -> bool:
    """Every image is one dense block of numel/B elements (contiguous, or channels_last for 4-D)."""
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with ref's strides (a copy only when they differ)."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _validate(x, g, x0, active, steps, inplace):
    if x.ndim < 2:
        raise CCFastError(f"pgd_step: x must be (B, ...) with at least one dimension per image, got {tuple(x.shape)}")
    if g.shape != x.shape or x0.shape != x.shape:
        raise CCFastError(
            f"pgd_step: x, g and x0 must have one shape, got {tuple(x.shape)}, {tuple(g.shape)}, {tuple(x0.shape)}"
        )
    for name, t in (("x", x), ("g", g), ("x0", x0)):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise CCFastError(f"pgd_step: {name} must be fp32, bf16 or fp16, got {t.dtype}")
    if active.shape != (x.shape[0],) or active.dtype != torch.bool:
        raise CCFastError(
            f"pgd_step: active must be a bool mask of shape ({x.shape[0]},), got {active.dtype} {tuple(active.shape)}"
        )
    if steps is not None and (steps.shape != (x.shape[0],) or steps.dtype not in (torch.int32, torch.int64)):
        raise CCFastError(f"pgd_step: steps must be int32/int64 of shape ({x.shape[0]},)")
    devices = {t.device for t in (x, g, x0, active) + ((steps,) if steps is not None else ())}
    if len(devices) != 1:
        raise CCFastError(f"pgd_step: all inputs must be on one device, got {sorted(map(str, devices))}")
    if x.device.type != "cuda" and not interpreted():
        raise CCFastError("pgd_step: Triton kernels need CUDA tensors; to run them on CPU set TRITON_INTERPRET=1 "
                          "before importing ccfast.kernels")
    if inplace and not _dense_per_image(x):
        raise CCFastError("pgd_step: in place, x must be contiguous or channels_last")


def _launch(x, g, x0, active, steps, out, alpha, eps, ascend, block):
    B = x.shape[0]
    if B == 0:
        return
    N = x[0].numel()
    single = block == 0 and N <= MAX_SINGLE_BLOCK
    if block == 0:
        block = triton.next_power_of_2(N) if single else 4096
    num_warps = max(4, min(32, block // 512)) if single else 8
    _pgd_step_kernel[(B,)](
        x, g, x0, out, active.view(torch.uint8), steps if steps is not None else active,
        float(alpha if ascend else -alpha), float(eps) if eps is not None else 0.0,
        N=N, BLOCK=block, SINGLE_BLOCK=single, HAS_EPS=eps is not None, INPLACE=out is x,
        COUNT_STEPS=steps is not None, NORM_FLOOR=NORM_FLOOR, num_warps=num_warps,
    )


@torch.library.custom_op("ccfast::pgd_step", mutates_args=())
def _pgd_step_op(x: torch.Tensor, g: torch.Tensor, x0: torch.Tensor, active: torch.Tensor, alpha: float,
                 eps: float | None, ascend: bool, block: int) -> torch.Tensor:
    _validate(x, g, x0, active, None, False)
    if not _dense_per_image(x):
        x = x.contiguous()
    out = torch.empty_like(x)  # keeps x's (dense) strides
    _launch(x, _like(g, x), _like(x0, x), active, None, out, alpha, eps, ascend, block)
    return out


@_pgd_step_op.register_fake
def _(x, g, x0, active, alpha, eps, ascend, block):
    return torch.empty_like(x)


@torch.library.custom_op("ccfast::pgd_step_", mutates_args=("x", "steps"))
def _pgd_step_inplace_op(x: torch.Tensor, g: torch.Tensor, x0: torch.Tensor, active: torch.Tensor,
                         steps: torch.Tensor | None, alpha: float, eps: float | None, ascend: bool, block: int) -> None:
    _validate(x, g, x0, active, steps, True)
    _launch(x, _like(g, x), _like(x0, x), active, steps, x, alpha, eps, ascend, block)


@_pgd_step_inplace_op.register_fake
def _(x, g, x0, active, steps, alpha, eps, ascend, block):
    return None


def pgd_step(x: torch.Tensor, g: torch.Tensor, x0: torch.Tensor, active: torch.Tensor, alpha: float,
             eps: float | None, ascend: bool = False, *, inplace: bool = False,
             steps: torch.Tensor | None = None, block: int = 0) -> torch.Tensor:
    """One L2 PGD step on active images (B, ...): the fused twin of `ccfast.pgd.pgd_step_ref`.

    `inplace=True` updates x (and `steps[i] += 1` for each active image, if given) and returns x;
    otherwise a new tensor in x's dtype and layout is returned and `steps` must be None. `block` forces
    the multi-pass path with that block width (tests use it; 0 chooses).
    """
    if inplace:
        torch.ops.ccfast.pgd_step_(x, g, x0, active, steps, float(alpha), None if eps is None else float(eps),
                                   bool(ascend), int(block))
        return x
    if steps is not None:
        raise CCFastError("pgd_step: `steps` is counted only in place (inplace=True)")
    return torch.ops.ccfast.pgd_step(x, g, x0, active, float(alpha), None if eps is None else float(eps),
                                     bool(ascend), int(block))


def pgd_step_ref(x, g, x0, active, alpha, eps, ascend=False):
    """The `_ref` twin (re-exported so tests and benchmarks name both from one place)."""
    from ccfast.pgd import pgd_step_ref as ref

    return ref(x, g, x0, active, alpha, eps, ascend=ascend)
