"""Fused objective head: logits -> (J, ℓ_fake, dJ/dlogits, early-stop mask) in one kernel per row.

What is fused and why. Between the network's forward and its input-gradient backward, the reference does
~20 small PyTorch ops on (B, C) logits (logsumexp, gather, softplus, the objective, softmax, one-hot, the
closed-form gradient, the early-stop compare): each reads or writes B×C floats and, at small batch, each
is a separate launch of a few microseconds. This kernel reads each row of logits once (online max /
log-sum-exp, Milakov & Gimelshein 2018), computes every per-example quantity in fp32 registers, and
writes dJ/dlogits once in the logits' dtype, ready for the backward pass:

    LSE = m + log Σ_k exp(z_k − m)                            (m = running max: no overflow in bf16/fp16)
    s   = z_c (realness "logit", paper) or LSE ("logsumexp", JEM)              SPEC §2
    ℓ_fake = softplus(s),  ℓ_CE = LSE − z_c,  σ = sigmoid(s)
    J   per objective (SPEC §4; `ccfast.objectives.objective_ref`)
    dJ/dz = a·softmax(z) + b·e_c,  with (a, b) per objective, e.g. eq12 with s = z_c:
            a = w_ce,  b = −w_ce + w_d·(ℓ_fake − ℓ0)·σ                        (objective_grad_ref)
    active' = active ∧ (ℓ_fake < τ)                                            SPEC §4 early stop

The `_ref` twin is `ccfast.objectives.objective_grad_ref` followed by `early_stop_active_ref`.
Registered as `torch.ops.ccfast.objective_head` with an autograd formula, so `J.sum()` differentiates
through it (the backward is `grad_J[:, None] · dJ/dlogits`, the gradient the kernel already wrote).
Only J is differentiable; the realness, the gradient and the mask are statistics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ccfast.errors import CCFastError
from ccfast.objectives import OBJECTIVES, REALNESS, HeadParams

OBJECTIVE_IDS = {name: i for i, name in enumerate(OBJECTIVES)}  # eq12, ce, bce, ce-bce, jem, logit
_EQ12, _CE, _BCE, _CE_BCE, _JEM, _LOGIT = (OBJECTIVE_IDS[k] for k in ("eq12", "ce", "bce", "ce-bce", "jem", "logit"))
MAX_BLOCK_C = 4096  # one row up to this many classes stays in registers; larger rows loop over blocks


@triton.jit
def _softplus(s):
    # log(1 + e^s) = max(s, 0) + log1p(e^−|s|); torch returns s itself above 20 (its threshold).
    u = tl.exp(-tl.abs(s))
    log1p_u = tl.where(u < 1e-3, u * (1.0 - u * (0.5 - u / 3.0)), tl.log(1.0 + u))
    return tl.where(s > 20.0, s, tl.maximum(s, 0.0) + log1p_u)


@triton.jit
def _objective_head_kernel(
    logits_ptr, labels_ptr, active_ptr,
    J_ptr, realness_ptr, grad_ptr, active_out_ptr,
    stride_logits, stride_grad,
    w_ce, w_d, ell0, tau,
    C: tl.constexpr, BLOCK_C: tl.constexpr,
    OBJECTIVE: tl.constexpr, REALNESS_LSE: tl.constexpr, HAS_TAU: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = logits_ptr + row * stride_logits
    g_row = grad_ptr + row * stride_grad
    offs = tl.arange(0, BLOCK_C)
    label = tl.load(labels_ptr + row).to(tl.int64)
    # An out-of-range label reads nothing and turns J into NaN (the Refiner validates labels first).
    valid = (label >= 0) & (label < C)
    z_c = tl.load(z_row + label, mask=valid, other=float("nan")).to(tl.float32)

    # Row max and Σ exp(z − max): one read of the row.
    if C <= BLOCK_C:
        z = tl.load(z_row + offs, mask=offs < C, other=float("-inf")).to(tl.float32)
        m = tl.max(z, axis=0)
        s = tl.sum(tl.exp(z - m), axis=0)
    else:
        m_vec = tl.full([BLOCK_C], float("-inf"), tl.float32)
        s_vec = tl.zeros([BLOCK_C], tl.float32)
        for start in range(0, C, BLOCK_C):
            zb = tl.load(z_row + start + offs, mask=start + offs < C, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m_vec, zb)
            # Lanes still at −inf (masked tail, or −inf logits) must add 0, not exp(−inf + inf) = NaN.
            rescale = tl.where(m_vec == m_new, 1.0, tl.exp(m_vec - m_new))
            s_vec = s_vec * rescale + tl.where(zb == float("-inf"), 0.0, tl.exp(zb - m_new))
            m_vec = m_new
        m = tl.max(m_vec, axis=0)
        s = tl.sum(tl.where(m_vec == float("-inf"), 0.0, s_vec * tl.exp(m_vec - m)), axis=0)
    lse = m + tl.log(s)

    if REALNESS_LSE:
        score = lse
    else:
        score = z_c
    ell_fake = _softplus(score)
    sig = 1.0 / (1.0 + tl.exp(-score))
    ce = lse - z_c

    # J and the coefficients of dJ/dz = a·softmax(z) + b·e_c (objective_grad_ref, line by line).
    if OBJECTIVE == 0:  # eq12: w_ce·ℓ_CE + (w_d/2)(ℓ_fake − ℓ0)²
        J = w_ce * ce + 0.5 * w_d * (ell_fake - ell0) * (ell_fake - ell0)
        d_fake = w_d * (ell_fake - ell0) * sig
        a = w_ce + (d_fake if REALNESS_LSE else 0.0)
        b = -w_ce + (0.0 if REALNESS_LSE else d_fake)
    elif OBJECTIVE == 1:  # ce
        J = ce
        a = 1.0
        b = -1.0
    elif OBJECTIVE == 2:  # bce: −ℓ_fake
        J = -ell_fake
        a = -sig if REALNESS_LSE else 0.0
        b = 0.0 if REALNESS_LSE else -sig
    elif OBJECTIVE == 3:  # ce-bce (Eq. 11): w_ce·ℓ_CE − w_d·ℓ_fake
        J = w_ce * ce - w_d * ell_fake
        a = w_ce - (w_d * sig if REALNESS_LSE else 0.0)
        b = -w_ce - (0.0 if REALNESS_LSE else w_d * sig)
    elif OBJECTIVE == 4:  # jem: −LSE
        J = -lse
        a = -1.0
        b = 0.0
    else:  # logit: −z_c
        J = -z_c
        a = 0.0
        b = -1.0

    if C <= BLOCK_C:
        g = a * tl.exp(z - lse) + tl.where(offs == label, b, 0.0)
        tl.store(g_row + offs, g.to(grad_ptr.dtype.element_ty), mask=offs < C)
    else:
        for start in range(0, C, BLOCK_C):
            idx = start + offs
            zb = tl.load(z_row + idx, mask=idx < C, other=float("-inf")).to(tl.float32)
            g = a * tl.exp(zb - lse) + tl.where(idx == label, b, 0.0)
            tl.store(g_row + idx, g.to(grad_ptr.dtype.element_ty), mask=idx < C)

    tl.store(J_ptr + row, J)
    tl.store(realness_ptr + row, ell_fake)
    act = tl.load(active_ptr + row) != 0
    if HAS_TAU:
        act = act & (ell_fake < tau)  # NaN realness stops the example, as in the reference
    tl.store(active_out_ptr + row, act.to(tl.uint8))


def interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_objective_head_kernel).__name__ == "InterpretedFunction"


def _check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise CCFastError(f"objective_head: all inputs must be on one device, got {t.device} and {dev}")
    if dev.type != "cuda" and not interpreted():
        raise CCFastError(
            "objective_head: Triton kernels need CUDA tensors; to run them on CPU set TRITON_INTERPRET=1 "
            "before importing ccfast.kernels"
        )


def _launch(logits, labels, active, objective, realness, w_ce, w_d, ell0, tau, block_c):
    if logits.ndim != 2:
        raise CCFastError(f"objective_head: logits must be (B, C), got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise CCFastError(f"objective_head: logits must be fp32, bf16 or fp16, got {logits.dtype}")
    B, C = logits.shape
    if labels.shape != (B,) or active.shape != (B,):
        raise CCFastError(
            f"objective_head: labels and active must be ({B},), got {tuple(labels.shape)}, {tuple(active.shape)}"
        )
    if active.dtype != torch.bool:
        raise CCFastError(f"objective_head: active must be a bool mask, got {active.dtype}")
    if objective not in OBJECTIVE_IDS or realness not in REALNESS:
        raise CCFastError(f"objective_head: unknown objective {objective!r} or realness {realness!r}")
    _check_device(logits, labels, active)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    J = torch.empty(B, dtype=torch.float32, device=logits.device)
    real = torch.empty(B, dtype=torch.float32, device=logits.device)
    grad = torch.empty((B, C), dtype=logits.dtype, device=logits.device)
    active_out = torch.empty(B, dtype=torch.bool, device=logits.device)
    if B == 0:
        return J, real, grad, active_out
    block = block_c or min(triton.next_power_of_2(C), MAX_BLOCK_C)
    _objective_head_kernel[(B,)](
        logits, labels, active.view(torch.uint8),
        J, real, grad, active_out.view(torch.uint8),
        logits.stride(0), grad.stride(0),
        float(w_ce), float(w_d), float(ell0), float(tau) if tau is not None else 0.0,
        C=C, BLOCK_C=block, OBJECTIVE=OBJECTIVE_IDS[objective], REALNESS_LSE=realness == "logsumexp",
        HAS_TAU=tau is not None, num_warps=4 if block <= 1024 else 8,
    )
    return J, real, grad, active_out


@torch.library.custom_op("ccfast::objective_head", mutates_args=())
def _objective_head_op(
    logits: torch.Tensor, labels: torch.Tensor, active: torch.Tensor, objective: str, realness: str,
    w_ce: float, w_d: float, ell0: float, tau: float | None, block_c: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(logits, labels, active, objective, realness, w_ce, w_d, ell0, tau, block_c)


@_objective_head_op.register_fake
def _(logits, labels, active, objective, realness, w_ce, w_d, ell0, tau, block_c):
    B, C = logits.shape
    f32 = {"dtype": torch.float32, "device": logits.device}
    return (logits.new_empty(B, **f32), logits.new_empty(B, **f32),
            logits.new_empty((B, C)), active.new_empty(B))


def _setup_context(ctx, inputs, output):
    _J, real, grad, active_out = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(real, grad, active_out)


def _backward(ctx, grad_J, grad_real, grad_grad, grad_active):
    (dJ_dlogits,) = ctx.saved_tensors
    # J_i depends on row i only: d(Σ_i w_i J_i)/dz_i = w_i · dJ_i/dz_i.
    return (dJ_dlogits * grad_J[:, None]).to(dJ_dlogits.dtype), None, None, None, None, None, None, None, None, None


_objective_head_op.register_autograd(_backward, setup_context=_setup_context)


def objective_head(
    logits: torch.Tensor, labels: torch.Tensor, active: torch.Tensor, params: HeadParams,
    tau: float | None, *, block_c: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J, ℓ_fake, dJ/dlogits, active') for logits (B, C) fp32/bf16/fp16, labels int64 (B,), active bool (B,).

    J and ℓ_fake are fp32 (B,); dJ/dlogits has the logits' dtype; active' = active ∧ (ℓ_fake < τ)
    (τ=None: active unchanged). `block_c` forces the class-block width (a power of two; tests use it to
    exercise the multi-block loop). J is differentiable with respect to the logits.
    """
    return torch.ops.ccfast.objective_head(
        logits, labels, active, params.objective, params.realness, float(params.w_ce), float(params.w_d),
        float(params.ell0), None if tau is None else float(tau), int(block_c),
    )


def objective_head_ref(logits, labels, active, params: HeadParams, tau: float | None):
    """The `_ref` twin: `objective_grad_ref` then `early_stop_active_ref` (fp32 math)."""
    from ccfast.objectives import early_stop_active_ref, objective_grad_ref

    J, real, grad = objective_grad_ref(logits, labels, params)
    return J, real, grad, early_stop_active_ref(real, active, tau)
