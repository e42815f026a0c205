"""Per-example objectives and realness scores computed from logits (SPEC §2, §4).

These are the `_ref` functions of the fused head kernel (`kernels/objective_head.py`) and of the export's
head: every fast path is tested against them. Everything is per example: inputs (B, C) logits and (B,)
labels, outputs (B,) vectors. Nothing reduces over the batch.

Notation (SPEC §1–2): `LSE(z) = log Σ_k exp z_k`; realness score `s = z_c` (realness="logit", the paper)
or `s = LSE(z)` (realness="logsumexp", JEM); `ℓ_real = softplus(−s)`, `ℓ_fake = softplus(s)`;
`ℓ_CE = LSE(z) − z_c`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OBJECTIVES = ("eq12", "ce", "bce", "ce-bce", "jem", "logit")
REALNESS = ("logit", "logsumexp")


@dataclass(frozen=True)
class HeadParams:
    """The scalars the head needs, shared by every engine."""

    objective: str = "eq12"
    realness: str = "logit"
    w_ce: float = 1.0
    w_d: float = 1.0
    ell0: float = 0.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.realness not in REALNESS:
            raise ValueError(f"unknown realness {self.realness!r}; choose one of {REALNESS}")


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast; float64 stays float64 (finite-difference tests use it)."""
    return t if t.dtype == torch.float64 else t.float()


def realness_score_ref(logits: torch.Tensor, labels: torch.Tensor, realness: str = "logit") -> torch.Tensor:
    """s(x, c): the class logit f_c (paper, SPEC §2) or LSE(f) (JEM energy option)."""
    if realness == "logit":
        return logits.gather(1, labels[:, None]).squeeze(1)
    if realness == "logsumexp":
        return torch.logsumexp(logits, dim=1)
    raise ValueError(f"unknown realness {realness!r}")


def cross_entropy_ref(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_CE(x, c) = LSE(f(x)) − f_c(x), per example."""
    return torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None]).squeeze(1)


def loss_real_ref(score: torch.Tensor) -> torch.Tensor:
    """ℓ_real = −log σ(s) = softplus(−s): the discriminator's loss on a real image."""
    return F.softplus(-score)


def loss_fake_ref(score: torch.Tensor) -> torch.Tensor:
    """ℓ_fake = −log(1 − σ(s)) = softplus(s): large means "looks real" (SPEC §2)."""
    return F.softplus(score)


def objective_ref(logits: torch.Tensor, labels: torch.Tensor, params: HeadParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example objective J to *minimise* and the realness ℓ_fake, both (B,), fp32 math.

    - eq12:   J = w_ce·ℓ_CE + (w_d/2)·(ℓ_fake − ℓ0)²     (paper Eq. 12, sign per SPEC §4)
    - ce:     J = ℓ_CE                                     (BIGROC with a robust classifier)
    - bce:    J = −ℓ_fake
    - ce-bce: J = w_ce·ℓ_CE − w_d·ℓ_fake                   (paper Eq. 11)
    - jem:    J = E(x) = −LSE(f(x))                        (Grathwohl et al. 2019)
    - logit:  J = −f_c(x)                                  (class-logit ascent; the SGLD drift)
    The returned realness is ℓ_fake under `params.realness`; early stopping compares it with τ.
    """
    z = _at_least_fp32(logits)
    lse = torch.logsumexp(z, dim=1)
    zc = z.gather(1, labels[:, None]).squeeze(1)
    score = zc if params.realness == "logit" else lse
    ell_fake = F.softplus(score)
    ce = lse - zc
    obj = params.objective
    if obj == "eq12":
        J = params.w_ce * ce + 0.5 * params.w_d * (ell_fake - params.ell0) ** 2
    elif obj == "ce":
        J = ce
    elif obj == "bce":
        J = -ell_fake
    elif obj == "ce-bce":
        J = params.w_ce * ce - params.w_d * ell_fake
    elif obj == "jem":
        J = -lse
    elif obj == "logit":
        J = -zc
    else:  # pragma: no cover - HeadParams validates
        raise ValueError(obj)
    return J, ell_fake


def objective_grad_ref(logits: torch.Tensor, labels: torch.Tensor, params: HeadParams):
    """(J, ℓ_fake, dJ/dlogits) with the gradient written out in closed form (no autograd).

    With p = softmax(z), e_c the one-hot of the label, σ the sigmoid and s the realness score:
      dℓ_CE/dz = p − e_c;  dLSE/dz = p;  dz_c/dz = e_c;  dℓ_fake/dz = σ(s)·ds/dz, ds/dz ∈ {e_c, p}.
      eq12: w_ce(p − e_c) + w_d(ℓ_fake − ℓ0)σ(s)·ds/dz;  ce-bce: w_ce(p − e_c) − w_d σ(s)·ds/dz;
      bce: −σ(s)·ds/dz;  jem: −p;  logit: −e_c.
    The fused head kernel and the ONNX step graph implement exactly these lines.
    """
    z = _at_least_fp32(logits)
    J, ell_fake = objective_ref(z, labels, params)
    p = torch.softmax(z, dim=1)
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    lse = torch.logsumexp(z, dim=1)
    zc = z.gather(1, labels[:, None]).squeeze(1)
    score = zc if params.realness == "logit" else lse
    ds_dz = onehot if params.realness == "logit" else p
    dfake_dz = torch.sigmoid(score)[:, None] * ds_dz
    obj = params.objective
    if obj == "eq12":
        g = params.w_ce * (p - onehot) + params.w_d * (ell_fake - params.ell0)[:, None] * dfake_dz
    elif obj == "ce":
        g = p - onehot
    elif obj == "bce":
        g = -dfake_dz
    elif obj == "ce-bce":
        g = params.w_ce * (p - onehot) - params.w_d * dfake_dz
    elif obj == "jem":
        g = -p
    else:  # logit
        g = -onehot
    return J, ell_fake, g


def early_stop_active_ref(realness: torch.Tensor, active: torch.Tensor, tau: float | None) -> torch.Tensor:
    """SPEC §4: an example stays active while ℓ_fake < τ; a stopped example never restarts.

    `tau=None` disables early stopping (BIGROC, SGLD): the mask is returned unchanged.
    """
    if tau is None:
        return active
    return active & (realness < tau)
