"""Build a TensorRT plan from the step graph, with either runtime behind one interface.

Two runtimes share the TensorRT 10 Python API:
- full TensorRT (`tensorrt` ≥ 10): every NVIDIA data-centre GPU, Hopper included;
- TensorRT for RTX (`tensorrt_rtx`, PyPI `tensorrt-rtx-cu13`): its builder and ONNX parser also run on a
  machine without a GPU (so CI builds every plan), its runtime only on the compute capabilities listed in
  its `ComputeCapability` enum (Turing/Ampere/Ada/Blackwell client parts: 7.5, 8.0, 8.6, 8.9, 12.x), not
  on Hopper (9.0).

Precision is the graph's own: networks are created strongly typed (the only mode of TensorRT-RTX and of
TensorRT 11; available in TensorRT 10), so the fp16 graph runs in fp16 because its tensors are fp16, and
the fp32 graph in fp32: TF32 is switched off unless asked for. One optimisation profile per batch bucket,
min = opt = max (the runner pads a batch up to its bucket and replays a CUDA graph captured per bucket).
A sidecar `PLAN.json` records what the runner must check: runtime, version, target GPUs, buckets, dtype.
A timing cache (full TensorRT) makes rebuilds fast; TensorRT-RTX instead compiles kernels when a plan first
runs, and the trt engine keeps those in a runtime cache file beside the plan (`PLAN.rtcache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from ..errors import CCFastError
from ..io_utils import atomic_path, write_json_atomic

log = logging.getLogger("ccfast.export.trt")

RUNTIMES = ("tensorrt", "tensorrt_rtx")
PIP_HINT = {"tensorrt": "pip install 'ccfast[trt]'", "tensorrt_rtx": "pip install 'ccfast[trt-rtx]'"}


def import_tensorrt(runtime: str | None = None):
    """(module, runtime name). `runtime=None`: full TensorRT if installed, else TensorRT-RTX."""
    import importlib

    names = RUNTIMES if runtime in (None, "auto") else (runtime,)
    if runtime not in (None, "auto") and runtime not in RUNTIMES:
        raise CCFastError(f"unknown TensorRT runtime {runtime!r}; choose tensorrt, tensorrt_rtx or auto")
    errors = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a stub wheel raises at import, not only ImportError
            errors.append(f"{name}: {exc}")
            continue
        major = int(str(module.__version__).split(".")[0])
        if name == "tensorrt" and major < 10:
            errors.append(f"tensorrt {module.__version__} is older than 10")
            continue
        return module, name
    raise CCFastError("no usable TensorRT runtime (" + "; ".join(errors) + "). Install TensorRT >= 10 ("
                      + PIP_HINT["tensorrt"] + ") or TensorRT for RTX (" + PIP_HINT["tensorrt_rtx"] + ")")


def rtx_compute_capabilities(trt) -> list[tuple[int, int]]:
    """Compute capabilities a TensorRT-RTX build can target, read from its `ComputeCapability` enum."""
    out = []
    for name in trt.ComputeCapability.__members__:
        if name.startswith("SM") and name[2:].isdigit():
            digits = name[2:]
            out.append((int(digits[:-1]), int(digits[-1])))
    return sorted(out)


class TrtLogger:
    """TensorRT logger that forwards to `logging` (errors and warnings always reach the user)."""

    def __init__(self, trt, verbose: bool):
        class L(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                elif verbose:
                    log.info("TensorRT: %s", msg)

        self.logger = L()


def parse_onnx(trt, onnx_bytes: bytes, logger):
    """(builder, network, parser); a parse failure raises with every parser error and its node."""
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            where = [
                str(f()) for f in (getattr(e, "node_name", None), getattr(e, "node_operator", None)) if f is not None
            ]
            errors.append(f"node {e.node()} ({', '.join(where)}): {e.desc()} [{e.code()}]")
        raise CCFastError(
            "the TensorRT ONNX parser rejected the step graph:\n  " + "\n  ".join(errors or ["(no error recorded)"])
        )
    return builder, network, parser


def network_io(trt, network) -> list[dict]:
    io = []
    for kind, count, get in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for i in range(count):
            t = get(i)
            io.append({"kind": kind, "name": t.name, "dtype": str(t.dtype).split(".")[-1], "shape": list(t.shape)})
    return io


def build_plan(onnx_path, plan_path, batch_buckets, *, runtime: str | None = None, opt_level: int = 3,
               timing_cache: str | None = None, compute_capabilities: list[str] | None = None, tf32: bool = False,
               workspace_mib: int | None = None, verbose: bool = False) -> dict:
    """Parse `onnx_path`, build a plan with one profile per bucket, write it and `PLAN.json` atomically.

    `compute_capabilities`: TensorRT-RTX targets such as ["SM86", "SM89"] (default: the library's own
    choice, or the current GPU's if one is visible). Returns the sidecar dictionary.
    """
    trt, name = import_tensorrt(runtime)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.exists():
        raise CCFastError(f"{onnx_path}: no such ONNX file (write it first with --onnx)")
    buckets = sorted({int(b) for b in batch_buckets})
    if not buckets or buckets[0] < 1:
        raise CCFastError(f"batch buckets must be positive integers, got {batch_buckets}")
    onnx_bytes = onnx_path.read_bytes()
    logger = TrtLogger(trt, verbose).logger
    t0 = time.perf_counter()
    builder, network, _parser = parse_onnx(trt, onnx_bytes, logger)
    io = network_io(trt, network)
    for t in io:
        log.info("network %s %s: %s %s", t["kind"], t["name"], t["dtype"], t["shape"])
    config = builder.create_builder_config()
    config.builder_optimization_level = int(opt_level)
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if compute_capabilities:
        if not hasattr(config, "set_compute_capability"):
            raise CCFastError(
                f"{name} {trt.__version__} builds for the GPU it runs on; --trt-compute-capability is a TensorRT-RTX "
                "option"
            )
        config.num_compute_capabilities = len(compute_capabilities)
        for i, cc in enumerate(compute_capabilities):
            key = cc.upper().replace(".", "")
            key = key if key.startswith("SM") or key == "CURRENT" else f"SM{key}"
            if key not in trt.ComputeCapability.__members__:
                raise CCFastError(
                    f"unknown compute capability {cc!r}; {name} knows {', '.join(trt.ComputeCapability.__members__)}"
                )
            config.set_compute_capability(trt.ComputeCapability.__members__[key], i)
    for b in buckets:
        profile = builder.create_optimization_profile()
        for t in io:
            if t["kind"] == "input" and t["shape"] and t["shape"][0] == -1:
                shape = (b, *t["shape"][1:])
                profile.set_shape(t["name"], shape, shape, shape)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache and name == "tensorrt_rtx":
        # TensorRT-RTX picks kernels when the plan first runs on a GPU; its timing cache is a no-op. What
        # it compiles then is kept by the runtime cache the trt engine saves beside the plan.
        log.warning("TensorRT-RTX has no build-time timing cache; --timing-cache is ignored")
        timing_cache = None
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CCFastError(
            f"TensorRT ({name} {trt.__version__}) failed to build a plan from {onnx_path}; see the errors logged above"
        )
    build_s = time.perf_counter() - t0
    data = bytes(serialized)
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(data)
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    import onnx

    from .build import graph_metadata

    meta = graph_metadata(onnx.load(str(onnx_path), load_external_data=False))
    sidecar = {
        "runtime": name,
        "runtime_version": str(trt.__version__),
        "buckets": buckets,
        "dtype": meta.get("dtype"),
        "image_size": meta.get("image_size"),
        "num_classes": meta.get("num_classes"),
        "param_slots": meta.get("param_slots"),
        "graph_format": meta.get("format"),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "weights_sha256": meta.get("weights_sha256"),
        "compute_capabilities": list(compute_capabilities or []),
        "builder_optimization_level": int(opt_level),
        "tf32": bool(tf32),
        "build_seconds": round(build_s, 3),
        "plan_bytes": len(data),
        "io": io,
        "built_on_gpu": _gpu_name(),
    }
    write_json_atomic(str(plan_path) + ".json", sidecar)
    return sidecar


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    except Exception:  # pragma: no cover - informational only
        pass
    return None


def read_sidecar(plan_path) -> dict:
    side = Path(str(plan_path) + ".json")
    if not side.exists():
        raise CCFastError(f"{side}: missing; rebuild the plan with `python -m ccfast.export --trt {plan_path}`")
    try:
        return json.loads(side.read_text())
    except ValueError as exc:
        raise CCFastError(f"{side}: unreadable ({exc})") from exc


def check_plan(sidecar: dict, plan_path, runtime: str, runtime_version: str, device_cc: tuple[int, int] | None,
               supported_ccs: list[tuple[int, int]] | None, weights_sha256: str | None) -> None:
    """Refuse a plan this process cannot run, saying why (before TensorRT fails with a terse message)."""
    rebuild = f"rebuild it with `python -m ccfast.export --onnx STEP.onnx --trt {plan_path}`"
    if sidecar.get("runtime") != runtime:
        raise CCFastError(
            f"{plan_path} was built by {sidecar.get('runtime')} but this process runs {runtime}; {rebuild}"
        )
    if sidecar.get("runtime_version") != runtime_version:
        raise CCFastError(f"{plan_path} was built by {runtime} {sidecar.get('runtime_version')}, installed is "
                          f"{runtime_version}; plans do not cross versions: {rebuild}")
    if weights_sha256 is not None and sidecar.get("weights_sha256") != weights_sha256:
        raise CCFastError(f"{plan_path} was built from other weights than this checkpoint's; {rebuild}")
    if device_cc is not None and supported_ccs is not None and device_cc not in supported_ccs:
        raise CCFastError(
            f"{runtime} {runtime_version} does not run on compute capability {device_cc[0]}.{device_cc[1]} "
            f"(it supports {', '.join(f'{a}.{b}' for a, b in supported_ccs)}); use full TensorRT >= 10 on this GPU"
        )
    targets = sidecar.get("compute_capabilities") or []
    if device_cc is not None and targets and f"SM{device_cc[0]}{device_cc[1]}" not in [t.upper() for t in targets]:
        raise CCFastError(
            f"{plan_path} targets {', '.join(targets)}, not this GPU's SM{device_cc[0]}{device_cc[1]}; {rebuild}"
        )
