"""The objective head of the step graph: J, ℓ_fake and dJ/dlogits, for every objective through one formula.

Every objective of SPEC §4 (`objectives.objective_ref`) is a linear combination of five per-example terms
of the logits z, with the realness score s ∈ {z_c, LSE(z)} chosen by a 0/1 switch r:

    J = c_ce·ℓ_CE + (c_sq/2)·(ℓ_fake − ℓ0)² + c_fake·ℓ_fake + c_lse·LSE(z) + c_zc·z_c
    s = r·z_c + (1 − r)·LSE(z),   ℓ_fake = softplus(s)

and its gradient is the same combination of the closed forms in `objective_grad_ref`
(p = softmax z, e_c the label's one-hot, ds/dz = r·e_c + (1 − r)·p):

    dJ/dz = c_ce·(p − e_c) + (c_sq·(ℓ_fake − ℓ0) + c_fake)·σ(s)·ds/dz + c_lse·p + c_zc·e_c

    objective   c_ce   c_sq   c_fake   c_lse   c_zc
    eq12        w_ce   w_d    0        0       0
    ce          1      0      0        0       0
    bce         0      0      −1       0       0
    ce-bce      w_ce   0      −w_d     0       0
    jem         0      0      0        −1      0
    logit       0      0      0        0       −1

So one exported graph serves every objective, realness reading and weight: they arrive in the `params`
input (see `step.PARAM_SLOTS`), not baked into the graph. Zero coefficients add exact zeros, so the
result matches `objective_grad_ref` to rounding.
"""

from __future__ import annotations

import numpy as np

from ..objectives import HeadParams
from .graph import GraphBuilder, Tensor

# (c_ce, c_sq, c_fake, c_lse, c_zc) per objective, as functions of the weights.
_COEFFICIENTS = {
    "eq12": lambda w_ce, w_d: (w_ce, w_d, 0.0, 0.0, 0.0),
    "ce": lambda w_ce, w_d: (1.0, 0.0, 0.0, 0.0, 0.0),
    "bce": lambda w_ce, w_d: (0.0, 0.0, -1.0, 0.0, 0.0),
    "ce-bce": lambda w_ce, w_d: (w_ce, 0.0, -w_d, 0.0, 0.0),
    "jem": lambda w_ce, w_d: (0.0, 0.0, 0.0, -1.0, 0.0),
    "logit": lambda w_ce, w_d: (0.0, 0.0, 0.0, 0.0, -1.0),
}


def head_coefficients(head: HeadParams) -> dict[str, float]:
    """The `params` slots that select the objective and realness reading (see the module docstring)."""
    c_ce, c_sq, c_fake, c_lse, c_zc = _COEFFICIENTS[head.objective](float(head.w_ce), float(head.w_d))
    return {"ell0": float(head.ell0), "c_ce": c_ce, "c_sq": c_sq, "c_fake": c_fake, "c_lse": c_lse, "c_zc": c_zc,
            "r_logit": 1.0 if head.realness == "logit" else 0.0}


def emit_head(gb: GraphBuilder, logits: Tensor, labels: str, param) -> tuple[str, str, Tensor]:
    """(J (B,), ℓ_fake (B,), dJ/dlogits (B, C)) in fp32. `param(name)` gives a (1,)-shaped slot of `params`."""
    C = logits.shape[0]
    z = logits.name
    ax1 = gb.axes(1)
    f32 = np.float32
    one = gb.const(1.0, f32, "one")
    # LSE and softmax with the row maximum subtracted (no overflow for large logits).
    zmax = gb.op("ReduceMax", [z], "z_max", axes=[1], keepdims=1)
    ez = gb.op("Exp", [gb.op("Sub", [z, zmax], "z_shifted")], "z_exp")
    sum_ez = gb.op("ReduceSum", [ez, ax1], "z_expsum", keepdims=1)
    p = gb.op("Div", [ez, sum_ez], "softmax")
    lse = gb.op("Add", [gb.op("Log", [sum_ez], "z_logsum"), zmax], "lse")  # (B, 1)
    # One-hot of the label by comparison with 0..C−1 (no Gather: simpler for every runtime).
    classes = gb.const(np.arange(C, dtype=np.int32)[None, :], np.int32, "class_ids")
    label_col = gb.op("Unsqueeze", [labels, ax1], "labels_col")
    onehot = gb.op("Cast", [gb.op("Equal", [label_col, classes], "is_label")], "onehot", to=1)
    zc = gb.op("ReduceSum", [gb.op("Mul", [z, onehot], "z_label_only"), ax1], "z_label", keepdims=1)
    r = param("r_logit")
    one_minus_r = gb.op("Sub", [one, r], "one_minus_r")
    s = gb.op("Add", [gb.op("Mul", [r, zc], "s_logit"), gb.op("Mul", [one_minus_r, lse], "s_lse")], "score")
    # softplus(s) = max(s, 0) + log(1 + e^−|s|): finite for any s (log(1 + e^s) overflows past s ≈ 88).
    tail = gb.op(
        "Log",
        [
            gb.op(
                "Add",
                [
                    one,
                    gb.op(
                        "Exp",
                        [gb.op("Sub", [gb.const(0.0, f32, "zero32"), gb.op("Abs", [s], "abs_s")], "neg_abs_s")],
                        "exp_neg_abs_s",
                    ),
                ],
                "one_plus",
            )
        ],
        "softplus_tail",
    )
    ell_fake = gb.op("Add", [gb.op("Relu", [s], "s_pos"), tail], "ell_fake")
    ce = gb.op("Sub", [lse, zc], "ce")
    dev = gb.op("Sub", [ell_fake, param("ell0")], "ell_dev")
    # J
    terms = [
        gb.op("Mul", [param("c_ce"), ce], "J_ce"),
        gb.op(
            "Mul",
            [
                gb.op("Mul", [gb.const(0.5, f32, "half"), param("c_sq")], "half_c_sq"),
                gb.op("Mul", [dev, dev], "ell_dev_sq"),
            ],
            "J_sq",
        ),
        gb.op("Mul", [param("c_fake"), ell_fake], "J_fake"),
        gb.op("Mul", [param("c_lse"), lse], "J_lse"),
        gb.op("Mul", [param("c_zc"), zc], "J_zc"),
    ]
    J = terms[0]
    for t in terms[1:]:
        J = gb.op("Add", [J, t], "J_partial")
    # dJ/dz
    ds_dz = gb.op("Add", [gb.op("Mul", [r, onehot], "ds_logit"), gb.op("Mul", [one_minus_r, p], "ds_lse")], "ds_dz")
    fake_weight = gb.op("Add", [gb.op("Mul", [param("c_sq"), dev], "c_sq_dev"), param("c_fake")], "fake_weight")
    # σ(s) = exp(s − softplus(s)): accurate in relative terms far into the tails, where ONNX Runtime's CPU
    # Sigmoid (a fast approximation) returns 0 below s ≈ −18 and so would zero a whole gradient.
    sigma = gb.op("Exp", [gb.op("Sub", [s, ell_fake], "log_sigma_s")], "sigma_s")
    dfake = gb.op("Mul", [gb.op("Mul", [fake_weight, sigma], "fake_scale"), ds_dz], "g_fake")
    g = gb.op(
        "Add", [gb.op("Mul", [param("c_ce"), gb.op("Sub", [p, onehot], "p_minus_onehot")], "g_ce"), dfake], "g_partial"
    )
    g = gb.op("Add", [g, gb.op("Mul", [param("c_lse"), p], "g_lse")], "g_partial")
    g = gb.op("Add", [g, gb.op("Mul", [param("c_zc"), onehot], "g_zc")], "grad_logits")
    J_vec = gb.op("Squeeze", [J, ax1], "J")
    ell_vec = gb.op("Squeeze", [ell_fake, ax1], "ell_fake_vec")
    return J_vec, ell_vec, Tensor(g, f32, (C,))
