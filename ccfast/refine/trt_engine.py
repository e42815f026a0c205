"""`--engine trt`: a TensorRT plan of the step graph, with the whole T-step loop captured in one CUDA graph.

The plan comes from `python -m ccfast.export --onnx STEP.onnx --trt STEP.plan` (one optimisation profile per
batch bucket). For each bucket this engine makes an execution context bound to static buffers, runs one
step to warm up, then captures `step_graph_runner.run_steps` (T+1 enqueues and the buffer copies between
them) into a CUDA graph; a batch is then: copy in, one graph replay, copy out. Results are those of the
reference engine: stopped examples keep being copied through unchanged, so the loop needs no early exit.

Runtimes (see onnx_export/tensorrt_build.py): full TensorRT >= 10 (any data-centre GPU, Hopper included)
or TensorRT for RTX (compute capability 7.5/8.0/8.6/8.9/12.x, not Hopper), which compiles kernels when a
plan first runs and keeps them in `PLAN.rtcache` beside the plan. Before deserialising, the
engine checks the plan's sidecar (runtime, version, weights, target GPUs) and, where the runtime offers
it, `Runtime.get_engine_validity`.

Engine options (`--engine-option KEY=VALUE`; parsed by refine/options.py):
    plan=PATH          the plan (default: export + build on first use into the temp-directory cache)
    runtime=auto|tensorrt|tensorrt_rtx   which TensorRT to load (default auto: full TensorRT if installed)
    cuda_graph=1|0     capture the T-step loop (default 1; 0 = enqueue step by step, with early exit)
    dtype=fp32|fp16    precision of a plan built on first use;  buckets=1,16,256  its profiles
    dgrad=conv|conv_transpose   how its graph writes stride-1 convolutions' input gradients (`GraphLayout.dgrad`)
PGD only: `ccfast.Refiner` runs SGLD on the torch reference engine (no step graph for it), as with `ort`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..errors import CCFastError
from ..io_utils import atomic_path
from ..onnx_export.build import GraphLayout, cache_dir, cache_stem, export_step_graph, model_fingerprint
from ..onnx_export.layers import ConvBN
from ..onnx_export.tensorrt_build import (
    TrtLogger,
    build_plan,
    check_plan,
    import_tensorrt,
    read_sidecar,
    rtx_compute_capabilities,
)
from . import options
from .base import Engine, RefineResult
from .step_graph_runner import StepBuffers, bucket_for, collect, params_for, run_steps

log = logging.getLogger("ccfast.refine.trt")

OPTIONS = {
    "plan": options.text(None), "runtime": options.choice("auto", "auto", "tensorrt", "tensorrt_rtx"),
    "cuda_graph": options.flag(True), "dtype": options.choice("fp32", "fp32", "fp16"),
    "dgrad": options.choice(GraphLayout().dgrad, *ConvBN.DGRADS), "buckets": options.buckets("1,16,256"),
}

EXPECTED_TRT_DTYPES = {"x": "FLOAT", "x0": "FLOAT", "labels": "INT32", "active": "BOOL", "params": "FLOAT",
                       "x_next": "FLOAT", "active_next": "BOOL", "objective": "FLOAT", "realness": "FLOAT"}


def _device_cc(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))


def _supported_ccs(trt, runtime: str):
    return rtx_compute_capabilities(trt) if runtime == "tensorrt_rtx" else None


class TrtEngine(Engine):
    name = "trt"
    OPTIONS = OPTIONS

    @staticmethod
    def availability(runtime: str | None = None) -> str:
        try:
            trt, name = import_tensorrt(runtime)
        except CCFastError as exc:
            return str(exc)
        if not torch.cuda.is_available():
            return (
                f"{name} {trt.__version__} is installed, but no CUDA GPU is visible (TensorRT runs only on NVIDIA GPUs)"
            )
        cc = _device_cc(torch.device("cuda"))
        supported = _supported_ccs(trt, name)
        if supported is not None and cc not in supported:
            return (
                f"{name} {trt.__version__} does not run on this GPU ({torch.cuda.get_device_name()}, compute "
                "capability "
                f"{cc[0]}.{cc[1]}; it supports {', '.join(f'{a}.{b}' for a, b in supported)}): install full TensorRT "
                ">= 10"
            )
        return "ok"

    def __init__(self, model, config, scalars, device, **given):
        super().__init__(model, config, scalars, device, **given)
        self._timings: dict[str, float] = {}
        self.runtime_choice = self.opts["runtime"]
        status = self.availability(self.runtime_choice)
        if status != "ok":
            raise CCFastError(f"engine 'trt' cannot run here: {status}")
        if self.device.type != "cuda":
            raise CCFastError(f"engine 'trt' runs on a CUDA device, not {self.device}; pass --device cuda")
        self.trt, self.runtime_name = import_tensorrt(self.runtime_choice)
        self._logger = TrtLogger(self.trt, verbose=False).logger
        self.params = params_for(config, scalars)
        self.use_cuda_graph = self.opts["cuda_graph"]
        self.dtype = self.opts["dtype"]
        self.layout = GraphLayout(dgrad=self.opts["dgrad"])
        self.build_buckets = list(self.opts["buckets"])
        self.plan_path = Path(self.opts["plan"]) if self.opts["plan"] else None
        self.stream = torch.cuda.Stream(self.device)
        self.engine = None
        self._slots: dict[int, dict] = {}
        if self.plan_path is not None:
            self._load(self.plan_path)

    # ---------------------------------------------------------------- plan

    def _load(self, path: Path) -> None:
        if not path.exists():
            raise CCFastError(
                f"{path}: no such plan; build one with `python -m ccfast.export --onnx STEP.onnx --trt {path}`"
            )
        t0 = time.perf_counter()
        sidecar = read_sidecar(path)
        check_plan(sidecar, path, self.runtime_name, str(self.trt.__version__), _device_cc(self.device),
                   _supported_ccs(self.trt, self.runtime_name), model_fingerprint(self.model))
        data = path.read_bytes()
        runtime = self.trt.Runtime(self._logger)
        if hasattr(runtime, "get_engine_validity"):
            validity, diagnostics = runtime.get_engine_validity(data)
            if validity == self.trt.EngineValidity.INVALID:
                reasons = [
                    n for n, v in self.trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)
                ]
                raise CCFastError(f"{path} cannot run on this system: {', '.join(reasons) or 'unknown reason'}")
        with torch.cuda.device(self.device):
            engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise CCFastError(f"{self.runtime_name} could not deserialise {path}; see the errors logged above")
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = str(engine.get_tensor_dtype(name)).split(".")[-1]
            log.info("plan %s %s: %s %s", engine.get_tensor_mode(name), name, dtype, engine.get_tensor_shape(name))
            if EXPECTED_TRT_DTYPES.get(name) != dtype:
                raise CCFastError(
                    f"{path}: tensor {name} is {dtype}, expected {EXPECTED_TRT_DTYPES.get(name)}; export again"
                )
        self.runtime, self.engine, self.sidecar = runtime, engine, sidecar
        self._runtime_config = self._runtime_cache = None
        if hasattr(engine, "create_runtime_config"):  # TensorRT-RTX: keep the kernels it compiles at first run
            self._runtime_config = engine.create_runtime_config()
            self._runtime_cache = self._runtime_config.create_runtime_cache()
            blob_path = Path(str(path) + ".rtcache")
            if blob_path.exists() and not self._runtime_cache.deserialize(blob_path.read_bytes()):
                log.info("engine 'trt': %s was made on another system or version; recompiling kernels", blob_path)
            self._runtime_config.set_runtime_cache(self._runtime_cache)
        self.buckets = [int(b) for b in sidecar["buckets"]]
        self.image_hw = tuple(int(v) for v in sidecar["image_size"].split(","))
        self._timings["load_s"] = time.perf_counter() - t0

    def _ensure_plan(self, image_hw) -> None:
        if self.engine is not None:
            return
        stem = cache_stem(self.model, self.dtype, image_hw, self.layout)
        onnx_path = cache_dir() / f"{stem}.onnx"
        plan = (
            cache_dir()
            / f"{stem}-{self.runtime_name}-{self.trt.__version__}-b{'_'.join(map(str, self.build_buckets))}.plan"
        )
        if not plan.exists():
            t0 = time.perf_counter()
            if not onnx_path.exists():
                export_step_graph(self.model, image_hw, onnx_path, self.dtype, layout=self.layout)
            log.warning("engine 'trt': building a TensorRT plan at %s (once; can take minutes)", plan)
            build_plan(onnx_path, plan, self.build_buckets, runtime=self.runtime_name)
            self._timings["build_s"] = time.perf_counter() - t0
        self.plan_path = plan
        self._load(plan)

    # ---------------------------------------------------------------- per-bucket contexts

    def _slot(self, capacity: int) -> dict:
        if capacity in self._slots:
            return self._slots[capacity]
        t0 = time.perf_counter()
        profile = self.buckets.index(capacity)
        ctx = (self.engine.create_execution_context(self._runtime_config) if self._runtime_config is not None
               else self.engine.create_execution_context())
        bufs = StepBuffers.allocate(capacity, (3, *self.image_hw), self.params, self.device)
        ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
        for name, t in {**bufs.graph_inputs(), **bufs.graph_outputs()}.items():
            if self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT and -1 in tuple(
                self.engine.get_tensor_shape(name)
            ):
                ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())

        def run_step():
            if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise CCFastError(f"{self.runtime_name}: enqueue of the step graph failed (bucket {capacity})")

        graph = None
        with torch.cuda.stream(self.stream):
            bufs.load(
                torch.zeros((1, 3, *self.image_hw), device=self.device),
                torch.zeros(1, dtype=torch.int64, device=self.device),
            )
            run_step()  # TensorRT wants one enqueue before capture (deferred allocations, JIT kernels)
            self.stream.synchronize()
            capturable = getattr(ctx, "is_stream_capturable", None)
            if self.use_cuda_graph and (capturable is None or capturable(self.stream.cuda_stream)):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                    run_steps(bufs, run_step, self.config.steps, check_every_step=False)
            elif self.use_cuda_graph:
                log.warning("engine 'trt': the context reports its stream is not capturable; running step by step")
        self.stream.synchronize()
        self._save_runtime_cache()
        self._timings[f"capture_b{capacity}_s"] = time.perf_counter() - t0
        self._slots[capacity] = {"ctx": ctx, "bufs": bufs, "graph": graph, "run_step": run_step}
        return self._slots[capacity]

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None:
            return
        try:
            with atomic_path(str(self.plan_path) + ".rtcache") as tmp:
                tmp.write_bytes(bytes(self._runtime_cache.serialize()))
        except OSError as exc:  # a read-only plan folder only costs recompilation next time
            log.warning("engine 'trt': cannot save the runtime cache beside %s (%s)", self.plan_path, exc)

    # ---------------------------------------------------------------- refinement

    def refine_batch(self, x0, labels, indices):
        image_hw = (int(x0.shape[2]), int(x0.shape[3]))
        self._ensure_plan(image_hw)
        if image_hw != self.image_hw:
            raise CCFastError(
                f"{self.plan_path} was built for {self.image_hw[0]}×{self.image_hw[1]} images, got "
                f"{image_hw[0]}×{image_hw[1]}"
            )
        x0 = x0.to(self.device, torch.float32)
        labels = labels.to(self.device)
        default = torch.cuda.current_stream(self.device)
        parts = []
        for start in range(0, x0.shape[0], self.buckets[-1]):
            xb, lb = x0[start:start + self.buckets[-1]], labels[start:start + self.buckets[-1]]
            slot = self._slot(bucket_for(xb.shape[0], self.buckets))
            # The engine's work runs on its own stream (the one its graphs were captured on), ordered after
            # whatever produced x0 and before whatever reads the results; results are cloned on the caller's
            # stream, so their memory belongs to it.
            self.stream.wait_stream(default)
            with torch.cuda.stream(self.stream):
                slot["bufs"].load(xb, lb)
                if slot["graph"] is not None:
                    slot["graph"].replay()
                else:
                    run_steps(slot["bufs"], slot["run_step"], self.config.steps, check_every_step=True)
            default.wait_stream(self.stream)
            parts.append(collect(slot["bufs"], xb.shape[0], lb, self.scalars.tau))
        return RefineResult.cat(parts)

    def timings(self) -> dict:
        return dict(self._timings)
