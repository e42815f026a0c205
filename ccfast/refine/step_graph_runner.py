"""Host-side driver of the exported step graph (ccfast.onnx_export), shared by the ort and trt engines.

The graph does one step; this module runs T of them over static buffers (the same addresses every call,
as CUDA graphs need) and gathers the statistics `TorchEngine` reports. Per SPEC §4 and torch_engine.py:

    for t = 0..T:   (J, ℓ_fake, active', x') = step(x, active)        # J, ℓ_fake at the current x
                    t = 0: record J_init, ℓ_init
                    t = T, or no example active': stop               # x stays, J and ℓ_fake are final
                    x ← x', active ← active', steps += active'

Continuing after every example has stopped changes nothing (stopped rows are copied through bit for bit
and J, ℓ_fake are recomputed at the same x), so the loop may check for "none active" every step (ORT: one
small device→host read per step) or never (TensorRT: the whole loop captured in one CUDA graph). Rows
beyond the batch (padding up to a bucket) enter inactive and never move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CCFastError
from ..onnx_export.head import head_coefficients
from ..onnx_export.step import PARAM_SLOTS, params_vector
from .base import RefineResult

INPUT_DTYPES = {
    "x": torch.float32,
    "x0": torch.float32,
    "labels": torch.int32,
    "active": torch.bool,
    "params": torch.float32,
}
OUTPUT_DTYPES = {
    "x_next": torch.float32,
    "active_next": torch.bool,
    "objective": torch.float32,
    "realness": torch.float32,
}
NUMPY_DTYPES = {torch.float32: np.float32, torch.int32: np.int32, torch.bool: np.bool_, torch.int64: np.int64}


@dataclass
class StepBuffers:
    """Static tensors for one batch bucket: the graph's inputs and outputs, and the loop's statistics."""

    x: torch.Tensor
    x0: torch.Tensor
    labels: torch.Tensor
    active: torch.Tensor
    params: torch.Tensor
    x_next: torch.Tensor
    active_next: torch.Tensor
    objective: torch.Tensor
    realness: torch.Tensor
    objective_init: torch.Tensor
    realness_init: torch.Tensor
    steps: torch.Tensor

    @staticmethod
    def allocate(capacity: int, image_shape: tuple[int, int, int], params: np.ndarray, device) -> "StepBuffers":
        img = (capacity, *image_shape)
        z = lambda shape, dt: torch.zeros(shape, dtype=dt, device=device)  # noqa: E731
        return StepBuffers(
            x=z(img, torch.float32), x0=z(img, torch.float32), labels=z(capacity, torch.int32),
            active=z(capacity, torch.bool), params=torch.as_tensor(params, dtype=torch.float32).to(device),
            x_next=z(img, torch.float32), active_next=z(capacity, torch.bool), objective=z(capacity, torch.float32),
            realness=z(capacity, torch.float32), objective_init=z(capacity, torch.float32),
            realness_init=z(capacity, torch.float32), steps=z(capacity, torch.int64),
        )

    @property
    def capacity(self) -> int:
        return int(self.x.shape[0])

    def graph_inputs(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in INPUT_DTYPES}

    def graph_outputs(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in OUTPUT_DTYPES}

    def load(self, x0: torch.Tensor, labels: torch.Tensor) -> None:
        """Start a batch: x = x0, all rows active; padding rows zero and inactive."""
        B = x0.shape[0]
        if B > self.capacity:
            raise CCFastError(f"batch of {B} exceeds the bucket of {self.capacity}")
        for t in (self.x, self.x0):
            t[:B].copy_(x0)
            t[B:].zero_()
        self.labels[:B].copy_(labels)
        self.labels[B:].zero_()
        self.active[:B].fill_(True)
        self.active[B:].fill_(False)
        self.steps.zero_()


def params_for(config, scalars) -> np.ndarray:
    """The graph's `params` input for a resolved refinement configuration (PGD)."""
    return params_vector(config.alpha, config.eps, scalars.tau, head_coefficients(scalars.head))


def run_steps(bufs: StepBuffers, run_step, steps: int, check_every_step: bool) -> None:
    """T steps on the loaded buffers; device work only when `check_every_step` is False (capturable)."""
    for t in range(steps + 1):
        run_step()
        if t == 0:
            bufs.objective_init.copy_(bufs.objective)
            bufs.realness_init.copy_(bufs.realness)
        if t == steps:
            break
        if check_every_step and not bool(bufs.active_next.any()):
            break
        bufs.x.copy_(bufs.x_next)
        bufs.active.copy_(bufs.active_next)
        bufs.steps.add_(bufs.active_next)


def collect(bufs: StepBuffers, batch: int, labels: torch.Tensor, tau: float | None) -> RefineResult:
    """The first `batch` rows as a `RefineResult` with the statistics of `TorchEngine`."""
    realness = bufs.realness[:batch].clone()
    stopped = realness >= tau if tau is not None else torch.zeros(batch, dtype=torch.bool, device=realness.device)
    return RefineResult(
        images=bufs.x[:batch].clone(), steps=bufs.steps[:batch].clone(),
        realness_init=bufs.realness_init[:batch].clone(), realness_final=realness,
        objective_init=bufs.objective_init[:batch].clone(), objective_final=bufs.objective[:batch].clone(),
        stopped=stopped, labels=labels.clone(),
    )


def bucket_for(batch: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `batch` (the caller splits batches larger than the largest)."""
    for b in buckets:
        if b >= batch:
            return b
    return buckets[-1]


def check_param_slots(meta: dict, where: str) -> None:
    if meta.get("param_slots") != ",".join(PARAM_SLOTS):
        raise CCFastError(f"{where}: step graph made by another ccfast version (params {meta.get('param_slots')!r}, "
                          f"this one expects {','.join(PARAM_SLOTS)!r}); export it again")

