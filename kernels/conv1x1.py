"""1×1 convolution (a GEMM in channels_last) with its pointwise work fused: forward with bias, residual,
ReLU and a bit-packed ReLU mask; input gradient with a ReLU mask applied while loading dy and/or while
storing dx, and a (gated) residual added while storing (issue 12).

What is fused and why. At 64×64 the refinement step of ResNet-50 is bound by activation traffic, not by
FLOPs, and each convolution of the compiled recipe is a cuDNN/cuBLAS call followed by separate pointwise
kernels: bias + (residual) + ReLU after the forward, then `threshold_backward` (dy ⊙ [y > 0]) and a
residual add around the input gradient, each reading and writing whole activations again, and at batch 1
each one more launch. Here each direction is one GEMM kernel whose prologue/epilogue does that work
in registers (notation of `ccfast.conv1x1`, the `_ref`):

    conv1x1_relu    pre = x @ Wᵀ + b (+ r);   y = relu(pre) -> y in x's dtype;  mask = pack(pre > 0)
                    x (M, K) rows of the channels_last input, W (N, K), b (N,), r (M, N); M = B·H·W
    conv1x1_dgrad   dx = ((dy ⊙ unpack(mask)) @ W (+ r ⊙ unpack(mask_r))) ⊙ unpack(mask_out)
                    dy (M, N), mask (M, ⌈N/32⌉) int32, W (N, K), r and dx (M, K), mask_r and
                    mask_out (M, ⌈K/32⌉); every mask optional

Where the ReLU gradient goes, measured (benchmarks/results/bench_conv1x1_h200.md). Gating dy in the
prologue (`mask`, this convolution's own ReLU) makes the A operand of the tensor-core product pass through
registers: Triton 3.6 then loads dy from shared memory with 2-byte loads, converts its layout through
shared memory with extra barriers each K step, and the H200 ran that dgrad 2-30× slower than cuDNN's.
Gating the result in the epilogue instead (`mask_out`, the ReLU of this convolution's input, i.e. the one
the layer before needs) is the same arithmetic over a chain of layers — each dgrad then receives a dy its
consumer already gated — and leaves the main loop a plain pipelined GEMM like the forward's (A and B by
cp.async into shared memory, wgmma from there; checked in the compiled SASS, not yet timed on a GPU).

Bytes saved per convolution, besides the pointwise launches: the pre-activation is never written; the
backward reads 1 bit per element of mask instead of the saved bf16 output; dy ⊙ mask and the residual sum
are never materialised. Mask layout: int32 words along the channels, bit i of word j = channel 32j + i
(`ccfast.conv1x1.pack_relu_mask`). Both kernels accumulate in fp32 (`tl.dot`): bf16/fp16 operands on
tensor cores, fp32 operands in exact fp32 ("ieee", like the engine's default tf32=0). The epilogue math is
fp32; y/dx are rounded once to the storage dtype. The mask bit is taken from the fp32 pre-activation.

Tiles: program (pid_m, pid_n) owns a BLOCK_M × BLOCK_N output tile and loops over the reduction in
BLOCK_K steps; programs are grouped along M (GROUP_M) so that the weight and activation tiles of
neighbouring programs are reused from L2. BLOCK_N (forward) and BLOCK_K (dgrad) are multiples of 32, so a
tile covers whole mask words. Block sizes are autotuned per (M, N, K) over a short Hopper list on a GPU;
under the interpreter (and when a test passes `blocks=`) one fixed configuration is used.

Registered as `torch.ops.ccfast.conv1x1_relu` and `torch.ops.ccfast.conv1x1_dgrad` (opaque to
`torch.compile`, capturable in CUDA graphs). No autograd formula: the engine calls the dgrad itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ccfast.conv1x1 import (
    BITS,
    as_rows,
    conv1x1_dgrad_ref,
    conv1x1_relu_ref,
    from_rows,
    mask_words,
    pack_relu_mask,
    unpack_relu_mask,
)
from ccfast.errors import CCFastError

__all__ = [
    "HOPPER_CONFIGS",
    "conv1x1_dgrad",
    "conv1x1_dgrad_ref",
    "conv1x1_relu",
    "conv1x1_relu_ref",
    "interpreted",
    "mask_words",
    "pack_relu_mask",
    "unpack_relu_mask",
]

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): a short list for Hopper, pruned per shape below.
HOPPER_CONFIGS = [
    (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4), (128, 128, 32, 4, 4), (64, 256, 32, 8, 3), (64, 64, 32, 4, 3),
]
INTERPRETER_BLOCKS = (32, 32, 32)  # smallest tl.dot tile that still covers whole mask words


@triton.jit
def bit_or(a, b):
    return a | b


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST (interpreter only): Triton 3.6's interpreter computes bf16 tl.dot wrongly; products of
    # bf16/fp16 values are exact in fp32, so upcasting computes the same function as the tensor cores.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program, GROUP_M row-tiles at a time, so neighbours share tiles in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    return pid_m, pid_n


@triton.jit
def unpack_bits(mask_ptr, rows, stride_mm, cols, valid):
    """(len(rows), len(cols)) bool: bit cols%32 of word cols//32 of each row's packed mask."""
    words = tl.load(mask_ptr + rows[:, None] * stride_mm + (cols // 32)[None, :], mask=valid, other=0)
    return ((words >> (cols % 32)[None, :]) & 1) != 0


@triton.jit
def _conv1x1_relu_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    r_ptr,
    y_ptr,
    mask_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_rm,
    stride_ym,
    stride_mm,
    HAS_RES: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    K_STATIC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows/columns past the end are clamped for the loads (their results are never stored), so the
    # main loop needs no row/column masks; only a ragged K is masked.
    rows_in = (offs_m % M).to(tl.int64)
    cols_in = offs_n % N
    x_ptrs = x_ptr + rows_in[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + cols_in[None, :] * stride_wn + offs_k[:, None]  # (BLOCK_K, BLOCK_N) tile of Wᵀ
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # K_STATIC (interpreter only) is K as a constant: Triton 3.6's interpreter cannot loop to a run-time
    # bound under numpy 2.4. On the GPU K stays a run-time value (no recompile per channel count).
    # (Written inline: the interpreter turns every assigned value into a tensor.)
    for k0 in range(0, K_STATIC if K_STATIC > 0 else K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            a = tl.load(x_ptrs, mask=(offs_k < K - k0)[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=(offs_k < K - k0)[:, None], other=0.0)
        acc = _dot(a, b, acc, DOT_PRECISION, UPCAST)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    # Epilogue: bias, residual, ReLU, the store, and the mask packed 32 channels to a word.
    rows = offs_m.to(tl.int64)
    valid = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    pre = acc + tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        pre += tl.load(r_ptr + rows[:, None] * stride_rm + offs_n[None, :], mask=valid, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows[:, None] * stride_ym + offs_n[None, :],
             tl.maximum(pre, 0.0).to(y_ptr.dtype.element_ty), mask=valid)
    bits = tl.where((pre > 0.0) & valid, 1, 0).to(tl.int32) << (tl.arange(0, BLOCK_N) % 32)[None, :]
    words = tl.reduce(tl.reshape(bits, (BLOCK_M, BLOCK_N // 32, 32)), 2, bit_or)  # disjoint bits: or == sum
    offs_w = pid_n * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
    tl.store(mask_ptr + rows[:, None] * stride_mm + offs_w[None, :], words,
             mask=(offs_m < M)[:, None] & (offs_w < tl.cdiv(N, 32))[None, :])


@triton.jit
def _conv1x1_dgrad_kernel(
    dy_ptr, mask_ptr, w_ptr, r_ptr, rmask_ptr, omask_ptr, dx_ptr,
    M, N, K, stride_dym, stride_mm, stride_wk, stride_rm, stride_rmm, stride_omm, stride_dxm,
    HAS_MASK: tl.constexpr, HAS_RES: tl.constexpr, HAS_RES_MASK: tl.constexpr, HAS_OUT_MASK: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, K_STATIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # GEMM names: output dx (M, N = Cin), reduction over K = Cout:
    #     dx = ((dy ⊙ m)(M, K) @ W(K, N) + r ⊙ m_r) ⊙ m_out          (each mask optional)
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_in = (offs_m % M).to(tl.int64)
    cols_in = offs_n % N
    dy_ptrs = dy_ptr + rows_in[:, None] * stride_dym + offs_k[None, :]
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols_in[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # K_STATIC (interpreter only) is K as a constant: Triton 3.6's interpreter cannot loop to a run-time
    # bound under numpy 2.4. On the GPU K stays a run-time value (no recompile per channel count).
    # (Written inline: the interpreter turns every assigned value into a tensor.)
    for k0 in range(0, K_STATIC if K_STATIC > 0 else K, BLOCK_K):
        # Prologue: the ReLU mask gates dy as it is loaded (dy ⊙ mask is never written).
        if EVEN_K:
            in_k = tl.full((BLOCK_K,), 1, tl.int1)
            a = tl.load(dy_ptrs)
            b = tl.load(w_ptrs)
        else:
            in_k = offs_k < K - k0
            a = tl.load(dy_ptrs, mask=in_k[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=in_k[:, None], other=0.0)
        if HAS_MASK:
            keep = unpack_bits(mask_ptr, rows_in, stride_mm, k0 + offs_k, in_k[None, :])
            a = tl.where(keep, a, 0.0).to(dy_ptr.dtype.element_ty)
        acc = _dot(a, b, acc, DOT_PRECISION, UPCAST)
        dy_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue: the residual gradient, gated by its own mask, added before the one store.
    rows = offs_m.to(tl.int64)
    valid = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if HAS_RES:
        r = tl.load(r_ptr + rows[:, None] * stride_rm + offs_n[None, :], mask=valid, other=0.0).to(tl.float32)
        if HAS_RES_MASK:
            r = tl.where(unpack_bits(rmask_ptr, rows, stride_rmm, offs_n, valid), r, 0.0)
        acc += r
    if HAS_OUT_MASK:  # the ReLU of this convolution's input, for the layer before (see the module docstring)
        acc = tl.where(unpack_bits(omask_ptr, rows, stride_omm, offs_n, valid), acc, 0.0)
    tl.store(dx_ptr + rows[:, None] * stride_dxm + offs_n[None, :], acc.to(dx_ptr.dtype.element_ty), mask=valid)


def interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_conv1x1_relu_kernel).__name__ == "InterpretedFunction"


def _prune(n_out: str, k_red: str):
    """Drop configurations whose tiles are far larger than the problem (a 256-wide tile over 64 channels)."""
    def prune(configs, named_args, **kwargs):
        M, N, K = named_args["M"], named_args[n_out], named_args[k_red]
        fits = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(M))
                and c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(N))
                and c.kwargs["BLOCK_K"] <= max(32, triton.next_power_of_2(K))]
        return fits or configs[-1:]
    return prune


def _autotuned(kernel, flags):
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
               for m, n, k, w, s in HOPPER_CONFIGS]
    return triton.autotune(configs, key=["M", "N", "K", "EVEN_K", *flags],
                           prune_configs_by={"early_config_prune": _prune("N", "K")})(kernel)


_FWD_TUNED = None if interpreted() else _autotuned(_conv1x1_relu_kernel, ["HAS_RES"])
_DGRAD_TUNED = None if interpreted() else _autotuned(_conv1x1_dgrad_kernel,
                                                     ["HAS_MASK", "HAS_RES", "HAS_RES_MASK", "HAS_OUT_MASK"])


def _run(kernel, tuned, grid_mn, k_red, blocks, args, **constexprs):
    """Launch over a (M, N) output with reduction length k_red: the autotuned configuration (GPU,
    blocks=None) or one fixed (BLOCK_M, BLOCK_N, BLOCK_K)."""
    M, N = grid_mn
    if blocks is None and tuned is not None:
        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
        tuned[grid](
            *args, EVEN_K=k_red % 64 == 0, UPCAST=False, K_STATIC=0, **constexprs
        )  # every tuned BLOCK_K divides 64
        return
    bm, bn, bk = blocks or INTERPRETER_BLOCKS
    if bn % BITS or bk % BITS:
        raise CCFastError(f"conv1x1: blocks {blocks} must have BLOCK_N and BLOCK_K multiples of {BITS}")
    kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        *args, EVEN_K=k_red % bk == 0, UPCAST=interpreted(),
        K_STATIC=k_red if interpreted() else 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, **constexprs,
        num_warps=4, num_stages=3)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # (ignored for bf16/fp16 operands)


def check_operands(name: str, tensors: dict, dtype: torch.dtype) -> None:
    dev = next(iter(tensors.values())).device
    for key, t in tensors.items():
        if t.device != dev:
            raise CCFastError(f"{name}: all inputs must be on one device, got {key} on {t.device}, not {dev}")
    if dev.type != "cuda" and not interpreted():
        raise CCFastError(f"{name}: Triton kernels need CUDA tensors; to run them on CPU set TRITON_INTERPRET=1 "
                          "before importing ccfast.kernels")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise CCFastError(f"{name}: activations must be fp32, bf16 or fp16, got {dtype}")


def unit_stride_rows(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride along its last dimension (the kernels index rows by their stride)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _shape_error(name: str, what: str, got, want) -> CCFastError:
    return CCFastError(f"{name}: {what} must have shape {tuple(want)}, got {tuple(got)}")


@torch.library.custom_op("ccfast::conv1x1_relu", mutates_args=())
def _conv1x1_relu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                     blocks: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or weight.ndim != 2 or weight.shape[1] != x.shape[1] or x.shape[1] == 0:
        raise CCFastError(f"conv1x1_relu: x (M, K) and weight (N, K) expected, got {tuple(x.shape)}, "
                          f"{tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    if bias.shape != (N,):
        raise _shape_error("conv1x1_relu", "bias", bias.shape, (N,))
    if residual is not None and residual.shape != (M, N):
        raise _shape_error("conv1x1_relu", "residual", residual.shape, (M, N))
    named = {"x": x, "weight": weight, "bias": bias} | ({"residual": residual} if residual is not None else {})
    check_operands("conv1x1_relu", named, x.dtype)
    if weight.dtype != x.dtype:
        raise CCFastError(f"conv1x1_relu: weight dtype {weight.dtype} must match x's {x.dtype}")
    x, weight = unit_stride_rows(x), unit_stride_rows(weight)
    residual = unit_stride_rows(residual) if residual is not None else None
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mask = torch.empty((M, mask_words(N)), dtype=torch.int32, device=x.device)
    if M == 0 or N == 0:
        return y, mask
    r = residual if residual is not None else y
    _run(_conv1x1_relu_kernel, _FWD_TUNED, (M, N), K, blocks,
         (x, weight, bias, r, y, mask, M, N, K, x.stride(0), weight.stride(0), r.stride(0), y.stride(0),
          mask.stride(0)), HAS_RES=residual is not None, DOT_PRECISION=_precision(x.dtype))
    return y, mask


@_conv1x1_relu_op.register_fake
def _(x, weight, bias, residual, blocks):
    M, N = x.shape[0], weight.shape[0]
    return x.new_empty((M, N)), x.new_empty((M, mask_words(N)), dtype=torch.int32)


@torch.library.custom_op("ccfast::conv1x1_dgrad", mutates_args=())
def _conv1x1_dgrad_op(dy: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor, residual: torch.Tensor | None,
                      residual_mask: torch.Tensor | None, out_mask: torch.Tensor | None,
                      blocks: list[int] | None) -> torch.Tensor:
    if dy.ndim != 2 or weight.ndim != 2 or weight.shape[0] != dy.shape[1] or dy.shape[1] == 0:
        raise CCFastError(f"conv1x1_dgrad: dy (M, N) and weight (N, K) expected, got {tuple(dy.shape)}, "
                          f"{tuple(weight.shape)}")
    M, N = dy.shape
    K = weight.shape[1]
    for name, m, channels in (("mask", mask, N), ("residual_mask", residual_mask, K), ("out_mask", out_mask, K)):
        if m is not None and (m.shape != (M, mask_words(channels)) or m.dtype != torch.int32):
            raise CCFastError(f"conv1x1_dgrad: {name} must be int32 of shape {(M, mask_words(channels))}, got "
                              f"{m.dtype} {tuple(m.shape)}")
    if residual is None and residual_mask is not None:
        raise CCFastError("conv1x1_dgrad: residual_mask needs a residual")
    if residual is not None and residual.shape != (M, K):
        raise _shape_error("conv1x1_dgrad", "residual", residual.shape, (M, K))
    named = {"dy": dy, "weight": weight} | {k: v for k, v in (("mask", mask), ("residual", residual),
                                                              ("residual_mask", residual_mask),
                                                              ("out_mask", out_mask)) if v is not None}
    check_operands("conv1x1_dgrad", named, dy.dtype)
    if weight.dtype != dy.dtype:
        raise CCFastError(f"conv1x1_dgrad: weight dtype {weight.dtype} must match dy's {dy.dtype}")
    dy, weight = unit_stride_rows(dy), unit_stride_rows(weight)
    dx = torch.empty((M, K), dtype=dy.dtype, device=dy.device)
    if M == 0 or K == 0:
        return dx
    # Absent optional tensors are passed as a dummy pointer their constexpr flag keeps unread.
    m = unit_stride_rows(mask) if mask is not None else dx
    r = unit_stride_rows(residual) if residual is not None else dx
    rm = unit_stride_rows(residual_mask) if residual_mask is not None else dx
    om = unit_stride_rows(out_mask) if out_mask is not None else dx
    # Kernel GEMM names: output columns N := Cin (= K here), reduction K := Cout (= N here).
    _run(_conv1x1_dgrad_kernel, _DGRAD_TUNED, (M, K), N, blocks,
         (dy, m, weight, r, rm, om, dx, M, K, N, dy.stride(0), m.stride(0), weight.stride(0), r.stride(0),
          rm.stride(0), om.stride(0), dx.stride(0)),
         HAS_MASK=mask is not None, HAS_RES=residual is not None, HAS_RES_MASK=residual_mask is not None,
         HAS_OUT_MASK=out_mask is not None, DOT_PRECISION=_precision(dy.dtype))
    return dx


@_conv1x1_dgrad_op.register_fake
def _(dy, mask, weight, residual, residual_mask, out_mask, blocks):
    return dy.new_empty((dy.shape[0], weight.shape[1]))


def to_rows(t: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """A 4-D (B, C, H, W) tensor as its channels_last rows (M, C) — a view when it is channels_last — and
    the (B, H, W) to fold results back; a 2-D tensor as it is."""
    if t.ndim == 2:
        return t, None
    if t.ndim != 4:
        raise CCFastError(f"conv1x1: activations must be (M, C) or (B, C, H, W), got {tuple(t.shape)}")
    B, _, H, W = t.shape
    return as_rows(t), (B, H, W)


def fold_rows(rows: torch.Tensor, bhw: tuple | None) -> torch.Tensor:
    """(M, C) rows back to (B, C, H, W) in channels_last (a view), or as they are."""
    return rows if bhw is None else from_rows(rows, bhw)


def _weight2d(weight: torch.Tensor) -> torch.Tensor:
    if weight.ndim == 4:
        if weight.shape[2:] != (1, 1):
            raise CCFastError(f"conv1x1: weight must be (Cout, Cin) or (Cout, Cin, 1, 1), got {tuple(weight.shape)}")
        return weight.flatten(1)
    return weight


def conv1x1_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None,
                 *, blocks: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(relu(x @ Wᵀ + b (+ r)), packed mask of pre > 0): the fused twin of `ccfast.conv1x1.conv1x1_relu_ref`.

    x is (M, Cin) rows, or (B, Cin, H, W) (best channels_last: then no copy); weight (Cout, Cin[, 1, 1]) in
    x's dtype; bias (Cout,) any float dtype; residual like the output. Returns y shaped like x with Cout
    channels (4-D: channels_last) in x's dtype, and the mask (M, ⌈Cout/32⌉) int32. `blocks` forces one
    (BLOCK_M, BLOCK_N, BLOCK_K) instead of autotuning (tests use it).
    """
    rows, bhw = to_rows(x)
    res = to_rows(residual)[0] if residual is not None else None
    y, mask = torch.ops.ccfast.conv1x1_relu(rows, _weight2d(weight), bias, res, list(blocks) if blocks else None)
    return fold_rows(y, bhw), mask


def conv1x1_dgrad(dy: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor,
                  residual: torch.Tensor | None = None, residual_mask: torch.Tensor | None = None, *,
                  out_mask: torch.Tensor | None = None, blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """((dy ⊙ mask) @ W + residual ⊙ residual_mask) ⊙ out_mask: the fused twin of `ccfast.conv1x1.conv1x1_dgrad_ref`.

    dy is (M, Cout) rows or (B, Cout, H, W); mask the one `conv1x1_relu` returned, or None when dy is
    already gated (the producer applied it); weight (Cout, Cin[, 1, 1]); residual like dx (Cin channels);
    residual_mask and out_mask (M, ⌈Cin/32⌉) int32 or None. Returns dx shaped like dy with Cin channels
    (4-D: channels_last) in dy's dtype.
    """
    rows, bhw = to_rows(dy)
    res = to_rows(residual)[0] if residual is not None else None
    dx = torch.ops.ccfast.conv1x1_dgrad(rows, mask, _weight2d(weight), res, residual_mask, out_mask,
                                        list(blocks) if blocks else None)
    return fold_rows(dx, bhw)
