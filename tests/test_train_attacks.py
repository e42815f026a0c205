"""Training attacks (SPEC §3.1–2): equal to the `pgd_l2` reference loop, the right direction, ε bounds,
the paired early stop, and the attack-step schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ccfast.models import JointModel
from ccfast.objectives import loss_fake_ref, loss_real_ref, realness_score_ref
from ccfast.pgd import pgd_l2
from ccfast.training.attacks import attack_fake, attack_pair, attack_real, paired_keep_going, random_start
from ccfast.training.config import TrainConfig
from factories import random_batch
from factories import tiny_eval_model as _tiny_eval_model

ATOL = 1e-6  # same ops in the same order on CPU; a hair of slack for BLAS scheduling


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(real=["r"], fake=["g"], out="o", **kw)


def _batch(n=6, **kw):
    return random_batch(n, **kw)


def _loss_real(model, c, realness="logit"):
    return lambda x: loss_real_ref(realness_score_ref(model(x), c, realness))


def _loss_fake(model, c, realness="logit"):
    return lambda x: loss_fake_ref(realness_score_ref(model(x), c, realness))


@pytest.mark.parametrize("realness", ["logit", "logsumexp"])
def test_real_attack_equals_pgd_l2_reference(realness):
    model, (x, c) = _tiny_eval_model(), _batch()
    cfg = _cfg(realness=realness, real_eps=0.5, real_step=0.2, real_steps=4)
    ours = attack_real(model, x, c, cfg)
    ref, ref_steps = pgd_l2(_loss_real(model, c, realness), x, 4, 0.2, 0.5, ascend=True)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=ATOL)
    assert ours.steps_taken.tolist() == ref_steps.tolist() == [4] * len(x)


def test_real_attack_random_start_equals_pgd_l2_reference():
    model, (x, c) = _tiny_eval_model(), _batch()
    cfg = _cfg(real_eps=1.0, real_step=0.25, real_steps=3)
    g = torch.Generator().manual_seed(5)
    start = random_start(x, 1.0, torch.randn(x.shape, generator=g), torch.rand(len(x), generator=g))
    ours = attack_real(model, x, c, cfg, start=start)
    ref, _ = pgd_l2(_loss_real(model, c), x, 3, 0.25, 1.0, ascend=True, random_start=True,
                    generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=ATOL)
    assert not torch.equal(ours.images, attack_real(model, x, c, cfg).images)  # the start mattered


def test_fake_attack_with_paired_stop_equals_pgd_l2_with_active_fn():
    model, (x, c) = _tiny_eval_model(), _batch()
    cfg = _cfg(fake_eps=10.0, fake_step=0.1)
    s0 = realness_score_ref(model(x), c).detach()
    s_ref = s0 + torch.linspace(-0.2, 1.5, len(x))  # some stop at once, some later, some never
    ours = attack_fake(model, x, c, cfg, steps=8, score_real_attacked=s_ref)

    def active_fn(xx, active):
        with torch.no_grad():
            return active & (realness_score_ref(model(xx), c) <= s_ref)

    ref, ref_steps = pgd_l2(_loss_fake(model, c), x, 8, 0.1, 10.0, ascend=True, active_fn=active_fn)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=ATOL)
    assert ours.steps_taken.tolist() == ref_steps.tolist()
    assert 0 < len(set(ours.steps_taken.tolist())) > 1  # the case mixes stopped and running examples


def test_attacks_raise_their_losses_and_respect_eps():
    model, (x, c) = _tiny_eval_model(), _batch(n=8)
    # small steps: first-order regime, so every single example's loss must rise
    small = _cfg(real_eps=1.0, real_step=0.02, real_steps=3)
    xr = attack_real(model, x, c, small).images
    assert (_loss_real(model, c)(xr) > _loss_real(model, c)(x)).all()
    xg = attack_fake(model, x, c, _cfg(fake_step=0.02), steps=3, score_real_attacked=None).images
    assert (_loss_fake(model, c)(xg) > _loss_fake(model, c)(x)).all()
    # the SPEC step sizes with a binding ε: every example ends on or inside the ball, inside [0, 1]
    for result, eps in ((attack_real(model, x, c, _cfg(real_eps=0.3, real_step=0.25, real_steps=4)), 0.3),
                        (attack_fake(model, x, c, _cfg(fake_eps=0.15, fake_step=0.1), 5, None), 0.15)):
        dist = (result.images - x).flatten(1).norm(dim=1)
        assert float(dist.max()) <= eps * (1 + 1e-5)
        assert float(dist.max()) >= 0.99 * eps  # the projection was active
        assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1


def _linear_model():
    """s(x, c) = w·x with w = 1/√48 everywhere (both classes): each normalised step of length α moves s by α."""
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    with torch.no_grad():
        backbone[1].weight.fill_(1 / math.sqrt(48))
        backbone[1].bias.zero_()
    return JointModel(backbone, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()


def test_paired_early_stop_compares_with_the_attacked_real_image_of_the_same_index():
    """Generated image i stops once s(x̂_g,i) > s(x̂_r,i). Reals sit at constants c_i; the real attack (4 × 0.25)
    lowers their score by exactly 1.0; generated images start at s0 = 0.5·√48 and gain 0.1 per step (budget 10)."""
    model = _linear_model()
    s0 = 0.5 * math.sqrt(48)
    targets = [s0 - 0.5, s0 + 0.25, s0 + 0.75, s0 + 2.0]  # attacked real scores
    expected_steps = [0, 3, 8, 10]  # smallest k with s0 + 0.1k > target, capped at the budget
    xr = torch.stack([torch.full((3, 4, 4), (t + 1.0) / math.sqrt(48)) for t in targets])
    xg = torch.full((4, 3, 4, 4), 0.5)
    cr, cg = torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    cfg = _cfg()  # SPEC defaults: real ε 1.0 / 0.25 × 4, fake ε 10 / 0.1, early stop on
    out = attack_pair(model, xr, cr, xg, cg, cfg, fake_steps=10)

    torch.testing.assert_close(out.score_real, torch.tensor(targets), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        out.score_real, realness_score_ref(model(out.real.images), cr).detach(), rtol=0, atol=1e-6
    )
    assert out.fake.steps_taken.tolist() == expected_steps
    assert out.fake.stopped_early.tolist() == [True, True, True, False]
    assert torch.equal(out.fake.images[0], xg[0])  # beaten before the first step: untouched, bit for bit

    flipped = attack_pair(model, xr.flip(0), cr, xg, cg, cfg, fake_steps=10)  # pairing follows the index
    assert flipped.fake.steps_taken.tolist() == expected_steps[::-1]

    no_stop = attack_pair(model, xr, cr, xg, cg, cfg.replace(fake_early_stop=False), fake_steps=10)
    assert no_stop.score_real is None and no_stop.fake.steps_taken.tolist() == [10] * 4


def test_paired_rule_is_strict():
    """D(x̂_g) equal to D(x̂_r) is not "more real": the example keeps going."""
    keep = paired_keep_going(torch.tensor([0, 0, 0]), torch.tensor([1.0, 1.0, 1.0]), "logit")
    logits = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]])
    assert keep(logits).tolist() == [True, True, False]


def test_fake_attack_step_schedule():
    cfg = _cfg(fake_steps_start=5, fake_steps_every=1000, fake_steps_max=8)
    assert [cfg.fake_attack_steps(t) for t in (0, 999, 1000, 1999, 2000, 2999, 3000, 10**6)] == [5, 5, 6, 6, 7, 7, 8, 8]
    assert _cfg().fake_attack_steps(0) == 5 and _cfg().fake_attack_steps(1000) == 6  # SPEC defaults


def test_learning_rate_schedule_defaults():
    # SPEC §3.5: lr 1e-5, × 0.1 from iteration 4,000. The trainer feeds these to MultiStepLR; the rates it
    # actually applies per iteration are checked in test_train_run.py (test_resume_continues_exactly's log).
    cfg = _cfg()
    assert (cfg.lr, cfg.lr_milestones, cfg.lr_gamma) == (1e-5, [4000], 0.1)
