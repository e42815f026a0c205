"""Batch buckets: the fixed batch sizes that get their own CUDA graphs, sessions or TensorRT profiles.

One parser for `--batch-buckets` (python -m ccfast.export) and the engines' `buckets=` option; a core module,
so the export CLI, `onnx_export/` and `refine/` all import it without a lower layer importing a higher one.
"""

from __future__ import annotations

from .errors import CCFastError


def parse_buckets(text) -> list[int]:
    """'64,8,16' (or a sequence of ints) -> [8, 16, 64]: sorted, without duplicates, each >= 1."""
    items = list(text) if isinstance(text, (list, tuple)) else [v for v in str(text).split(",") if v.strip()]
    try:
        values = [int(str(v).strip()) for v in items]
    except ValueError as exc:
        raise CCFastError(f"batch buckets must be comma-separated positive integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise CCFastError(f"batch buckets must be comma-separated positive integers, got {text!r}")
    return sorted(set(values))
