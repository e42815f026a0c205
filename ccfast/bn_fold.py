"""Folding eval-mode BatchNorm into the convolution (or linear layer) before it: one home for the fast paths.

y = γ·(W∗x + b − μ)/√(σ²+ε) + β is again a convolution, with W' = W·γ/√(σ²+ε) per output channel and
b' = (b − μ)·γ/√(σ²+ε) + β, so the BatchNorm's own kernel (a read and a write of the activation) disappears.
The function computed is the same; fp32 rounding changes (~1e-7 relative). `fold_batchnorm` folds a whole
network in fp32 (torch.fx), for the triton engine and the plain-PyTorch recipe in benchmarks/bench_refine.py, so
the two fold the same way; `folded_conv_bn` folds one pair in a chosen precision, for the exported step graph's
weights (fp64, then rounded once). Both apply torch's `fuse_conv_bn_weights`, the one formula.
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


def folded_conv_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d | None,
                   dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of `conv` followed by eval-mode `bn`, computed in `dtype` on the CPU and detached; with `bn` None,
    the convolution's own weight and bias (zeros when it has none)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    def cast(t):
        return None if t is None else t.detach().to(device="cpu", dtype=dtype)

    w, b = cast(conv.weight), cast(conv.bias)
    if b is None:
        b = w.new_zeros(w.shape[0])
    if bn is None:
        return w, b
    w, b = fuse_conv_bn_weights(w, b, cast(bn.running_mean), cast(bn.running_var), bn.eps, cast(bn.weight),
                                cast(bn.bias))
    return w.detach(), b.detach()
