"""Early stopping and the projected L2 step, in fp32 (SPEC §4; the graph form of `pgd.pgd_step_ref`).

    active' = active ∧ (ℓ_fake < τ)
    x'      = active' ? clamp(Π_{B2(x0, ε)}(x − α·g/‖g‖₂), 0, 1) : x        (per example)

Scalars arrive at run time in the `params` input (one fp32 vector, `PARAM_SLOTS` order), so one graph (and
one TensorRT plan) serves every configuration. "No projection" (ε = None) is ε = +inf and "no early stop"
(τ = None) is τ = +inf: `‖δ‖ > inf` and `ℓ_fake < inf` are then never/always true. (With τ = +inf a NaN
realness would stop an example where the reference keeps it; a NaN there means the model is broken.)
With ε = +inf the projected point is x0 + (x_step − x0), equal to x_step to the last bit or one ulp off.
"""

from __future__ import annotations

import math

import numpy as np

from ..pgd import NORM_FLOOR
from .graph import GraphBuilder, Tensor

PARAM_SLOTS = ("alpha", "eps", "tau", "ell0", "c_ce", "c_sq", "c_fake", "c_lse", "c_zc", "r_logit")


def params_vector(alpha: float, eps: float | None, tau: float | None, coefficients: dict[str, float]) -> np.ndarray:
    """The `params` input for a configuration: `coefficients` from `head.head_coefficients`."""
    values = {"alpha": float(alpha), "eps": math.inf if eps is None else float(eps),
              "tau": math.inf if tau is None else float(tau), **coefficients}
    return np.array([values[k] for k in PARAM_SLOTS], dtype=np.float32)


def param_getter(gb: GraphBuilder, params: str):
    """name → a (1,)-shaped fp32 tensor holding that slot of `params` (broadcasts against (B, …))."""
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            i = PARAM_SLOTS.index(name)
            cache[name] = gb.op(
                "Slice",
                [params, gb.const([i], np.int64, "starts"), gb.const([i + 1], np.int64, "ends"), gb.axes(0)],
                f"param_{name}",
            )
        return cache[name]

    return get


def _per_example_norm(gb: GraphBuilder, t: str, hint: str) -> str:
    """‖t_i‖₂ over C×H×W, shape (B, 1, 1, 1), fp32 (`pgd.per_example_l2_norm`)."""
    sq = gb.op("Mul", [t, t], f"{hint}_sq")
    return gb.op("Sqrt", [gb.op("ReduceSum", [sq, gb.axes(1, 2, 3)], f"{hint}_sqsum", keepdims=1)], hint)


def emit_early_stop(gb: GraphBuilder, active: str, realness: str, param) -> str:
    return gb.op("And", [active, gb.op("Less", [realness, param("tau")], "below_tau")], "active_next")


def emit_step(gb: GraphBuilder, x: Tensor, x0: str, grad: Tensor, active_next: str, param) -> str:
    f32 = np.float32
    floor = gb.const(NORM_FLOOR, f32, "norm_floor")
    zero, one = gb.const(0.0, f32, "zero32"), gb.const(1.0, f32, "one")
    # g/‖g‖ with a zero step where ‖g‖ = 0 (pgd.normalize_l2).
    gnorm = _per_example_norm(gb, grad.name, "grad_norm")
    inv = gb.op("Div", [one, gb.op("Max", [gnorm, floor], "grad_norm_floored")], "grad_norm_inv")
    scale = gb.op("Where", [gb.op("Greater", [gnorm, floor], "grad_nonzero"), inv, zero], "grad_scale")
    direction = gb.op("Mul", [grad.name, scale], "direction")
    x_step = gb.op("Sub", [x.name, gb.op("Mul", [param("alpha"), direction], "step")], "x_step")
    # Π_{B2(x0, ε)} (pgd.project_l2_ball), then clamp to [0, 1].
    delta = gb.op("Sub", [x_step, x0], "delta")
    dnorm = _per_example_norm(gb, delta, "delta_norm")
    eps = param("eps")
    shrink = gb.op("Div", [eps, gb.op("Max", [dnorm, floor], "delta_norm_floored")], "shrink")
    factor = gb.op("Where", [gb.op("Greater", [dnorm, eps], "outside_ball"), shrink, one], "ball_factor")
    projected = gb.op("Add", [x0, gb.op("Mul", [delta, factor], "delta_projected")], "x_projected")
    clamped = gb.op("Clip", [projected, zero, one], "x_clamped")
    # Stopped examples keep their x bit for bit.
    mask = gb.op("Unsqueeze", [active_next, gb.axes(1, 2, 3)], "active_4d")
    return gb.op("Where", [mask, clamped, x.name], "x_next")
