"""The reference engine (`--engine torch`): readable fp32 PyTorch, the spec of record (SPEC §4).

PGD refinement, per example:
    active ← ℓ_fake(x) < τ  (checked before every step, on the current x; a stopped example stays stopped)
    x      ← clamp(Π_{B2(x0, ε)}(x − α·∇J/‖∇J‖₂), 0, 1)   for active examples only
SGLD (paper Algorithm 3): x ← x + α·∇f_c(x) + σ·ε_t, ε_t ~ N(0, I), T steps, no projection, clamp at the end.

Each loop iteration does one forward pass; the last forward, at the final x, gives the final statistics,
so T steps cost T+1 forwards and T backwards.
"""

from __future__ import annotations

import contextlib

import torch

from ..objectives import early_stop_active_ref, objective_ref
from ..pgd import pgd_step_ref
from .base import Engine, RefineResult

# SGLD noise is drawn per example from a generator seeded by (seed, global index), on the CPU, so the
# same example gets the same noise whatever the batch, chunk, rank or device.
_SEED_STRIDE = 1_000_003


def sgld_noise(indices: torch.Tensor, seed: int, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """N(0, I) noise for each example at one step: (B, *shape) float32 on the CPU."""
    out = torch.empty((len(indices), *shape), dtype=torch.float32)
    g = torch.Generator()
    for row, idx in enumerate(indices.tolist()):
        g.manual_seed((seed * _SEED_STRIDE + idx) * 4099 + step)
        out[row] = torch.randn(shape, generator=g)
    return out


@contextlib.contextmanager
def strict_fp32():
    """The reference is fp32 through and through: PyTorch lets cuDNN convolutions use TF32 by default on
    Ampere and later GPUs, so switch TF32 off (convolutions and matmuls) while refining, and restore after."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


class TorchEngine(Engine):
    name = "torch"
    methods = ("pgd", "sgld")

    def _objective(self, x: torch.Tensor, labels: torch.Tensor):
        logits = self.model(x)
        return objective_ref(logits, labels, self.scalars.head)

    def refine_batch(self, x0, labels, indices):
        x0 = x0.float()
        with strict_fp32():
            if self.config.method == "sgld":
                return self._sgld(x0, labels, indices)
            return self._pgd(x0, labels)

    def _pgd(self, x0, labels):
        cfg, tau = self.config, self.scalars.tau
        B = x0.shape[0]
        x = x0.clone()
        active = torch.ones(B, dtype=torch.bool, device=x0.device)
        steps = torch.zeros(B, dtype=torch.int64, device=x0.device)
        for t in range(cfg.steps + 1):
            x_req = x.detach().requires_grad_(True)
            J, realness = self._objective(x_req, labels)
            if t == 0:
                J_init, r_init = J.detach(), realness.detach()
            active = early_stop_active_ref(realness.detach(), active, tau)
            if t == cfg.steps or not bool(active.any()):
                break
            (g,) = torch.autograd.grad(J.sum(), x_req)
            x = pgd_step_ref(x, g, x0, active, cfg.alpha, cfg.eps)
            steps += active.long()
        J, realness = J.detach(), realness.detach()
        stopped = realness >= tau if tau is not None else torch.zeros_like(active)
        return RefineResult(x.detach(), steps, r_init, realness, J_init, J, stopped, labels)

    def _sgld(self, x0, labels, indices):
        cfg = self.config
        x = x0.clone()
        with torch.no_grad():
            J_init, r_init = self._objective(x0, labels)
        for t in range(cfg.steps):
            x_req = x.detach().requires_grad_(True)
            J, _ = self._objective(x_req, labels)  # J = −f_c
            (g,) = torch.autograd.grad(J.sum(), x_req)
            noise = sgld_noise(indices, cfg.seed, t, tuple(x.shape[1:])).to(x.device)
            x = x.detach() - cfg.alpha * g + cfg.sigma * noise
        x = x.clamp(0.0, 1.0)
        with torch.no_grad():
            J, realness = self._objective(x, labels)
        steps = torch.full_like(labels, cfg.steps)
        stopped = torch.zeros_like(labels, dtype=torch.bool)
        return RefineResult(x, steps, r_init, realness, J_init, J, stopped, labels)
