"""`--engine ort`: the exported step graph (ccfast.onnx_export) under ONNX Runtime.

One graph call = one refinement step (forward, explicit input gradient, head, early stop, projected step);
`step_graph_runner` drives the T steps over static buffers bound with IOBinding to torch tensors, so no
data leaves the device between steps. On a CUDA device (onnxruntime-gpu) each batch bucket gets its own
session with `enable_cuda_graph`: ONNX Runtime captures the step once and replays it, which needs fixed
shapes and addresses, hence buckets (a batch is padded up to the smallest bucket that holds it; padding
rows are inactive). On the CPU one session serves any batch size.

Engine options (`--engine-option KEY=VALUE`; parsed by refine/options.py):
    onnx=PATH          step graph from `python -m ccfast.export` (default: exported on first use into a cache
                       file in the temp directory, keyed by the weights' fingerprint)
    dtype=fp32|fp16    precision of the graph exported on first use (default fp32; ignored with onnx=)
    dgrad=conv|conv_transpose
                       how that graph writes each stride-1 convolution's input gradient (`GraphLayout.dgrad`;
                       default conv; ignored with onnx=)
    buckets=1,16,256   CUDA-graph batch buckets (CUDA only)
    cuda_graph=1|0     capture CUDA graphs (CUDA only; default 1)
    tf32=0|1           let cuDNN use TF32 for fp32 convolutions (default 0: fp32 results). The fastest setting
                       measured on an H200 (2.2× fp32 at batch 256; error of plain PyTorch fp16's size)
    nhwc=0|1           ONNX Runtime's NHWC convolution kernels (CUDA provider `prefer_nhwc`; default 0)
    conv_algo=auto|exhaustive|heuristic
                       cuDNN algorithm choice (`cudnn_conv_algo_search`). auto (default): exhaustive for fp32
                       (timed, the fastest measured), heuristic for fp16 (exhaustive search picks CUDA-core
                       kernels for ONNX Runtime's fp16 convolutions; heuristic gives Hopper tensor-core ones)
    threads=N          ONNX Runtime intra-op threads (CPU)
Each setting was measured on its own (benchmarks/ort_variants.py; docs/export.md has the table and profiles).
PGD only: SGLD is not a step graph (it adds noise and never projects); `ccfast.Refiner` runs it on the torch
reference engine and says so (`make_engine`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CCFastError, require
from ..onnx_export.build import (
    GraphLayout,
    cache_dir,
    cache_stem,
    export_step_graph,
    model_fingerprint,
    read_graph_metadata,
)
from ..onnx_export.layers import ConvBN
from . import options
from .base import Engine, RefineResult
from .ort_session import OrtSettings, create_session
from .step_graph_runner import NUMPY_DTYPES, StepBuffers, bucket_for, check_param_slots, collect, params_for, run_steps

log = logging.getLogger("ccfast.refine.ort")

OPTIONS = {
    "onnx": options.text(None), "dtype": options.choice("fp32", "fp32", "fp16"),
    "dgrad": options.choice(GraphLayout().dgrad, *ConvBN.DGRADS),
    "buckets": options.buckets("1,16,256"), "cuda_graph": options.flag(True), "tf32": options.flag(False),
    "nhwc": options.flag(False), "conv_algo": options.choice("auto", "auto", "exhaustive", "heuristic"),
    "threads": options.integer(None),
}


class OrtEngine(Engine):
    name = "ort"
    OPTIONS = OPTIONS

    @staticmethod
    def availability() -> str:
        import importlib

        try:
            for module in ("onnx", "onnxruntime"):
                importlib.import_module(module)
        except ImportError as exc:
            return f"needs `pip install 'ccfast[onnx]'` ({exc})"
        return "ok"

    def __init__(self, model, config, scalars, device, **given):
        super().__init__(model, config, scalars, device, **given)
        self._timings: dict[str, float] = {}
        self.ort = require("onnxruntime", "onnx", "the ort engine")
        self.params = params_for(config, scalars)
        self.onnx_path = Path(self.opts["onnx"]) if self.opts["onnx"] else None
        self.dtype = self.opts["dtype"]
        self.layout = GraphLayout(dgrad=self.opts["dgrad"])
        self.buckets = list(self.opts["buckets"])
        self.cuda_graph = self.opts["cuda_graph"]
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and "CUDAExecutionProvider" not in self.ort.get_available_providers():
            raise CCFastError(
                f"engine 'ort' on {self.device} needs ONNX Runtime's CUDA provider, but this onnxruntime "
                f"({self.ort.__version__}) has only {self.ort.get_available_providers()}: install onnxruntime-gpu "
                "(built for your CUDA), or run with --device cpu")
        self._meta = None
        self._settings = None  # OrtSettings, once the graph's precision is known (conv_algo=auto depends on it)
        self._slots: dict[int, tuple] = {}
        self._cpu_session = None
        if self.onnx_path is not None:
            self._check_graph(self.onnx_path)

    # ---------------------------------------------------------------- graph file

    def _check_graph(self, path: Path) -> None:
        meta = read_graph_metadata(path)
        check_param_slots(meta, str(path))
        if meta.get("weights_sha256") != model_fingerprint(self.model):
            raise CCFastError(f"{path} was exported from other weights than this checkpoint's; export it again with "
                              "`python -m ccfast.export --checkpoint CKPT --onnx FILE`")
        self._meta = meta

    def _graph_for(self, image_hw: tuple[int, int]) -> Path:
        """The step graph to run: the given file, or one exported into the cache on first use."""
        if self.onnx_path is None:
            path = cache_dir() / f"{cache_stem(self.model, self.dtype, image_hw, self.layout)}.onnx"
            if not path.exists():
                t0 = time.perf_counter()
                log.info("engine 'ort': exporting the step graph to %s", path)
                export_step_graph(self.model, image_hw, path, self.dtype, layout=self.layout)
                self._timings["export_s"] = time.perf_counter() - t0
            self.onnx_path = path
            self._check_graph(path)
        H, W = (int(v) for v in self._meta["image_size"].split(","))
        if (H, W) != tuple(image_hw):
            raise CCFastError(f"{self.onnx_path} was exported for {H}×{W} images, got {image_hw[0]}×{image_hw[1]}")
        return self.onnx_path

    # ---------------------------------------------------------------- sessions

    def settings(self) -> OrtSettings:
        """The session settings from the engine options; conv_algo=auto resolved by the graph's precision."""
        if self._settings is None:
            algo = self.opts["conv_algo"]
            if algo == "auto":
                fp16 = (self._meta or {}).get("dtype", self.dtype) == "fp16"
                algo = "heuristic" if fp16 else "exhaustive"
            self._settings = OrtSettings(cuda_graph=self.cuda_graph, tf32=self.opts["tf32"],
                                         prefer_nhwc=self.opts["nhwc"], conv_algo=algo, threads=self.opts["threads"])
        return self._settings

    def _device_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _session(self, path: Path, cuda_graph: bool):
        settings = replace(self.settings(), cuda_graph=cuda_graph)
        return create_session(self.ort, path, settings, self._device_index() if self.on_cuda else None)

    def _bind(self, sess, bufs):
        binding = sess.io_binding()
        dev_type = "cuda" if self.on_cuda else "cpu"
        dev_id = self._device_index() if self.on_cuda else 0
        for name, t in bufs.graph_inputs().items():
            binding.bind_input(name, dev_type, dev_id, NUMPY_DTYPES[t.dtype], list(t.shape), t.data_ptr())
        for name, t in bufs.graph_outputs().items():
            binding.bind_output(name, dev_type, dev_id, NUMPY_DTYPES[t.dtype], list(t.shape), t.data_ptr())
        return binding

    def _slot(self, capacity: int, image_hw: tuple[int, int]):
        """(run_step, buffers) for a batch bucket: a session (per bucket on CUDA), static buffers, a binding."""
        if capacity in self._slots:
            return self._slots[capacity]
        path = self._graph_for(image_hw)
        bufs = StepBuffers.allocate(capacity, (3, *image_hw), self.params, self.device)
        t0 = time.perf_counter()
        use_graph = self.on_cuda and self.cuda_graph
        sess = None if self.on_cuda else self._cpu_session  # CPU: one session, dynamic batch
        if sess is None:
            try:
                sess = self._session(path, use_graph)
            except Exception as exc:  # a provider refusing CUDA graphs for this graph: run without them
                if not use_graph:
                    raise CCFastError(f"ONNX Runtime cannot load {path}: {exc}") from exc
                log.warning("engine 'ort': CUDA graph capture refused (%s); running without it", exc)
                use_graph = False
                sess = self._session(path, False)
            if not self.on_cuda:
                self._cpu_session = sess
        state = {"sess": sess, "binding": self._bind(sess, bufs), "graph": use_graph, "ran": False}
        sync = torch.cuda.current_stream(self.device).synchronize if self.on_cuda else (lambda: None)

        def run_step():
            sync()  # the torch copies feeding this step run on torch's stream, ORT's on its own
            try:
                state["sess"].run_with_iobinding(state["binding"])
            except Exception as exc:  # capture happens in the first runs; if it fails, run without graphs
                if not state["graph"] or state["ran"]:
                    raise
                log.warning("engine 'ort': CUDA graph capture failed (%s); running without it", exc)
                state["sess"] = self._session(path, False)
                state["binding"] = self._bind(state["sess"], bufs)
                state["graph"] = False
                state["sess"].run_with_iobinding(state["binding"])  # inputs are read-only: a clean retry
            state["ran"] = True

        self._timings[f"session_b{capacity}_s"] = time.perf_counter() - t0
        self._graph_state = state  # for timings(): whether CUDA graphs are in use
        self._slots[capacity] = (run_step, bufs)
        if not self.on_cuda and len(self._slots) > 8:  # CPU: one buffer set per batch size seen; keep a few
            self._slots.pop(next(iter(self._slots)))
        return self._slots[capacity]

    # ---------------------------------------------------------------- refinement

    def refine_batch(self, x0, labels, indices):
        x0 = x0.float()
        if x0.device != self.device and not (x0.device.type == self.device.type == "cuda"):
            raise CCFastError(f"images are on {x0.device} but the engine runs on {self.device}")
        image_hw = (int(x0.shape[2]), int(x0.shape[3]))
        limit = self.buckets[-1] if self.on_cuda else max(1, x0.shape[0])
        parts = []
        for start in range(0, x0.shape[0], limit):
            xb, lb = x0[start:start + limit], labels[start:start + limit]
            capacity = bucket_for(xb.shape[0], self.buckets) if self.on_cuda else xb.shape[0]
            run_step, bufs = self._slot(capacity, image_hw)
            bufs.load(xb, lb)
            t0 = time.perf_counter()
            # Without τ an example stops only on a NaN realness (step.py), and running on once every example has
            # stopped changes nothing (step_graph_runner): the per-step host check would only cost a sync.
            run_steps(bufs, run_step, self.config.steps, check_every_step=self.scalars.tau is not None)
            self._timings.setdefault(f"first_batch_b{capacity}_s", time.perf_counter() - t0)
            parts.append(collect(bufs, xb.shape[0], lb, self.scalars.tau))
        return RefineResult.cat(parts)

    def timings(self) -> dict:
        out = dict(self._timings)
        if self.on_cuda and getattr(self, "_graph_state", None) is not None:
            out["cuda_graph"] = float(self._graph_state["graph"])
        return out
