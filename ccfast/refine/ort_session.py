"""ONNX Runtime sessions for the step graph: the settings as one dataclass, and the session they make.

One home for how a session is configured, used by `--engine ort` (ort_engine.py) and by the measurement of
each setting (benchmarks/ort_variants.py, results in docs/export.md). The CUDA provider options:

    cuda_graph          enable_cuda_graph: capture the step once, replay it (fixed shapes and addresses)
    tf32                use_tf32: cuDNN/cuBLAS may run fp32 layers in TF32
    prefer_nhwc         prefer_nhwc: convolutions, transposed convolutions and pools in NHWC kernels (ONNX
                        Runtime rewrites the graph's layout and cancels the transposes it can)
    conv_algo           cudnn_conv_algo_search: exhaustive (time every algorithm once per shape), heuristic
                        (cuDNN's pick), default (one fixed algorithm)
    conv_max_workspace  cudnn_conv_use_max_workspace: let the search consider algorithms with large workspaces
    fuse_conv_bias      fuse_conv_bias: cuDNN-frontend graphs of convolution + bias
    opt_level           graph_optimization_level: disabled | basic | extended | all

`onnxruntime` is imported by the caller (this module stays importable without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CCFastError

CONV_ALGOS = {"exhaustive": "EXHAUSTIVE", "heuristic": "HEURISTIC", "default": "DEFAULT"}
OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def _bit(flag: bool) -> str:
    return "1" if flag else "0"


@dataclass(frozen=True)
class OrtSettings:
    cuda_graph: bool = True
    tf32: bool = False
    prefer_nhwc: bool = False
    conv_algo: str = "exhaustive"
    conv_max_workspace: bool = True
    fuse_conv_bias: bool = False
    opt_level: str = "all"
    threads: int | None = None  # intra-op threads (CPU)

    def __post_init__(self):
        if self.conv_algo not in CONV_ALGOS:
            raise CCFastError(f"conv_algo must be one of {', '.join(CONV_ALGOS)}, got {self.conv_algo!r}")
        if self.opt_level not in OPT_LEVELS:
            raise CCFastError(f"opt_level must be one of {', '.join(OPT_LEVELS)}, got {self.opt_level!r}")
        if self.threads is not None and self.threads < 1:
            raise CCFastError(f"threads must be a positive integer, got {self.threads}")

    def cuda_provider_options(self, device_index: int) -> dict[str, str]:
        opts = {"device_id": str(device_index), "enable_cuda_graph": _bit(self.cuda_graph),
                "use_tf32": _bit(self.tf32), "cudnn_conv_algo_search": CONV_ALGOS[self.conv_algo],
                "cudnn_conv_use_max_workspace": _bit(self.conv_max_workspace)}
        # Only when asked for: a build without NHWC kernels or without the frontend fusion then still starts.
        if self.prefer_nhwc:
            opts["prefer_nhwc"] = "1"
        if self.fuse_conv_bias:
            opts["fuse_conv_bias"] = "1"
        return opts

    def session_options(self, ort, profile_prefix: str | None = None, optimized_model: str | None = None):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.opt_level])
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if optimized_model:
            so.optimized_model_filepath = optimized_model
        return so


def create_session(ort, path: Path | str, settings: OrtSettings, device_index: int | None, **session_kw):
    """An InferenceSession on the CUDA provider (device_index given) or the CPU; refuses a silent CPU fallback."""
    if device_index is None:
        providers = ["CPUExecutionProvider"]
    else:
        providers = [("CUDAExecutionProvider", settings.cuda_provider_options(device_index))]
    so = settings.session_options(ort, **session_kw)
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    if device_index is not None and sess.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime falls back to the CPU when the CUDA provider fails to start (missing libraries).
        raise CCFastError(
            f"ONNX Runtime {ort.__version__} could not start its CUDA provider (it runs {sess.get_providers()}): its "
            "CUDA/cuDNN libraries are missing or of another major version; onnxruntime-gpu 1.31 needs CUDA 13 "
            "and cuDNN 9 (importing a matching torch first, or onnxruntime.preload_dlls(), makes them visible)")
    return sess
