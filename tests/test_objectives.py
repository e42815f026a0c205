"""Objective values against hand computations; closed-form dJ/dlogits against autograd; input gradients
through a model against float64 finite differences (SPEC §2, §4)."""

import math

import pytest
import torch

from ccfast.objectives import (
    OBJECTIVES,
    HeadParams,
    cross_entropy_ref,
    early_stop_active_ref,
    loss_fake_ref,
    loss_real_ref,
    objective_grad_ref,
    objective_ref,
    realness_score_ref,
)


def softplus(t):
    return math.log1p(math.exp(t))


def test_hand_computed_two_class_case():
    z = torch.tensor([[1.0, 3.0]])
    c = torch.tensor([0])
    lse = math.log(math.exp(1) + math.exp(3))
    assert cross_entropy_ref(z, c).item() == pytest.approx(lse - 1.0, rel=1e-6)
    assert realness_score_ref(z, c, "logit").item() == pytest.approx(1.0)
    assert realness_score_ref(z, c, "logsumexp").item() == pytest.approx(lse, rel=1e-6)
    assert loss_fake_ref(torch.tensor([1.0])).item() == pytest.approx(softplus(1.0), rel=1e-6)
    assert loss_real_ref(torch.tensor([1.0])).item() == pytest.approx(softplus(-1.0), rel=1e-6)
    ce, fake = lse - 1.0, softplus(1.0)
    ell0 = 0.5
    expected = {
        "eq12": 2.0 * ce + 0.5 * 3.0 * (fake - ell0) ** 2,
        "ce": ce,
        "bce": -fake,
        "ce-bce": 2.0 * ce - 3.0 * fake,
        "jem": -lse,
        "logit": -1.0,
    }
    for obj, want in expected.items():
        J, r = objective_ref(z, c, HeadParams(obj, "logit", w_ce=2.0, w_d=3.0, ell0=ell0))
        assert J.item() == pytest.approx(want, rel=1e-6), obj
        assert r.item() == pytest.approx(fake, rel=1e-6)
    J, r = objective_ref(z, c, HeadParams("eq12", "logsumexp", ell0=ell0))
    assert r.item() == pytest.approx(softplus(lse), rel=1e-6)
    assert J.item() == pytest.approx(ce + 0.5 * (softplus(lse) - ell0) ** 2, rel=1e-6)


def test_eq12_pulls_realness_to_ell0_not_beyond():
    # SPEC §4: the realness term is (ℓ_fake − ℓ0)², minimal at ℓ_fake = ℓ0: its logit gradient changes sign there.
    c = torch.tensor([0])
    for zc, sign in ((-2.0, -1), (6.0, +1)):
        z = torch.tensor([[zc, 0.0]])
        ell0 = softplus(2.0)
        _, fake, g = objective_grad_ref(z, c, HeadParams("eq12", w_ce=0.0, ell0=ell0))
        assert math.copysign(1, g[0, 0].item()) == sign


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("realness", ["logit", "logsumexp"])
def test_closed_form_logit_gradient_matches_autograd(objective, realness):
    torch.manual_seed(0)
    z = (torch.randn(7, 13, dtype=torch.float64) * 4).requires_grad_(True)
    c = torch.randint(0, 13, (7,))
    p = HeadParams(objective, realness, w_ce=0.7, w_d=1.3, ell0=1.1)
    J, r, g = objective_grad_ref(z.detach(), c, p)
    J2, r2 = objective_ref(z, c, p)
    (g_auto,) = torch.autograd.grad(J2.sum(), z)
    torch.testing.assert_close(J, J2.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r, r2.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_auto, rtol=1e-10, atol=1e-12)


def test_objectives_are_per_example():
    torch.manual_seed(1)
    z = torch.randn(5, 10)
    c = torch.randint(0, 10, (5,))
    J, r = objective_ref(z, c, HeadParams())
    J1, r1 = objective_ref(z[2:3], c[2:3], HeadParams())
    assert J[2] == J1[0] and r[2] == r1[0]


def test_large_logits_stay_finite():
    z = torch.tensor([[1000.0, -1000.0, 0.0]])
    c = torch.tensor([1])
    for obj in OBJECTIVES:
        J, r, g = objective_grad_ref(z, c, HeadParams(obj, ell0=3.0))
        assert torch.isfinite(J).all() and torch.isfinite(r).all() and torch.isfinite(g).all(), obj


def test_early_stop_rule():
    r = torch.tensor([0.5, 2.0, 1.0, 3.0])
    active = torch.tensor([True, True, False, True])
    assert early_stop_active_ref(r, active, 1.0).tolist() == [True, False, False, False]
    assert early_stop_active_ref(r, active, None).tolist() == active.tolist()


@pytest.mark.parametrize("objective", ["eq12", "ce", "jem", "ce-bce"])
def test_input_gradient_against_float64_finite_differences(objective):
    from ccfast.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 10).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    c = torch.tensor([3, 7])
    p = HeadParams(objective, ell0=0.9)
    xr = x.clone().requires_grad_(True)
    J, _ = objective_ref(model(xr), c, p)
    (g,) = torch.autograd.grad(J.sum(), xr)
    gen = torch.Generator().manual_seed(5)
    h = 1e-6
    for _ in range(12):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            Jp, _ = objective_ref(model(x + h * d), c, p)
            Jm, _ = objective_ref(model(x - h * d), c, p)
        fd = (Jp - Jm).sum() / (2 * h)
        assert float((g * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
