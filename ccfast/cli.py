"""Shared plumbing for the `python -m ccfast.<stage>` command lines: error reporting and distributed set-up."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

from .errors import CCFastError


def run_main(prog: str, body: Callable[[], int | None],
             interrupted: str = "interrupted; outputs are written only when complete, so none is half-written") -> int:
    """Run a CLI body; a `CCFastError` becomes one line on stderr and exit code 2, KeyboardInterrupt 130 with the
    line `interrupted` (a body closes its progress bar on the way out, so the line starts on a line of its own)."""
    try:
        return int(body() or 0)
    except CCFastError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def parse_optional_float(text: str) -> float | None:
    """'none' -> None, else a float (for --eps and --tau)."""
    if text.lower() in ("none", "off", "inf"):
        return None
    return float(text)


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


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
