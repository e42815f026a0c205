"""The L2 PGD step and its projection (SPEC §3.4, §4): the `_ref` of `kernels/pgd_step.py`.

One implementation serves the training attacks (which ascend a loss) and refinement (which descends J):

    x ← clamp( Π_{B2(x0, ε)}( x ∓ α · g / ‖g‖₂ ), 0, 1 )

with ‖·‖₂ per example over C×H×W. Examples whose `active` flag is False are returned untouched, bit for
bit. A zero gradient gives a zero step (no NaN). Clamping after projection keeps ‖x − x0‖ ≤ ε because
x0 ∈ [0, 1]^n and clamping only moves coordinates toward it.
"""

from __future__ import annotations

from typing import Callable

import torch

# Guard for ‖g‖ = 0 (an image whose objective is flat): the step is then 0, not NaN.
NORM_FLOOR = 1e-12


def per_example_l2_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t_i‖₂ over all non-batch dimensions, shape (B,), accumulated in fp32."""
    return t.float().flatten(1).norm(dim=1)


def broadcast_per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector v, shape (B,), viewed as (B, 1, …, 1) so that it broadcasts against `like`."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def normalize_l2(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖₂ per example; zero where ‖g‖ = 0."""
    n = per_example_l2_norm(g)
    scale = torch.where(n > NORM_FLOOR, 1.0 / n.clamp_min(NORM_FLOOR), torch.zeros_like(n))
    return g.float() * broadcast_per_example(scale, g)


def project_l2_ball(x: torch.Tensor, x0: torch.Tensor, eps: float | None) -> torch.Tensor:
    """Π_{B2(x0, ε)}(x): scale x − x0 back onto the ε-ball when it lies outside. `eps=None`: identity."""
    if eps is None:
        return x
    delta = x.float() - x0.float()
    n = per_example_l2_norm(delta)
    factor = torch.where(n > eps, eps / n.clamp_min(NORM_FLOOR), torch.ones_like(n))
    return x0.float() + delta * broadcast_per_example(factor, delta)


def pgd_step_ref(
    x: torch.Tensor,
    g: torch.Tensor,
    x0: torch.Tensor,
    active: torch.Tensor,
    alpha: float,
    eps: float | None,
    ascend: bool = False,
) -> torch.Tensor:
    """One normalised L2 step, projection onto B2(x0, ε), clamp to [0, 1]; inactive rows unchanged.

    fp32 math, result in x's dtype. `ascend=True` moves along +g (training attacks), else along −g.
    """
    direction = normalize_l2(g)
    step = alpha if ascend else -alpha
    x_new = project_l2_ball(x.float() + step * direction, x0, eps).clamp_(0.0, 1.0).to(x.dtype)
    return torch.where(broadcast_per_example(active, x), x_new, x)


def pgd_l2(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int,
    alpha: float,
    eps: float | None,
    ascend: bool,
    active_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run up to `steps` L2 PGD steps on a per-example loss (B,); returns (x, steps_taken).

    `loss_fn(x)` returns per-example losses; gradients are of their *sum*, so each example's step does
    not depend on the batch size (SPEC §3.4). `active_fn(x, active)` (optional) returns the mask of
    examples that still move, evaluated before each step; a stopped example never moves again.
    """
    x = x0.detach().clone()
    if random_start and eps is not None:
        noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float32).to(x.device)
        noise = normalize_l2(noise) * eps * broadcast_per_example(
            torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device), x
        )
        x = (x0.float() + noise).clamp(0, 1).to(x0.dtype)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    steps_taken = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for _ in range(steps):
        if active_fn is not None:
            active = active_fn(x, active)
            if not bool(active.any()):
                break
        x_req = x.detach().requires_grad_(True)
        loss = loss_fn(x_req)
        (g,) = torch.autograd.grad(loss.sum(), x_req)
        x = pgd_step_ref(x.detach(), g, x0, active, alpha, eps, ascend=ascend)
        steps_taken += active.long()
    return x.detach(), steps_taken
