"""What every engine returns, and the base class engines derive from.

Engines differ only in how a step is computed, never in what it computes (DESIGN.md): each one receives
float NCHW images on its device, the labels to refine toward, and resolved scalars (τ, ℓ0), and returns
a `RefineResult`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..config import RefineConfig
from ..errors import CCFastError
from ..objectives import HeadParams

STAT_FIELDS = ("steps", "realness_init", "realness_final", "objective_init", "objective_final", "stopped")


@dataclass
class RefineResult:
    """Refined images (float NCHW in [0, 1]) and per-example statistics, all of length B.

    steps            gradient steps taken
    realness_*       ℓ_fake = softplus(s) before / after (under the configured realness reading)
    objective_*      J before / after (for SGLD: −f_c)
    stopped          the early-stop rule held at the end (ℓ_fake ≥ τ); False when early stopping is off
    labels           the labels refined toward (the generator's, or argmax for PL)
    """

    images: torch.Tensor
    steps: torch.Tensor
    realness_init: torch.Tensor
    realness_final: torch.Tensor
    objective_init: torch.Tensor
    objective_final: torch.Tensor
    stopped: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device) -> "RefineResult":
        return RefineResult(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def uint8(self) -> np.ndarray:
        """Refined images quantised for files: uint8 NHWC, rounded to nearest (SPEC §4)."""
        from ..data import float_to_uint8

        return float_to_uint8(self.images)

    def stats_numpy(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy() for k in STAT_FIELDS}

    @staticmethod
    def cat(parts: list["RefineResult"]) -> "RefineResult":
        return RefineResult(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(RefineResult)})


@dataclass(frozen=True)
class ResolvedScalars:
    """Scalars fixed once per Refiner: τ (None = no early stop) and the head parameters."""

    tau: float | None
    head: HeadParams


class Engine:
    """Base class. Subclasses set `name` and implement `refine_batch`; heavy set-up (compile, graph
    capture, engine build) happens in `__init__` or lazily per batch bucket, once per Refiner."""

    name = "base"

    def __init__(self, model: torch.nn.Module, config: RefineConfig, scalars: ResolvedScalars, device: torch.device, **options):
        if options:
            raise ValueError(f"engine {self.name!r} takes no options, got {sorted(options)}")
        self.model = model
        self.config = config
        self.scalars = scalars
        self.device = device

    def refine_batch(self, x0: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> RefineResult:
        """x0: float32 NCHW on `self.device`; labels int64 (B,); indices int64 (B,) global example
        indices (seed SGLD noise per example, so results do not depend on batching)."""
        raise NotImplementedError

    def timings(self) -> dict:
        """Set-up costs (compile, capture, build) reported apart from the steady state."""
        return {}


def reject_unknown_options(engine: str, options, allowed) -> None:
    """`--engine-option` keys an engine does not take are an error that lists the ones it does."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CCFastError(f"engine {engine!r} has no option {', '.join(unknown)}; options: {', '.join(sorted(allowed))}")


def sgld_fallback(engine: str, model, config: RefineConfig, scalars: ResolvedScalars, device):
    """The reference engine for SGLD, None for PGD. SGLD draws its noise per example on the CPU and never
    projects, so no fused loop or step graph exists for it: the fast engines hand it to the reference."""
    if config.method != "sgld":
        return None
    from .torch_engine import TorchEngine

    logging.getLogger("ccfast.refine").warning("engine %r: SGLD runs with the torch reference engine", engine)
    return TorchEngine(model, config, scalars, device)
