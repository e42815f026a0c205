"""Evaluation of sample files (SPEC §5): FID, precision/recall and Inception Score on TF-Inception features.

Modules, one job each:
    inception.py      the TF-Inception network, its preprocessing and feature extraction
    metrics.py        FID, precision/recall, IS on features
    image_sources.py  reading image sets (npz files, image folders, OpenAI reference batches)
    ref_stats.py      reference statistics, cached on disk
    __main__.py       the command line, `python -m ccfast.evaluate`
Nothing heavy is imported here: `python -m ccfast.evaluate --help` stays fast.
"""

from __future__ import annotations

__all__ = ["main"]


def __getattr__(name: str):
    # `main` is the CLI in __main__.py, imported on first use only: importing it here would put
    # `ccfast.evaluate.__main__` in sys.modules before `python -m` runs it, which runpy warns about.
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(f"module 'ccfast.evaluate' has no attribute {name!r}")
