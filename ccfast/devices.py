"""Where this process runs: the torch device a `--device` value names, and its place under `torchrun`.

One home for both, imported by every command line (`ccfast.train`, `ccfast.refine`, `ccfast.evaluate`), the
`Refiner` and the trainer, so that "auto", a GPU index, torchrun's local rank and a bad value mean the same
thing everywhere. torch and torch.distributed are imported inside the functions: `import ccfast` stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CCFastError

if TYPE_CHECKING:
    import torch

DEVICE_TYPES = ("cpu", "cuda")  # what the engines, the trainer and the evaluator run on


@dataclass
class DistContext:
    """Where this process stands under `torchrun` (world size 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def resolve_device(name: str | torch.device | None = None, ctx: DistContext | None = None) -> torch.device:
    """The device for a `--device` value, checked: None or "auto" → cuda when a GPU is visible, else cpu;
    "cpu", "cuda" or "cuda:N". Under torchrun (`ctx.world_size > 1`) a CUDA device becomes this rank's GPU,
    cuda:LOCAL_RANK, made the current device (NCCL and DDP need it). A value PyTorch does not parse, a type
    other than cpu/cuda, CUDA without a visible GPU and a GPU index past the last one are each a one-line
    `CCFastError`. Creates no CUDA context outside torchrun."""
    import torch

    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise CCFastError(f"--device {name!r} is not a device PyTorch knows (try cpu, cuda or cuda:0)") from exc
    if device.type not in DEVICE_TYPES:
        raise CCFastError(f"--device {name!r}: ccfast runs on cpu or cuda (cuda:N for one GPU)")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise CCFastError(f"--device {name!r}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if ctx is not None and ctx.world_size > 1:
        device = torch.device("cuda", ctx.local_rank)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CCFastError(f"--device {device}: only {count} CUDA GPU(s) visible (cuda:0 to cuda:{count - 1})")
    if ctx is not None and ctx.world_size > 1:
        torch.cuda.set_device(device)
    return device


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group `init_distributed` joined (nothing to do without torchrun)."""
    if ctx.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
