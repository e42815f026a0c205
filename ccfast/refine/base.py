"""What every engine returns, and the base class engines derive from.

Engines differ only in how a step is computed, never in what it computes (docs/design.md): each one receives
float NCHW images on its device, the labels to refine toward, and resolved scalars (τ, ℓ0), and returns
a `RefineResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch

from ..config import RefineConfig
from ..errors import CCFastError
from ..objectives import HeadParams
from .options import Option, parse_options

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
    """Base class. Subclasses set `name`, `methods` and `OPTIONS`, and implement `refine_batch`; heavy set-up
    (compile, graph capture, engine build) happens in `__init__` or lazily per batch bucket, once per Refiner."""

    name = "base"
    # The refinement methods this engine computes. The fast engines run PGD only: SGLD draws its noise per
    # example on the CPU and never projects, so no fused loop or step graph exists for it, and `make_engine`
    # (refine/__init__.py) runs SGLD on the reference engine instead.
    methods: tuple[str, ...] = ("pgd",)
    OPTIONS: ClassVar[dict[str, Option]] = {}  # `--engine-option` keys and their types (refine/options.py)

    def __init__(self, model: torch.nn.Module, config: RefineConfig, scalars: ResolvedScalars, device: torch.device,
                 **options):
        if config.method not in self.methods:
            raise CCFastError(f"engine {self.name!r} runs {' and '.join(self.methods)} only, not {config.method}; "
                              "ccfast.Refiner runs other methods on the reference engine")
        self.model = model
        self.config = config
        self.scalars = scalars
        self.device = torch.device(device)
        self.opts = self.check_options(options, self.device)

    @classmethod
    def check_options(cls, options: dict, device: torch.device):
        """The engine's options, parsed and checked (strict: see refine/options.py)."""
        return parse_options(cls.name, cls.OPTIONS, options)

    def refine_batch(self, x0: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> RefineResult:
        """x0: float32 NCHW on `self.device`; labels int64 (B,); indices int64 (B,) global example
        indices (seed SGLD noise per example, so results do not depend on batching)."""
        raise NotImplementedError

    def timings(self) -> dict:
        """Set-up costs (compile, capture, build) reported apart from the steady state."""
        return {}
