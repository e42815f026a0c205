"""`Refiner`: load a checkpoint and an engine once, then refine many batches.

    refiner = ccfast.Refiner("joint.pt", engine="torch", config=ccfast.RefineConfig.from_preset("paper"))
    out = refiner.refine(images_uint8_nhwc, labels)      # numpy in -> RefineResult (tensors) out
    refined = out.uint8()                                # uint8 NHWC, rounded to nearest

Engines are looked up by name in `ENGINES` and imported only when asked for, so `import ccfast` stays light.
`make_engine` is where an engine is chosen, and the one place that decides that a method an engine does not
compute (SGLD on the fast engines) runs on the reference engine instead.
Engine modules are named `<name>_engine.py`, never `torch.py`/`triton.py`: importing a submodule binds its
name on this package, which would shadow the `torch` module imported here.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import CheckpointInfo, load_checkpoint
from ..config import RefineConfig
from ..data import uint8_to_float, validate_float_images, validate_labels
from ..devices import resolve_device
from ..errors import CCFastError
from ..objectives import HeadParams
from .base import Engine, RefineResult, ResolvedScalars


@dataclass(frozen=True)
class EngineSpec:
    module: str
    cls: str
    needs: str  # what to install / have, said when the engine cannot load


ENGINES: dict[str, EngineSpec] = {
    "torch": EngineSpec("ccfast.refine.torch_engine", "TorchEngine", "nothing beyond ccfast's core dependencies"),
    "triton": EngineSpec(
        "ccfast.refine.triton_engine", "TritonEngine", "a CUDA GPU and `pip install 'ccfast[triton]'`"
    ),
    "ort": EngineSpec(
        "ccfast.refine.ort_engine", "OrtEngine", "`pip install 'ccfast[onnx]'` (onnxruntime-gpu for the CUDA provider)"
    ),
    "trt": EngineSpec(
        "ccfast.refine.trt_engine",
        "TrtEngine",
        "TensorRT >= 10 (`pip install 'ccfast[trt]'`; Hopper and data-centre GPUs) or TensorRT for RTX "
        "(`pip install 'ccfast[trt-rtx]'`; compute capability 8.x/12.x), and a plan built by `python -m "
        "ccfast.export --trt`",
    ),
}


def load_engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise CCFastError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    spec = ENGINES[name]
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name == spec.module:
            raise CCFastError(f"engine {name!r} is not part of this ccfast build yet; use --engine torch") from exc
        raise CCFastError(f"engine {name!r} cannot load: {exc}. It needs {spec.needs}") from exc
    except ImportError as exc:
        raise CCFastError(f"engine {name!r} cannot load: {exc}. It needs {spec.needs}") from exc
    return getattr(module, spec.cls)


def make_engine(name: str, model, config: RefineConfig, scalars: ResolvedScalars, device, **options) -> Engine:
    """The engine `name` for this configuration. An engine that does not compute `config.method` (the fast
    engines run PGD only; see `Engine.methods`) still checks its options, then hands the method to the
    reference engine, with a warning."""
    cls = load_engine_class(name)
    if config.method not in cls.methods:
        cls.check_options(options, torch.device(device))  # a bad option is an error even when unused
        logging.getLogger("ccfast.refine").warning(
            "engine %r: %s runs with the torch reference engine", name, config.method.upper())
        return load_engine_class("torch")(model, config, scalars, device)
    return cls(model, config, scalars, device, **options)


def available_engines() -> dict[str, str]:
    """Each engine's status on this machine: "ok" or why not."""
    status = {}
    for name in ENGINES:
        try:
            cls = load_engine_class(name)
            check = getattr(cls, "availability", None)
            status[name] = check() if check else "ok"
        except CCFastError as exc:
            status[name] = str(exc)
    return status


def resolve_scalars(config: RefineConfig, info: CheckpointInfo) -> ResolvedScalars:
    """τ and ℓ0 from the config, else from the checkpoint; a missing value is an error that says what to pass."""
    uses_ell0 = config.method == "pgd" and config.objective == "eq12"
    explicit_ell0 = config.ell0 is not None
    ell0 = config.ell0 if explicit_ell0 else info.ell0
    if (uses_ell0 or (config.early_stop == "realness" and config.tau is None)) and not explicit_ell0:
        if info.ell0 is None:
            raise CCFastError(
                f"{info.path}: the checkpoint stores no ℓ0 (it was not trained as a joint model, or ℓ0 was never "
                "estimated). Pass --ell0 and --tau, use --early-stop none with an objective other than eq12, or "
                "estimate it with `python -m ccfast.convert --ell0-data REAL.npz`"
            )
        if info.realness != config.realness:
            raise CCFastError(
                f"{info.path}: the checkpoint's ℓ0 was estimated with realness={info.realness!r} but the config uses "
                f"{config.realness!r}; pass --ell0/--tau explicitly"
            )
    tau = None
    if config.method == "pgd" and config.early_stop == "realness":
        tau = float(config.tau if config.tau is not None else ell0)
    head = HeadParams(
        objective=config.effective_objective, realness=config.realness, w_ce=config.w_ce, w_d=config.w_d,
        ell0=float(ell0) if ell0 is not None else 0.0,
    )
    return ResolvedScalars(tau=tau, head=head)


class Refiner:
    """Loads the checkpoint and the engine once; `refine` then handles any number of batches."""

    def __init__(self, checkpoint, engine: str = "torch", config: RefineConfig | None = None,
                 device: str | torch.device | None = None, batch_size: int = 256, **engine_options):
        self.config = (config or RefineConfig()).validate()
        self.device = resolve_device(device)
        if isinstance(checkpoint, tuple):  # (model, info) already loaded
            self.model, self.info = checkpoint
            self.model = self.model.to(self.device).eval().requires_grad_(False)
        else:
            self.model, self.info = load_checkpoint(checkpoint, self.device)
        if batch_size < 1:
            raise CCFastError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.scalars = resolve_scalars(self.config, self.info)
        self.engine_name = engine
        self.engine = make_engine(engine, self.model, self.config, self.scalars, self.device, **engine_options)

    @property
    def tau(self) -> float | None:
        return self.scalars.tau

    def _prepare(self, images, labels):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise CCFastError(
                    f"numpy images must be uint8 NHWC, got {images.dtype}; pass float tensors as NCHW in [0, 1]"
                )
            if images.ndim != 4 or images.shape[-1] != 3:
                raise CCFastError(f"numpy images must be (N, H, W, 3), got shape {images.shape}")
            x = uint8_to_float(images)
        elif isinstance(images, torch.Tensor):
            # uint8 tensors are taken as NHWC (file layout), float tensors as NCHW in [0, 1].
            x = uint8_to_float(images) if images.dtype == torch.uint8 else images
        else:
            raise CCFastError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
        validate_float_images(x)
        H, W = x.shape[-2:]
        if tuple(self.info.image_size) != (H, W):
            raise CCFastError(
                f"images are {H}×{W} but the checkpoint {self.info.path or ''} was made for "
                f"{self.info.image_size[0]}×{self.info.image_size[1]}"
            )
        if labels is None:
            if self.config.labels != "argmax":
                raise CCFastError(
                    "labels are required (the generator's labels); pass them, or use labels='argmax' (PL)"
                )
        else:
            labels = torch.as_tensor(
                validate_labels(np.asarray(torch.as_tensor(labels).cpu()), x.shape[0], self.info.num_classes, "labels")
            )
        return x, labels

    @torch.no_grad()
    def _argmax_labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(dim=1)

    def refine(self, images, labels=None, *, indices=None, progress=None) -> RefineResult:
        """Refine uint8 NHWC numpy images or float NCHW tensors in [0, 1]. Returns a `RefineResult` on the
        input tensor's device (CPU for numpy input). `indices` are the examples' global positions (default
        0..N-1): they seed SGLD noise, so a chunk refined alone matches the same rows of a whole run."""
        x, labels = self._prepare(images, labels)
        out_device = x.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        n = x.shape[0]
        if indices is None:
            indices = torch.arange(n, dtype=torch.int64)
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        parts = []
        for start in range(0, n, self.batch_size):
            xb = x[start:start + self.batch_size].to(self.device, torch.float32)
            if self.config.labels == "argmax":
                lb = self._argmax_labels(xb)
            else:
                lb = labels[start:start + self.batch_size].to(self.device)
            res = self.engine.refine_batch(xb, lb, indices[start:start + self.batch_size])
            parts.append(res.to(out_device))
            if progress is not None:
                progress.update(len(xb))
        return RefineResult.cat(parts)
