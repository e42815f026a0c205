"""The fused objective head (`ccfast.kernels.objective_head`) against its `_ref` twin:
`ccfast.objectives.objective_grad_ref` + `early_stop_active_ref`.

Runs natively on a CUDA GPU (the full B × C × dtype matrix of issue 5) and, without one, on CPU tensors
through Triton's interpreter (TRITON_INTERPRET=1, set here before the kernels are imported), with the
B=256 rows of the matrix thinned to keep the interpreter under a few seconds.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from factories import triton_kernels_or_skip

CUDA = triton_kernels_or_skip("the Triton kernels need `pip install 'ccfast[triton]'`")

from ccfast.errors import CCFastError  # noqa: E402
from ccfast.kernels.objective_head import objective_head  # noqa: E402
from ccfast.objectives import (  # noqa: E402
    OBJECTIVES,
    REALNESS,
    HeadParams,
    early_stop_active_ref,
    objective_grad_ref,
)

DEVICE = torch.device("cuda" if CUDA else "cpu")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BATCHES, CLASSES = (1, 3, 17, 256), (10, 1000, 1001)
# fp32 math on both sides: differences are summation order only. The gradient is stored in the logits'
# dtype: half-precision outputs may differ by one unit in the last place (2^-7 relative for bf16, 2^-10
# for fp16): the GPU rounds to nearest, Triton's interpreter may round toward zero.
TOL_STATS = {"rtol": 1e-5, "atol": 1e-5}
TOL_GRAD = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 2**-7, "atol": 1e-6},
            torch.float16: {"rtol": 2**-10, "atol": 1e-6}}


def _matrix():
    full = list(itertools.product(BATCHES, CLASSES, DTYPES))
    if CUDA:
        return full
    # Interpreter (one program at a time, ~10 ms each at C=1000): every small batch in full, B=256 twice.
    small = [c for c in full if c[0] != 256]
    return small + [(256, 10, torch.float32), (256, 1001, torch.bfloat16)]


def _inputs(B, C, dtype, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, C, generator=g) * scale).to(dtype)
    labels = torch.randint(0, C, (B,), generator=g)
    active = torch.rand(B, generator=g) > 0.25
    return logits.to(DEVICE), labels.to(DEVICE), active.to(DEVICE)


def _tau_away_from(realness: torch.Tensor) -> float:
    """A τ near the median realness that no example is within 1e-3 of (stop masks must agree exactly)."""
    r = torch.sort(realness.float().cpu()).values
    if len(r) == 1:
        return float(r[0]) + 0.5
    gaps = r[1:] - r[:-1]
    mid = len(r) // 2
    lo = max(0, mid - 4)
    i = lo + int(torch.argmax(gaps[lo:mid + 4]))
    return float((r[i] + r[i + 1]) / 2) if gaps[i] > 2e-3 else float(r[-1]) + 1.0


def _check(logits, labels, active, params, tau, block_c=0):
    J, real, grad, act = objective_head(logits, labels, active, params, tau, block_c=block_c)
    J_ref, real_ref, grad_ref = objective_grad_ref(logits, labels, params)
    act_ref = early_stop_active_ref(real_ref, active, tau)
    assert J.dtype == real.dtype == torch.float32 and grad.dtype == logits.dtype and act.dtype == torch.bool
    torch.testing.assert_close(J, J_ref, **TOL_STATS)
    torch.testing.assert_close(real, real_ref, **TOL_STATS)
    torch.testing.assert_close(grad.float(), grad_ref, **TOL_GRAD[logits.dtype])
    assert torch.equal(act, act_ref)
    return act


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("realness", REALNESS)
def test_every_objective_matches_ref(objective, realness):
    params = HeadParams(objective=objective, realness=realness, w_ce=0.7, w_d=1.3, ell0=2.5)
    for C in (10, 1001):
        logits, labels, active = _inputs(17, C, torch.float32, seed=C)
        _, real_ref, _ = objective_grad_ref(logits, labels, params)
        tau = _tau_away_from(real_ref)
        act = _check(logits, labels, active, params, tau)
        assert act.any() and not act.all(), "τ should split the batch so both branches of the rule run"


@pytest.mark.parametrize("B,C,dtype", _matrix(), ids=lambda v: str(v).replace("torch.", ""))
def test_shapes_and_dtypes_match_ref(B, C, dtype):
    params = HeadParams()  # eq12, logit: the paper's objective
    logits, labels, active = _inputs(B, C, dtype, seed=B * C)
    _, real_ref, _ = objective_grad_ref(logits, labels, params)
    _check(logits, labels, active, params, _tau_away_from(real_ref))
    if CUDA or B < 256:
        _check(logits, labels, active, params, None)


@pytest.mark.parametrize("C,block_c", [(1001, 256), (1000, 128), (10, 4)])
def test_multi_block_online_logsumexp(C, block_c):
    """Rows wider than one block take the online max/rescale loop; −inf logits add nothing."""
    for realness in REALNESS:
        params = HeadParams(realness=realness, ell0=1.0)
        logits, labels, active = _inputs(17, C, torch.float32, seed=C + block_c)
        logits[:, 1] = float("-inf")
        labels[labels == 1] = 0
        _check(logits, labels, active, params, 3.0, block_c=block_c)


def test_extreme_logits_are_finite_and_match():
    """Scores past torch's softplus threshold (20) and far below zero; saturated sigmoids."""
    for realness in REALNESS:
        params = HeadParams(realness=realness, ell0=3.0)
        logits, labels, active = _inputs(17, 1000, torch.float32, scale=40.0, seed=7)
        logits[0, labels[0]] = 60.0
        logits[1, labels[1]] = -90.0
        J, _real, grad, _ = objective_head(logits, labels, active, params, None)
        assert torch.isfinite(J).all() and torch.isfinite(grad).all()
        _check(logits, labels, active, params, None)


def test_inactive_rows_stay_inactive_and_tau_none_keeps_mask():
    logits, labels, _ = _inputs(17, 10, torch.float32)
    active = torch.zeros(17, dtype=torch.bool, device=DEVICE)
    _, _, _, act = objective_head(logits, labels, active, HeadParams(), tau=1e9)
    assert not act.any()
    active = torch.ones(17, dtype=torch.bool, device=DEVICE)
    _, _, _, act = objective_head(logits, labels, active, HeadParams(), tau=-1e9)
    assert not act.any()
    active[::2] = False
    _, _, _, act = objective_head(logits, labels, active, HeadParams(), tau=None)
    assert torch.equal(act, active)


def test_J_is_differentiable_through_the_fused_gradient():
    """autograd of Σ w_i J_i through the custom op = autograd through objective_ref (weights per row)."""
    from ccfast.objectives import objective_ref

    params = HeadParams(realness="logsumexp", w_ce=0.5, w_d=2.0, ell0=4.0)
    logits, labels, active = _inputs(5, 1001, torch.float32, seed=3)
    w = torch.arange(1.0, 6.0, device=DEVICE)
    z = logits.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad((objective_head(z, labels, active, params, None)[0] * w).sum(), z)
    z_ref = logits.clone().requires_grad_(True)
    (gz_ref,) = torch.autograd.grad((objective_ref(z_ref, labels, params)[0] * w).sum(), z_ref)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-5, atol=1e-6)


def test_visible_to_torch_compile():
    """The custom op traces (fake tensor) and differentiates inside a compiled graph, with no graph break."""
    params = HeadParams()
    logits, labels, active = _inputs(3, 10, torch.float32)

    def loss(z):
        J, real, _, act = objective_head(z, labels, active, params, 2.0)
        return J.sum(), real, act

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    z = logits.clone().requires_grad_(True)
    total, _real, act = compiled(z)
    (gz,) = torch.autograd.grad(total, z)
    _, real_ref, grad_ref = objective_grad_ref(logits, labels, params)
    torch.testing.assert_close(gz, grad_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(act, early_stop_active_ref(real_ref, active, 2.0))


def test_out_of_range_label_gives_nan_not_garbage():
    logits, labels, active = _inputs(3, 10, torch.float32)
    labels[1] = 10
    J, real, _, act = objective_head(logits, labels, active, HeadParams(), 2.0)
    assert torch.isnan(J[1]) and torch.isnan(real[1]) and not act[1]
    assert torch.isfinite(J[[0, 2]]).all()


def test_bad_inputs_raise_clear_errors():
    logits, labels, active = _inputs(3, 10, torch.float32)
    with pytest.raises(CCFastError, match=r"\(B, C\)"):
        objective_head(logits[0], labels, active, HeadParams(), None)
    with pytest.raises(CCFastError, match="bool"):
        objective_head(logits, labels, active.long(), HeadParams(), None)
    with pytest.raises(CCFastError, match="fp32, bf16 or fp16"):
        objective_head(logits.double(), labels, active, HeadParams(), None)
    with pytest.raises(CCFastError, match=r"\(3,\)"):
        objective_head(logits, labels[:2], active, HeadParams(), None)
