"""Shared plumbing for the `python -m ccfast.<stage>` command lines: error reporting and option parsing.

Device choice and the torchrun process group live in `ccfast.devices` (the trainer needs them too).
"""

from __future__ import annotations

import sys
from typing import Callable

from .errors import CCFastError


def run_main(prog: str, body: Callable[[], int | None]) -> int:
    """Run a CLI body; a `CCFastError` becomes one line on stderr and exit code 2, KeyboardInterrupt 130."""
    try:
        return int(body() or 0)
    except CCFastError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished chunks are kept and a rerun resumes from them", file=sys.stderr)
        return 130


def parse_optional_float(text: str) -> float | None:
    """'none' -> None, else a float (for --eps and --tau)."""
    if text.lower() in ("none", "off", "inf"):
        return None
    return float(text)
