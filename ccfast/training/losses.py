"""The training loss on attacked images (SPEC §3.3), built from the per-example `_ref` functions.

    L = w_ce_real·mean ℓ_CE(x̂_r, c_r) + w_ce_fake·mean ℓ_CE(x̂_g, c_g)
      + w_real·mean ℓ_real(x̂_r, c_r)  + w_fake·mean ℓ_fake(x̂_g, c_g)

with ℓ_real = softplus(−s) (real images trained toward "real") and ℓ_fake = softplus(s) (generated images
trained toward "fake"), s the realness score (class logit or LSE). Every term stays in the autograd graph:
the released official code detaches its BCE terms, so only CE on real images trains there (SPEC §3, known
defects); `tests/test_train_losses.py` guards against that regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..objectives import cross_entropy_ref, loss_fake_ref, loss_real_ref, realness_score_ref

TERM_NAMES = ("ce_real", "ce_fake", "bce_real", "bce_fake")


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
    """The weighted total and its four unweighted batch means (all scalars in the graph), plus the per-example
    realness scores of both halves (detached, for logging)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    score_real: torch.Tensor
    score_fake: torch.Tensor


def joint_loss(logits_real: torch.Tensor, labels_real: torch.Tensor, logits_fake: torch.Tensor,
               labels_fake: torch.Tensor, weights: LossWeights, realness: str = "logit") -> JointLoss:
    """SPEC §3.3 from the logits of the attacked real and generated images (fp32 math)."""
    zr, zg = logits_real.float(), logits_fake.float()
    sr = realness_score_ref(zr, labels_real, realness)
    sg = realness_score_ref(zg, labels_fake, realness)
    terms = {
        "ce_real": cross_entropy_ref(zr, labels_real).mean(),
        "ce_fake": cross_entropy_ref(zg, labels_fake).mean(),
        "bce_real": loss_real_ref(sr).mean(),   # −log D(x̂_r): real pushed toward D = 1
        "bce_fake": loss_fake_ref(sg).mean(),   # −log(1 − D(x̂_g)): generated pushed toward D = 0
    }
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return JointLoss(total=total, terms=terms, score_real=sr.detach(), score_fake=sg.detach())
