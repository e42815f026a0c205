"""Folding eval-mode BatchNorm into the convolution (or linear layer) before it: one home for the fast paths.

y = γ·(W∗x + b − μ)/√(σ²+ε) + β is again a convolution, with W' = W·γ/√(σ²+ε) per output channel and
b' = (b − μ)·γ/√(σ²+ε) + β, so the BatchNorm's own kernel (a read and a write of the activation) disappears.
The function computed is the same; fp32 rounding changes (~1e-7 relative). Used by the triton engine and by
the plain-PyTorch recipe in benchmarks/bench_refine.py, so the two fold the same way.
"""

from __future__ import annotations

import torch


def fold_batchnorm(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(a copy of `net` with Conv/Linear → BatchNorm pairs folded, "on"), or (`net` unchanged, why not).

    `net` must be in eval mode (folding uses the running statistics). torch.fx traces the network; a network
    fx cannot trace keeps its BatchNorms, which gives the same results, only slower."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(net), "on"
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not folded", never a wrong network
        return net, f"skipped: {type(exc).__name__}: {exc}"
