"""ccfast: refine consistency-model samples with a joint classifier–discriminator's gradients.

Public names are loaded lazily, so `import ccfast` pulls in neither torch's CUDA initialisation nor
triton, onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Refiner": "ccfast.refine",
    "RefineResult": "ccfast.refine.base",
    "available_engines": "ccfast.refine",
    "RefineConfig": "ccfast.config",
    "TrainConfig": "ccfast.training.config",
    "PRESETS": "ccfast.config",
    "JointModel": "ccfast.models",
    "build_model": "ccfast.models",
    "load_checkpoint": "ccfast.checkpoint",
    "save_checkpoint": "ccfast.checkpoint",
    "CheckpointInfo": "ccfast.checkpoint",
    "estimate_ell0": "ccfast.checkpoint",
    "load_samples": "ccfast.data",
    "save_samples": "ccfast.data",
    "CCFastError": "ccfast.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ccfast' has no attribute {name!r}")


def __dir__():
    return __all__
