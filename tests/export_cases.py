"""Checkpoints and step graphs for the export/ORT/TensorRT tests, made once per test process.

Three backbones, one per structure the exporter walks: `tiny` (max-pool, residual, strided conv),
`cifar_resnet20` at 32×32 (option-A shortcuts) and `resnet50` at 64×64 (bottlenecks, 1×1 strided
downsample, 7×7 stem, max-pool 3×3/2). BatchNorm statistics are calibrated on random images (so folding
is exercised with realistic scales and logits stay O(1–10)), then given a random affine part.
Files live in one temporary folder removed at exit; builders are cached, so each file is made once.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ccfast.onnx_export.build import GraphLayout
from ccfast.onnx_export.layers import ConvBN

DGRADS = ConvBN.DGRADS  # every way the graph writes convolution gradients; the graph tests run each
DEFAULT_DGRAD = GraphLayout().dgrad

ARCH_CASES = {  # arch: (image size, classes)
    "tiny": (16, 10),
    "cifar_resnet20": (32, 10),
    "resnet50": (64, 1000),
}


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="ccfast-export-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=None)
def checkpoint(arch: str) -> Path:
    from ccfast.checkpoint import CheckpointInfo, save_checkpoint
    from ccfast.models import build_model

    size, classes = ARCH_CASES[arch]
    torch.manual_seed(0)
    kwargs = {"width": 8} if arch == "tiny" else {}
    model = build_model(arch, classes, **kwargs)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average: the statistics of exactly these images
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, size, size))
        for bn in bns:
            bn.weight.uniform_(0.6, 1.4)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
    model.eval()
    info = CheckpointInfo(arch=arch, num_classes=classes, image_size=(size, size), mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225), ell0=1.0, realness="logit", arch_kwargs=kwargs)
    path = workdir() / f"{arch}.pt"
    save_checkpoint(path, model, info)
    return path


@functools.lru_cache(maxsize=None)
def loaded(arch: str):
    from ccfast.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint(arch))


def graph(arch: str, dtype: str = "fp32", dgrad: str = DEFAULT_DGRAD) -> Path:
    return _graph(arch, dtype, dgrad)  # one cache key whether the arguments are passed or defaulted


@functools.lru_cache(maxsize=None)
def _graph(arch: str, dtype: str, dgrad: str) -> Path:
    from ccfast.onnx_export.build import export_step_graph

    model, info = loaded(arch)
    path = workdir() / f"{arch}-{dtype}-{dgrad}.onnx"
    export_step_graph(model, info.image_size, path, dtype, layout=GraphLayout(dgrad=dgrad))
    return path


def session(arch: str, dtype: str = "fp32", dgrad: str = DEFAULT_DGRAD):
    return _session(arch, dtype, dgrad)


@functools.lru_cache(maxsize=None)
def _session(arch: str, dtype: str, dgrad: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2  # CI's machine has 2 cores; spinning threads only steal from the reference
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(graph(arch, dtype, dgrad)), sess_options=so, providers=["CPUExecutionProvider"])


def batch(arch: str, n: int, seed: int = 0, offset: float = 0.03):
    """(x0, x, labels): x0 uniform images, x = x0 plus noise of per-image L2 norm ≈ offset·√(3HW)."""
    size, classes = ARCH_CASES[arch]
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, size, size, generator=g)
    x = (x0 + offset * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    labels = torch.randint(0, classes, (n,), generator=g)
    return x0, x, labels


def run_graph(sess, x, x0, labels, active, params):
    out = sess.run(None, {"x": x.numpy(), "x0": x0.numpy(), "labels": labels.numpy().astype(np.int32),
                          "active": active.numpy(), "params": params})
    return tuple(torch.from_numpy(o) for o in out)


def tau_between(values: torch.Tensor) -> float:
    """A threshold in the widest gap near the middle of `values`: splits a batch with a safe margin."""
    v = values.detach().sort().values
    n = len(v)
    lo, hi = max(0, n // 4), min(n - 1, (3 * n) // 4)
    gaps = v[lo + 1:hi + 1] - v[lo:hi]
    i = lo + int(gaps.argmax())
    return float(v[i] + v[i + 1]) / 2


class ReluMargins:
    """Records, per example, the smallest |input| of any ReLU the reference model evaluates (over every
    forward run inside the `with` block, e.g. a whole refinement trajectory).

    Two correct fp32 implementations (PyTorch eval BatchNorm vs the exporter's folded convolutions, or two
    convolution algorithms) round pre-activations differently by ~1e-7; a ReLU input that close to 0 may
    switch sides and change a few pixels of ∇_x J by up to ~1e-2 of its largest entry. Such near-ties are
    the only excuse the tests accept for a mismatch, and only for a minority of the examples.
    """

    NEAR_TIE = 1e-5

    def __init__(self):
        self.margin = None

    def __enter__(self):
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        outer = self
        relus = (F.relu, torch.relu, torch.relu_)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in relus and isinstance(args[0], torch.Tensor) and args[0].ndim > 1:
                    v = args[0].detach().abs().flatten(1).amin(1)
                    outer.margin = (
                        v if outer.margin is None or outer.margin.shape != v.shape else torch.minimum(outer.margin, v)
                    )
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False

    def near_tie(self) -> torch.Tensor:
        return self.margin < self.NEAR_TIE


def assert_matches(got: torch.Tensor, want: torch.Tensor, near_tie: torch.Tensor, tol: float = 1e-4, what: str = "x",
                   relative: bool = False):
    """Every example within `tol` (max abs, or relative to max(1, |want|)), except examples with a ReLU
    near-tie, which must be at most half and still within 100·tol (a flipped ReLU, not a wrong gradient)."""
    diff = (got.double() - want.double()).abs()
    if relative:
        diff = diff / want.double().abs().clamp_min(1.0)
    err = diff.reshape(len(diff), -1).amax(1)
    bad = err > tol
    assert not (bad & ~near_tie).any(), f"{what}: errors {err.tolist()} on examples without a ReLU near-tie"
    assert int(bad.sum()) <= len(err) // 2, (
        f"{what}: {int(bad.sum())} of {len(err)} examples off (errors {err.tolist()})"
    )
    assert err.max().item() <= 100 * tol, f"{what}: error {err.max().item():.3g} is too large even for a ReLU near-tie"
