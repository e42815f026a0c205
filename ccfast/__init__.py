"""ccfast: refine consistency-model samples with a joint classifier–discriminator's gradients.

Public names are loaded lazily, so `import ccfast` pulls in neither torch's CUDA initialisation nor
triton, onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


class _SourceCheckoutKernels(importlib.abc.MetaPathFinder):
    """Finds `ccfast.kernels` in a source checkout's top-level kernels/ folder.

    pyproject.toml installs kernels/ as ccfast.kernels (package-dir), and an install (wheel or editable) maps it.
    But where ccfast/ is imported as a plain folder of a checkout — the repository root on sys.path, as the
    benchmark suite's `python -m` children have it, or an editable install made by another interpreter's pip —
    nothing maps it, and `--engine triton` would fail with "No module named 'ccfast.kernels'" (seen on a GPU
    machine). This finder sits first on sys.meta_path and answers for that one name only, so the kernels always
    come from the checkout whose ccfast/ was imported: an editable install of another checkout (a git worktree
    beside the main one, ccfast/ taken from PYTHONPATH) would otherwise pair this ccfast/ with that checkout's
    kernels/. The kernels' own modules are then found inside it as usual."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "ccfast.kernels":
            return None
        return importlib.util.spec_from_file_location(fullname, self.folder / "__init__.py",
                                                      submodule_search_locations=[str(self.folder)])


def _map_checkout_kernels() -> None:
    root = Path(__file__).resolve().parent.parent
    folder = root / "kernels"
    # Only beside this project's own pyproject.toml: an installed ccfast has its kernels inside ccfast/, and a
    # site-packages/kernels/ would be some other distribution's.
    if (folder / "__init__.py").is_file() and (root / "pyproject.toml").is_file() and not any(
            isinstance(f, _SourceCheckoutKernels) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceCheckoutKernels(folder))


_map_checkout_kernels()

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
