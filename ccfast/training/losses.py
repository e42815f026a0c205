"""The training loss on attacked images (SPEC §3.3), built from the per-example `_ref` functions.

    L = w_ce_real·mean ℓ_CE(x̂_r, c_r) + w_ce_fake·mean ℓ_CE(x̂_g, c_g)
      + w_real·mean ℓ_real(x̂_r, c_r)  + w_fake·mean ℓ_fake(x̂_g, c_g)

with ℓ_real = softplus(−s) (real images trained toward "real") and ℓ_fake = softplus(s) (generated images
trained toward "fake"), s the realness score (class logit or LSE). Every term stays in the autograd graph:
the released official code detaches its BCE terms, so only CE on real images trains there (SPEC §3, known
defects); `tests/test_train_losses.py` guards against that regression.

Without generated images (a robust classifier, `mode="robust-classifier"`) the two generated-image terms are not
computed: L = w_ce_real·mean ℓ_CE(x̂_r, c_r) + w_real·mean ℓ_real(x̂_r, c_r).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..objectives import cross_entropy_ref, loss_fake_ref, loss_real_ref, realness_score_ref

TERM_NAMES = ("ce_real", "ce_fake", "bce_real", "bce_fake")
REAL_TERM_NAMES = ("ce_real", "bce_real")


@dataclass(frozen=True)
class LossWeights:
    ce_real: float = 1.0
    ce_fake: float = 1.0
    bce_real: float = 1.0
    bce_fake: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "LossWeights":
        return cls(ce_real=cfg.w_ce_real, ce_fake=cfg.w_ce_fake, bce_real=cfg.w_real, bce_fake=cfg.w_fake)


@dataclass
class JointLoss:
    """The weighted total and its unweighted batch means (all scalars in the graph; the four of TERM_NAMES, or the
    two of REAL_TERM_NAMES without generated images), plus the per-example realness scores of both halves
    (detached, for logging; `score_fake` None without generated images)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    score_real: torch.Tensor
    score_fake: torch.Tensor | None


def joint_loss(logits_real: torch.Tensor, labels_real: torch.Tensor, logits_fake: torch.Tensor | None,
               labels_fake: torch.Tensor | None, weights: LossWeights, realness: str = "logit") -> JointLoss:
    """SPEC §3.3 from the logits of the attacked real and generated images (fp32 math). `logits_fake=None`: no
    generated images, and the generated-image terms are left out (not computed, whatever their weights)."""
    zr = logits_real.float()
    sr = realness_score_ref(zr, labels_real, realness)
    terms = {
        "ce_real": cross_entropy_ref(zr, labels_real).mean(),
        "bce_real": loss_real_ref(sr).mean(),   # −log D(x̂_r): real pushed toward D = 1
    }
    sg = None
    if logits_fake is not None:
        zg = logits_fake.float()
        sg = realness_score_ref(zg, labels_fake, realness)
        terms["ce_fake"] = cross_entropy_ref(zg, labels_fake).mean()
        terms["bce_fake"] = loss_fake_ref(sg).mean()   # −log(1 − D(x̂_g)): generated pushed toward D = 0
        sg = sg.detach()
    total = sum(getattr(weights, name) * terms[name] for name in TERM_NAMES if name in terms)
    return JointLoss(total=total, terms=terms, score_real=sr.detach(), score_fake=sg)
