"""`--verify`: one step of the exported graph under ONNX Runtime (CPU) against the PyTorch reference.

The reference is the model's autograd input gradient of `objectives.objective_ref`, early stopping by
`early_stop_active_ref` and the step by `pgd.pgd_step_ref`, on a few random images, for every objective.
Tolerances: fp32 graph, |Δx| ≤ 1e-4 and |ΔJ|, |Δℓ_fake| ≤ 1e-4·max(1, |J|); fp16 network, the step's direction
within 0.99 cosine of the reference and J, ℓ_fake within 2e-2·max(1, |J|).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import require
from ..objectives import OBJECTIVES, HeadParams, early_stop_active_ref, objective_ref
from ..pgd import pgd_step_ref
from .build import read_graph_metadata
from .head import head_coefficients
from .step import params_vector


@dataclass
class VerifyReport:
    dtype: str
    rows: list = field(default_factory=list)  # (objective, max|Δx|, step cosine, rel ΔJ, rel Δℓ, masks equal)
    ok: bool = True

    def summary(self) -> str:
        worst = lambda i, f: f(r[i] for r in self.rows)  # noqa: E731
        return (
            f"verify ({self.dtype}, {len(self.rows)} objectives): max|Δx| {worst(1, max):.2e}, min step cosine "
            f"{worst(2, min):.6f}, max rel ΔJ {worst(3, max):.2e}, max rel Δℓ_fake {worst(4, max):.2e}, "
            f"active masks {'equal' if all(r[5] for r in self.rows) else 'DIFFER'} -> {'ok' if self.ok else 'FAILED'}"
        )


def reference_step(model, x, x0, labels, active, head: HeadParams, alpha, eps, tau):
    """(x_next, active_next, J, ℓ_fake) of one refinement step from the package's reference functions."""
    x_req = x.detach().clone().requires_grad_(True)
    J, realness = objective_ref(model(x_req), labels, head)
    (g,) = torch.autograd.grad(J.sum(), x_req)
    active_next = early_stop_active_ref(realness.detach(), active, tau)
    return pgd_step_ref(x, g, x0, active_next, alpha, eps), active_next, J.detach(), realness.detach()


def verify_graph(onnx_path, model, info, batch: int = 4, seed: int = 0) -> VerifyReport:
    ort = require("onnxruntime", "onnx", "--verify")
    meta = read_graph_metadata(onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    H, W = info.image_size
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, H, W, generator=g)
    x = (x0 + 0.02 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    labels = torch.randint(0, info.num_classes, (batch,), generator=g)
    active = torch.ones(batch, dtype=torch.bool)
    active[0] = False
    model = model.cpu().float().eval()
    report = VerifyReport(dtype=meta["dtype"])
    for objective in OBJECTIVES:
        head = HeadParams(objective=objective, realness=info.realness, ell0=float(info.ell0 or 0.0))
        ref_x, ref_act, ref_J, ref_r = reference_step(model, x, x0, labels, active, head, 0.1, 1.5, None)
        params = params_vector(0.1, 1.5, None, head_coefficients(head))
        out = sess.run(None, {"x": x.numpy(), "x0": x0.numpy(), "labels": labels.numpy().astype(np.int32),
                              "active": active.numpy(), "params": params})
        ox, oact, oJ, orr = (torch.from_numpy(o) for o in out)
        scale = ref_J.abs().clamp_min(1.0)
        d_ref, d_out = (ref_x - x).flatten(1), (ox - x).flatten(1)
        moved = d_ref.norm(dim=1) > 0
        cos = (
            torch.nn.functional.cosine_similarity(d_ref[moved], d_out[moved], dim=1).min().item()
            if moved.any()
            else 1.0
        )
        row = (objective, (ox - ref_x).abs().max().item(), cos, ((oJ - ref_J).abs() / scale).max().item(),
               ((orr - ref_r).abs() / ref_r.abs().clamp_min(1.0)).max().item(), bool((oact == ref_act).all()))
        report.rows.append(row)
        if meta["dtype"] == "fp32":
            good = row[1] <= 1e-4 and row[3] <= 1e-4 and row[4] <= 1e-4
        else:
            good = row[2] >= 0.99 and row[3] <= 2e-2 and row[4] <= 2e-2
        report.ok = report.ok and good and row[5]
    return report
