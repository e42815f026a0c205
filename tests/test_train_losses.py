"""The training loss (SPEC §3.3): each term against a hand computation, and gradients through every term
(regression test for the official code's detached BCE terms)."""

from __future__ import annotations

import math

import pytest
import torch

from ccfast.models import build_model
from ccfast.training.losses import REAL_TERM_NAMES, TERM_NAMES, LossWeights, joint_loss

LOGITS_REAL = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
LABELS_REAL = [0, 2]
LOGITS_FAKE = [[1.0, 1.0, 1.0], [-0.5, 0.25, 4.0]]
LABELS_FAKE = [1, 2]


def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def _softplus(t):
    return math.log1p(math.exp(t))


def _hand_terms(realness):
    def score(row, c):
        return row[c] if realness == "logit" else _lse(row)

    def mean(values):
        return sum(values) / len(values)

    return {
        "ce_real": mean([_lse(r) - r[c] for r, c in zip(LOGITS_REAL, LABELS_REAL, strict=True)]),
        "ce_fake": mean([_lse(r) - r[c] for r, c in zip(LOGITS_FAKE, LABELS_FAKE, strict=True)]),
        "bce_real": mean([_softplus(-score(r, c)) for r, c in zip(LOGITS_REAL, LABELS_REAL, strict=True)]),  # −log σ(s)
        "bce_fake": mean(
            [_softplus(score(r, c)) for r, c in zip(LOGITS_FAKE, LABELS_FAKE, strict=True)]
        ),  # −log(1 − σ(s))
    }


@pytest.mark.parametrize("realness", ["logit", "logsumexp"])
def test_each_term_and_the_weighted_total_match_a_hand_computation(realness):
    weights = LossWeights(ce_real=0.5, ce_fake=2.0, bce_real=3.0, bce_fake=0.25)
    out = joint_loss(torch.tensor(LOGITS_REAL), torch.tensor(LABELS_REAL), torch.tensor(LOGITS_FAKE),
                     torch.tensor(LABELS_FAKE), weights, realness)
    hand = _hand_terms(realness)
    for name in TERM_NAMES:
        assert float(out.terms[name]) == pytest.approx(hand[name], rel=1e-6, abs=1e-6), name
    expected_total = 0.5 * hand["ce_real"] + 2.0 * hand["ce_fake"] + 3.0 * hand["bce_real"] + 0.25 * hand["bce_fake"]
    assert float(out.total) == pytest.approx(expected_total, rel=1e-6)
    # the logged scores are the realness readings of each half
    expected_scores = [2.0, -2.0] if realness == "logit" else [_lse(r) for r in LOGITS_REAL]
    assert out.score_real.tolist() == pytest.approx(expected_scores, rel=1e-6)


@pytest.mark.parametrize("realness", ["logit", "logsumexp"])
def test_without_generated_images_only_the_real_terms_exist(realness):
    """A robust classifier (no generated images): CE(x̂_r) and ℓ_real(x̂_r) only; generated-image weights are moot."""
    weights = LossWeights(ce_real=0.5, ce_fake=2.0, bce_real=3.0, bce_fake=0.25)
    out = joint_loss(torch.tensor(LOGITS_REAL), torch.tensor(LABELS_REAL), None, None, weights, realness)
    hand = _hand_terms(realness)
    assert set(out.terms) == set(REAL_TERM_NAMES) and out.score_fake is None
    for name in REAL_TERM_NAMES:
        assert float(out.terms[name]) == pytest.approx(hand[name], rel=1e-6, abs=1e-6), name
    assert float(out.total) == pytest.approx(0.5 * hand["ce_real"] + 3.0 * hand["bce_real"], rel=1e-6)


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = build_model("tiny", 3, width=4).train()
    xr, xg = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    cr, cg = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    return model, xr, cr, xg, cg


def _grads(model, weights, realness="logit"):
    model.zero_grad(set_to_none=True)
    _, xr, cr, xg, cg = _model_and_batch()
    logits = model(torch.cat([xr, xg]))
    joint_loss(logits[:4], cr, logits[4:], cg, weights, realness).total.backward()
    return {k: p.grad.clone() if p.grad is not None else None for k, p in model.named_parameters()}


@pytest.mark.parametrize("term", TERM_NAMES)
def test_every_term_alone_reaches_every_parameter_tensor(term):
    model, *_ = _model_and_batch()
    only = LossWeights(**{name: float(name == term) for name in TERM_NAMES})
    grads = _grads(model, only)
    for name, g in grads.items():
        assert g is not None and float(g.norm()) > 0, f"{term} sends no gradient to {name}"


def test_total_gradient_is_the_weighted_sum_of_the_term_gradients():
    """If a term were detached (the official code's defect) it would be missing from the total's gradient."""
    model, *_ = _model_and_batch()
    w = {"ce_real": 0.7, "ce_fake": 1.3, "bce_real": 2.0, "bce_fake": 0.4}
    total = _grads(model, LossWeights(**w))
    parts = {t: _grads(model, LossWeights(**{n: float(n == t) for n in TERM_NAMES})) for t in TERM_NAMES}
    for name in total:
        expected = sum(w[t] * parts[t][name] for t in TERM_NAMES)
        torch.testing.assert_close(total[name], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("term, half, sign", [("bce_real", "real", +1), ("bce_fake", "fake", -1)])
def test_descending_the_bce_terms_moves_realness_the_right_way(term, half, sign):
    """ℓ_real trains real images toward "real" (s up), ℓ_fake trains generated images toward "fake" (s down)."""
    model, xr, cr, xg, cg = _model_and_batch()
    model.eval()  # running statistics: the score before and after depends on the weights only
    only = LossWeights(**{name: float(name == term) for name in TERM_NAMES})

    def scores():
        logits = model(torch.cat([xr, xg]))
        return joint_loss(logits[:4], cr, logits[4:], cg, only)

    before = scores()
    before.total.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
        after = scores()
    moved = (getattr(after, f"score_{half}") - getattr(before, f"score_{half}")).mean()
    assert sign * float(moved) > 0, f"{term}: mean score of the {half} half moved by {float(moved)}"
    assert float(after.total) < float(before.total.detach())
