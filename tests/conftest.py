"""Shared fixtures. Builders live in factories.py (tests import them as `from factories import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from factories import make_samples, make_tiny_checkpoint

# The shared data folder beside the checkout (as CI lays it out), or CCFAST_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("CCFAST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def tiny_ckpt(tmp_path):
    return make_tiny_checkpoint(tmp_path / "tiny.pt")


@pytest.fixture
def samples_file(tmp_path):
    images, labels = make_samples()
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=images, arr_1=labels)
    return path


@pytest.fixture
def fp32_without_tf32():
    """Plain fp32 matmuls and cuDNN convolutions (TF32 off) for the test, restored after: on a GPU, TF32 would
    make a fast path or its reference the less exact side of an fp32 comparison."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
