"""Small models, checkpoints and sample files made on the spot (no downloads). Import as `from factories import ...`."""

from __future__ import annotations

import os

import numpy as np
import torch


def triton_kernels_or_skip(reason: str) -> bool:
    """Call at the top of a test module that imports Triton kernels, before it imports them: without a CUDA GPU it
    sets TRITON_INTERPRET=1 (which must precede the first `import triton`) so they run through Triton's
    interpreter on CPU tensors; skips the module without triton (`reason`), or when triton was already imported
    without the interpreter. Returns whether a CUDA GPU is there."""
    import pytest

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton", reason=reason)
    from ccfast.kernels.pgd_step import interpreted

    if not cuda and not interpreted():
        pytest.skip("no CUDA GPU and the kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)
    return cuda


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics and affine weights (fresh ones are the identity), in place."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def small_bottleneck_resnet(seed=0, width_per_group=64, classes=10):
    """The ResNet-50 family (`ImageNetResNet`) at a test's width: stage planes 8, 8, 16, 16 and 2, 1, 1, 1 blocks
    (a stride-1 downsample, an identity block, three stride-2 downsamples), eval mode, non-trivial BatchNorm."""
    from ccfast.models import ImageNetResNet, JointModel

    torch.manual_seed(seed)
    net = ImageNetResNet((2, 1, 1, 1), classes, width_per_group, stage_planes=(8, 8, 16, 16))
    return randomize_batchnorm(JointModel(net)).eval().requires_grad_(False)


def tiny_eval_model(seed=0, classes=5, width=4):
    """A tiny net in eval mode with non-trivial BatchNorm, seeded: the model of the attack/loss tests."""
    from ccfast.models import build_model

    torch.manual_seed(seed)
    return randomize_batchnorm(build_model("tiny", classes, width=width)).eval()


def random_batch(n, size=12, classes=5, seed=1):
    """n float images in [0, 1] (NCHW) and labels, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def make_tiny_checkpoint(path, num_classes=10, image_size=16, seed=0, ell0=2.0, realness="logit", width=8):
    """A random-weight tiny net with non-trivial BatchNorm statistics, saved as an inference checkpoint."""
    from ccfast.checkpoint import CheckpointInfo, save_checkpoint
    from ccfast.models import build_model

    torch.manual_seed(seed)
    model = randomize_batchnorm(build_model("tiny", num_classes, width=width))
    info = CheckpointInfo(arch="tiny", num_classes=num_classes, image_size=(image_size, image_size),
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), ell0=ell0, realness=realness,
                          arch_kwargs={"width": width})
    save_checkpoint(path, model, info)
    return path


def make_samples(n=12, size=16, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(n,), dtype=np.int64)
    return images, labels


def median_realness(ckpt, images, labels):
    """Median ℓ_fake of the tiny model over images: a τ that splits a batch into stopped/active halves."""
    from ccfast.checkpoint import load_checkpoint
    from ccfast.data import uint8_to_float
    from ccfast.objectives import HeadParams, objective_ref

    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        _, r = objective_ref(model(uint8_to_float(images)), torch.as_tensor(labels), HeadParams())
    return float(r.median())


class Autocast(torch.nn.Module):
    """Plain PyTorch at reduced precision: `model` under autocast to `dtype`, logits back to fp32 (the
    yardstick reduced-precision engines are judged by)."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()
