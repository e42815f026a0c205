"""The two training attacks (SPEC §3.1–2): L2 PGD that *ascends* a per-example loss, with the step and
projection of `ccfast.pgd.pgd_step_ref` (the one implementation shared with refinement).

- real images ascend ℓ_real = softplus(−s): they are pushed away from looking real (ε 1.0, α 0.25, 4 steps);
  with `real_attack="ce"` they ascend ℓ_CE(x, c_r) instead, the attack of Madry et al.'s adversarial training
  that makes BIGROC's robust classifier (SPEC §4 baseline): same ε, step, steps and random start;
- generated images ascend ℓ_fake = softplus(s): they are pushed toward looking real (ε 10, α 0.1, a growing
  number of steps), and generated image i stops once D(x̂_g,i) > D(x̂_r,i) — its realness beats that of the
  *attacked* real image with the same batch index (the real attack runs first).

`attack_l2` is `ccfast.pgd.pgd_l2` with two differences, both for the training loop: one forward per step
serves both the stopping rule and the gradient (pgd_l2's `active_fn` would need a second forward), and the
random start is drawn by the caller, so that DDP ranks can slice one draw for the global batch and match a
single process. `tests/test_train_attacks.py` checks it against `pgd_l2`.

The model must be in eval mode (BatchNorm on running statistics): then each example's gradient depends on
that example alone, and the gradient of the summed loss is the per-example gradient (SPEC §3.4).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..objectives import cross_entropy_ref, loss_fake_ref, loss_real_ref, realness_score_ref
from ..pgd import broadcast_per_example, normalize_l2, pgd_step_ref


@dataclass
class AttackResult:
    images: torch.Tensor        # attacked images, detached, in the input's dtype
    steps_taken: torch.Tensor   # (B,) int64
    stopped_early: torch.Tensor  # (B,) bool: left the loop before the step budget ran out


def random_start(x0: torch.Tensor, eps: float, noise: torch.Tensor, radius_fraction: torch.Tensor) -> torch.Tensor:
    """A uniform-radius random start in B2(x0, ε), clamped to [0, 1]: the same rule as `pgd_l2`'s
    (direction = normalised Gaussian `noise`, radius = ε·`radius_fraction`)."""
    delta = normalize_l2(noise.to(x0.device)) * eps * broadcast_per_example(radius_fraction.to(x0.device), x0)
    return (x0.float() + delta).clamp(0, 1).to(x0.dtype)


def attack_l2(
    model: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    loss_from_logits: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    alpha: float,
    eps: float | None,
    start: torch.Tensor | None = None,
    keep_going: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> AttackResult:
    """Up to `steps` ascent steps x ← clamp(Π_{B2(x0,ε)}(x + α·g/‖g‖₂), 0, 1) on a per-example loss.

    `loss_from_logits(logits)` gives (B,) losses; the gradient is that of their sum. `keep_going(logits)` (optional)
    says, before each step and from the same forward, which examples may still move; a stopped example never
    moves again. `start` (optional) is where the iterate begins (a random start), projection stays around x0.
    """
    x = (x0 if start is None else start).detach()
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    steps_taken = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for _ in range(steps):
        x_req = x.detach().requires_grad_(True)
        with autocast():
            logits = model(x_req)
        logits = logits.float()
        if keep_going is not None:
            active = active & keep_going(logits.detach())
            if not bool(active.any()):
                break
        (g,) = torch.autograd.grad(loss_from_logits(logits).sum(), x_req)
        x = pgd_step_ref(x.detach(), g, x0, active, alpha, eps, ascend=True)
        steps_taken += active.long()
    return AttackResult(images=x.detach(), steps_taken=steps_taken, stopped_early=steps_taken < steps)


def real_attack_loss(labels: torch.Tensor, real_attack: str, realness: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-example loss the real-image attack ascends, from logits:
    "realness": ℓ_real(x, c) = softplus(−s(x, c)) (SPEC §3.1: push real images away from "real");
    "ce":       ℓ_CE(x, c) = LSE(f(x)) − f_c(x) (Madry et al. 2018: push them toward misclassification)."""
    if real_attack == "realness":
        return lambda logits: loss_real_ref(realness_score_ref(logits, labels, realness))
    if real_attack == "ce":
        return lambda logits: cross_entropy_ref(logits, labels)
    raise ValueError(f"unknown real_attack {real_attack!r}")


def attack_real(model, x_real, labels, cfg, start=None, autocast=contextlib.nullcontext) -> AttackResult:
    """SPEC §3.1: ascend ℓ_real (or ℓ_CE with `cfg.real_attack == "ce"`) within the ε-ball around each real image."""
    loss = real_attack_loss(labels, cfg.real_attack, cfg.realness)
    return attack_l2(model, x_real, loss, cfg.real_steps, cfg.real_step, cfg.real_eps, start=start, autocast=autocast)


def paired_keep_going(labels_fake: torch.Tensor, score_real_attacked: torch.Tensor, realness: str):
    """SPEC §3.2 paired early stop: generated image i keeps moving while D(x̂_g,i) ≤ D(x̂_r,i), i.e. it stops once
    it looks more real than the attacked real image with the same batch index. D = σ(s) is increasing, so the
    scores are compared directly (σ saturates to 1.0 in float where the scores still differ)."""
    def keep_going(logits_fake):
        return realness_score_ref(logits_fake, labels_fake, realness) <= score_real_attacked

    return keep_going


def attack_fake(model, x_fake, labels, cfg, steps: int, score_real_attacked: torch.Tensor | None,
                autocast=contextlib.nullcontext) -> AttackResult:
    """SPEC §3.2: ascend ℓ_fake(x, c) = softplus(s(x, c)) — make generated images look real. With
    `score_real_attacked` (s of the attacked real image paired by index) the paired early stop applies."""
    def loss(logits):
        return loss_fake_ref(realness_score_ref(logits, labels, cfg.realness))

    keep_going = None
    if score_real_attacked is not None:
        if score_real_attacked.shape[0] != x_fake.shape[0]:
            raise ValueError("the paired early stop needs as many real as generated images in a batch")
        keep_going = paired_keep_going(labels, score_real_attacked, cfg.realness)
    return attack_l2(model, x_fake, loss, steps, cfg.fake_step, cfg.fake_eps, keep_going=keep_going, autocast=autocast)


@dataclass
class PairedAttack:
    real: AttackResult
    fake: AttackResult
    score_real: torch.Tensor | None  # s(x̂_r, c_r) that generated image i was compared with (None: no early stop)


def attack_pair(model, x_real, labels_real, x_fake, labels_fake, cfg, fake_steps: int, real_start=None,
                autocast=contextlib.nullcontext) -> PairedAttack:
    """SPEC §3.1–2 in order: attack the real images, score the *attacked* real images, then attack the generated
    images with generated image i paired with real image i (same batch index) for the early stop."""
    real = attack_real(model, x_real, labels_real, cfg, start=real_start, autocast=autocast)
    score_real = (
        realness_scores(model, real.images, labels_real, cfg.realness, autocast) if cfg.fake_early_stop else None
    )
    fake = attack_fake(model, x_fake, labels_fake, cfg, fake_steps, score_real, autocast=autocast)
    return PairedAttack(real=real, fake=fake, score_real=score_real)


@torch.no_grad()
def realness_scores(model, x, labels, realness: str, autocast=contextlib.nullcontext) -> torch.Tensor:
    """s(x, c) per example (fp32), e.g. of the attacked real images for the pairing."""
    with autocast():
        logits = model(x)
    return realness_score_ref(logits.float(), labels, realness)
