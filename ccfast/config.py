"""Refinement configuration: one dataclass drives every engine; named presets (SPEC §4 table).

A resolved config is written next to every output as JSON (`to_json` / `from_json` round trip).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config_json import JsonConfig
from .objectives import OBJECTIVES, REALNESS

METHODS = ("pgd", "sgld")
LABEL_SOURCES = ("given", "argmax")
EARLY_STOP_RULES = ("realness", "none")


@dataclass
class RefineConfig(JsonConfig):
    """What refinement computes. Defaults are the `paper` preset.

    method       "pgd": x ← clamp(Π_{B2(x0,ε)}(x − α·g/‖g‖₂)) on ∇J (SPEC §4);
                 "sgld": x ← x + α·∇f_c(x) + σ·N(0, I), clamp at the end (paper Algorithm 3).
    objective    J for "pgd": eq12 (paper Eq. 12), ce (BIGROC), bce, ce-bce (Eq. 11), jem, logit.
    realness     realness score: "logit" (f_c, the paper) or "logsumexp" (JEM).
    alpha, steps step size α and step budget T.
    eps          L2 radius ε around x0; None = no projection.
    early_stop   "realness": an example is active while ℓ_fake(x) < τ; "none": every example takes T steps.
    tau          threshold τ; None = the checkpoint's ℓ0.
    labels       "given" (the generator's labels, GT) or "argmax" (the classifier's prediction on x0, PL).
    ell0         ℓ0 for Eq. 12; None = the checkpoint's.
    """

    method: str = "pgd"
    objective: str = "eq12"
    realness: str = "logit"
    alpha: float = 0.1
    steps: int = 25
    eps: float | None = 1.5
    w_ce: float = 1.0
    w_d: float = 1.0
    early_stop: str = "realness"
    tau: float | None = None
    ell0: float | None = None
    labels: str = "given"
    sigma: float = 1e-4
    seed: int = 0
    preset: str | None = "paper"

    def __post_init__(self):
        self.validate()

    def validate(self) -> "RefineConfig":
        """Every field in range, numbers finite; errors name the refine option (`CCFastError`, a ValueError)."""
        from .errors import CCFastError
        from .validation import integer, number

        def bad(msg):
            raise CCFastError(f"invalid refinement config: {msg}")

        for name, allowed in (("method", METHODS), ("objective", OBJECTIVES), ("realness", REALNESS),
                              ("early_stop", EARLY_STOP_RULES), ("labels", LABEL_SOURCES)):
            if getattr(self, name) not in allowed:
                bad(f"{_option(name)} {getattr(self, name)!r} not in {allowed}")
        # steps 0 is allowed: a run that only scores its inputs (realness/objective) and leaves them unchanged.
        integer(self.steps, _option("steps"), at_least=0)
        integer(self.seed, _option("seed"))
        number(self.alpha, _option("alpha"), above=0)
        if self.eps is not None:
            number(self.eps, _option("eps"), above=0, hint=" (or 'none': no projection)")
        number(self.sigma, _option("sigma"), at_least=0)
        for name in ("tau", "ell0"):
            if getattr(self, name) is not None:
                number(getattr(self, name), _option(name), hint=" (leave it out for the checkpoint's ℓ0"
                       + ("; --early-stop none never stops early)" if name == "tau" else ")"))
        for name in ("w_ce", "w_d"):
            number(getattr(self, name), _option(name))
        return self

    # The objective SGLD follows is fixed: ascent of the class logit (Algorithm 3).
    @property
    def effective_objective(self) -> str:
        return "logit" if self.method == "sgld" else self.objective

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RefineConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = dict(PRESETS[name])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(preset=name, **base)


def _option(field: str) -> str:
    """How a field is spelt on the refine command line (errors name what the user typed)."""
    return "--" + field.replace("_", "-")


# SPEC §4 preset table. BIGROC's α = 1.5·ε/T with ε = 1.5, T = 7 (official ImageNet settings). SGLD's α is the
# official step per example: boost.py writes α=0.2 on the gradient of the mean f_c over batches of 100.
PRESETS: dict[str, dict] = {
    "paper": dict(method="pgd", objective="eq12", alpha=0.1, steps=25, eps=1.5, early_stop="realness", labels="given"),
    "bigroc": dict(
        method="pgd", objective="ce", alpha=1.5 * 1.5 / 7, steps=7, eps=1.5, early_stop="none", labels="given"
    ),
    "bigroc-pl": dict(
        method="pgd", objective="ce", alpha=1.5 * 1.5 / 7, steps=7, eps=1.5, early_stop="none", labels="argmax"
    ),
    "sgld": dict(
        method="sgld", objective="logit", alpha=0.002, steps=15, eps=None, early_stop="none", sigma=1e-4, labels="given"
    ),
}
