"""Assemble the step graph: one refinement step of SPEC §4 as a standalone ONNX model.

    inputs   x (B,3,H,W) f32 · x0 (B,3,H,W) f32 · labels (B,) int32 · active (B,) bool · params (10,) f32
    outputs  x_next (B,3,H,W) f32 · active_next (B,) bool · objective (B,) f32 · realness (B,) f32

    logits = f(x)  (normalisation, backbone with BatchNorm folded)     → J, ℓ_fake, dJ/dlogits  (head.py)
    active_next = active ∧ (ℓ_fake < τ)                                                       (step.py)
    ∇_x J = VJP of f at x applied to dJ/dlogits                                             (layers.py)
    x_next = active_next ? clamp(Π_{B2(x0,ε)}(x − α∇J/‖∇J‖), 0, 1) : x                         (step.py)

`objective` and `realness` are J and ℓ_fake at the input x (before the step). Batch is dynamic; H, W are the
checkpoint's. With dtype "fp16" the network (forward and VJP) runs in half precision between explicit
Casts, which is what strongly typed TensorRT networks take; head and step stay fp32. The fp16 VJP is seeded
with dJ/dlogits divided by its per-example max |·|: the step only uses the direction of ∇_x J, and this
keeps the backward pass inside fp16's range whatever the logits' scale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CCFastError, require
from ..io_utils import atomic_path
from .backbones import backbone_layers
from .graph import COMPUTE_DTYPES, OPSET, GraphBuilder, Tensor
from .head import emit_head
from .layers import ConvBN, MaxPool, Normalize
from .step import PARAM_SLOTS, emit_early_stop, emit_step, param_getter

INPUTS = ("x", "x0", "labels", "active", "params")
OUTPUTS = ("x_next", "active_next", "objective", "realness")
GRAPH_FORMAT = "ccfast-step-graph/1"


@dataclass(frozen=True)
class GraphLayout:
    """How the network part of the step graph is written; every choice computes the same function.

    pad_channels     zero input channels of the first convolution up to a multiple of 8 (tensor-core kernels
                     want C % 8 == 0)
    maxpool_scatter  "conv" | "interleave": how max-pool gradients go back onto the input grid (layers.MaxPool)
    dgrad            "conv" | "conv_transpose": the input gradient of each stride-1 convolution as a forward
                     Conv on flipped, transposed weights, or as ConvTranspose like the strided ones (layers.ConvBN)

    pad_channels and maxpool_scatter default to the graph as first written: their alternatives were measured
    under ONNX Runtime on an H200 (benchmarks/ort_variants.py, docs/export.md) and were not faster there (ONNX
    Runtime's fp16 convolutions miss tensor cores anyway, and its NHWC Pad is slow). dgrad defaults to "conv":
    the H200 profile put half of the fp32 step in ConvTranspose's cuDNN dgrad kernels, which a Conv avoids, and
    measured at 163ee46 it was faster or equal in 9 of 12 (setting, batch) pairs (docs/export.md);
    "conv_transpose" is the graph as first written, kept selectable to measure one against the other.
    """

    pad_channels: bool = False
    maxpool_scatter: str = "conv"
    dgrad: str = "conv"


def build_step_model(model, image_size: tuple[int, int], dtype: str = "fp32", metadata: dict | None = None,
                     layout: GraphLayout | None = None):
    """`model`: a frozen `JointModel` (eval mode). Returns an `onnx.ModelProto` that passes `onnx.checker`."""
    onnx = require("onnx", "onnx", "exporting the step graph")
    from onnx import TensorProto, helper

    if dtype not in COMPUTE_DTYPES:
        raise CCFastError(f"unknown dtype {dtype!r} for the step graph; choose one of {', '.join(COMPUTE_DTYPES)}")
    if model.training:
        raise CCFastError(
            "the model is in training mode; BatchNorm folding needs eval-mode statistics (call model.eval())"
        )
    cdt = COMPUTE_DTYPES[dtype]
    H, W = (int(s) for s in image_size)
    layout = layout or GraphLayout()
    if layout.maxpool_scatter not in MaxPool.SCATTERS:
        raise CCFastError(f"unknown max-pool scatter {layout.maxpool_scatter!r}; "
                          f"choose one of {', '.join(MaxPool.SCATTERS)}")
    if layout.dgrad not in ConvBN.DGRADS:
        raise CCFastError(f"unknown convolution dgrad {layout.dgrad!r}; choose one of {', '.join(ConvBN.DGRADS)}")
    layers = backbone_layers(model.backbone, layout.maxpool_scatter, layout.dgrad)
    padded = layout.pad_channels and isinstance(layers.layers[0], ConvBN) and layers.layers[0].pad_input_channels(8)
    normalize = Normalize(model.mean.flatten().tolist(), model.std.flatten().tolist())

    gb = GraphBuilder(compute_dtype=cdt)
    param = param_getter(gb, "params")
    x = Tensor("x", np.float32, (3, H, W))
    xn = normalize.forward(gb, x)
    logits_c = layers.forward(gb, gb.cast(xn, cdt, "x_net"))
    if logits_c.shape == () or len(logits_c.shape) != 1:
        raise CCFastError(f"the backbone does not end in a vector of logits (got per-example shape {logits_c.shape})")
    logits = gb.cast(logits_c, np.float32, "logits")
    J, realness, g_logits = emit_head(gb, logits, "labels", param)
    active_next = emit_early_stop(gb, "active", realness, param)
    if cdt != np.float32:
        amax = gb.op(
            "ReduceMax", [gb.op("Abs", [g_logits.name], "grad_logits_abs")], "grad_logits_amax", axes=[1], keepdims=1
        )
        tiny = gb.const(np.finfo(np.float32).tiny, np.float32, "tiny32")
        seed = gb.op("Div", [g_logits.name, gb.op("Max", [amax, tiny], "grad_logits_amax_floored")], "grad_logits_unit")
        g_logits = Tensor(seed, np.float32, g_logits.shape)
    g_net = layers.backward(gb, gb.cast(g_logits, cdt, "grad_logits_net"))
    g_x = normalize.backward(gb, gb.cast(g_net, np.float32, "grad_x_normalised"))
    x_next = emit_step(gb, x, "x0", g_x, active_next, param)

    # Graph outputs under their public names.
    renames = {x_next: "x_next", active_next: "active_next", J: "objective", realness: "realness"}
    for node in gb.nodes:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]

    B = "batch"
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", f32, [B, 3, H, W]),
        helper.make_tensor_value_info("x0", f32, [B, 3, H, W]),
        helper.make_tensor_value_info("labels", TensorProto.INT32, [B]),
        helper.make_tensor_value_info("active", TensorProto.BOOL, [B]),
        helper.make_tensor_value_info("params", f32, [len(PARAM_SLOTS)]),
    ]
    outputs = [
        helper.make_tensor_value_info("x_next", f32, [B, 3, H, W]),
        helper.make_tensor_value_info("active_next", TensorProto.BOOL, [B]),
        helper.make_tensor_value_info("objective", f32, [B]),
        helper.make_tensor_value_info("realness", f32, [B]),
    ]
    graph = helper.make_graph(gb.nodes, "ccfast_refinement_step", inputs, outputs, gb.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ccfast.export")
    onnx_model.ir_version = 8  # readable by every ONNX Runtime and TensorRT parser of the last three years
    meta = {"format": GRAPH_FORMAT, "dtype": dtype, "image_size": f"{H},{W}", "num_classes": str(logits.shape[0]),
            "param_slots": ",".join(PARAM_SLOTS), "first_conv_padded": str(int(bool(padded))),
            "maxpool_scatter": layout.maxpool_scatter, "dgrad": layout.dgrad, **(metadata or {})}
    helper.set_model_props(onnx_model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(onnx_model, full_check=False)
    return onnx_model


def graph_metadata(onnx_model) -> dict[str, str]:
    return {p.key: p.value for p in onnx_model.metadata_props}


def read_graph_metadata(path) -> dict[str, str]:
    """The metadata of a step-graph file, without loading its weights."""
    onnx = require("onnx", "onnx", "reading a step graph")
    path = Path(path)
    if not path.exists():
        raise CCFastError(
            f"{path}: no such ONNX file; write one with `python -m ccfast.export --checkpoint CKPT --onnx {path}`"
        )
    try:
        meta = graph_metadata(onnx.load(str(path), load_external_data=False))
    except Exception as exc:
        raise CCFastError(f"{path}: not a readable ONNX file ({exc})") from exc
    if meta.get("format") != GRAPH_FORMAT:
        raise CCFastError(f"{path}: not a ccfast step graph (format {meta.get('format')!r}, expected {GRAPH_FORMAT!r})")
    return meta


def cache_dir() -> Path:
    """Where engines keep graphs and plans they export themselves (keyed by the weights' fingerprint)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "ccfast-step-graphs"


def cache_stem(model, dtype: str, image_hw, layout: GraphLayout | None = None) -> str:
    """The file name (without suffix) of a graph an engine exports into `cache_dir()`: the weights' fingerprint
    and every export choice an engine option can make, so a cached graph is reused only where it is the one
    asked for."""
    layout = layout or GraphLayout()
    return f"step-{model_fingerprint(model)[:24]}-{dtype}-{layout.dgrad}-{image_hw[0]}x{image_hw[1]}"


def model_fingerprint(model) -> str:
    """sha256 of the model's parameters and buffers (normalisation included): ties a graph to its weights."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_step_graph(model, image_size, path, dtype: str = "fp32", metadata: dict | None = None,
                      layout: GraphLayout | None = None) -> dict[str, str]:
    """Write the step graph of `model` to `path` atomically; returns its metadata."""
    onnx = require("onnx", "onnx", "exporting the step graph")
    from .. import __version__

    meta = {"ccfast_version": __version__, "weights_sha256": model_fingerprint(model), **(metadata or {})}
    onnx_model = build_step_model(model, image_size, dtype, meta, layout)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(onnx_model, str(tmp))
    return graph_metadata(onnx_model)
