"""Convolutions with their pointwise work in the epilogue, through cuDNN's graph API (`nvidia-cudnn-frontend`):
the cuDNN twin of the per-convolution steps of `ccfast.conv_epilogue` (issue 12).

What is fused and why. At 64×64 the refinement step is bound by activation traffic, not FLOPs (issue 12), and
the compiled recipe runs every convolution as a cuDNN call followed by Inductor's pointwise kernels: bias and
ReLU (and the residual add) after each forward convolution, the ReLU-mask multiply (and the residual sum)
after each input gradient. Each of those kernels reads and writes the whole activation once more, and at
B = 1 each is one more ~3.5 µs launch. Here each convolution is ONE cuDNN operation graph whose runtime-
fusion engine applies the pointwise ops to the accumulator before the single store:

    conv_bias_act    y  = relu(conv(x, W) + b (+ r))                       conv_fprop → bias (→ add) → relu
    conv_dgrad_gate  dx = (conv2d_input(W, dy) (+ a)) ⊙ [gate > 0]          conv_dgrad (→ add) → relu_backward

Both in fp32 accumulation and fp32 intermediates (the pygraph's compute/intermediate type), one rounding to
the storage dtype at the store. The gate is the ReLU's *output* a = relu(pre) of whatever produced the
gradient's tensor: cuDNN's relu_backward takes its forward tensor, and a > 0 ⇔ pre > 0 (both false at 0, where
the gradient is 0 either way), so the forward saves its bf16 activations (2 bytes per element) instead of the
1-bit masks of `kernels/bottleneck.py`. The convolutions' own operands are what the block needs anyway.

Graphs. One per (op, shapes, strides, dtypes, options), built on first use (heuristics A, then FALLBACK) and
cached with a workspace of its own, so a call inside CUDA-graph capture only executes: warm up before capture
(the triton engine does). Execution goes to the current stream (the handle's stream is set per call; the
frontend skips the driver call when it has not changed). `cudnn` is imported on first use: importing this module
needs only torch.

Where cuDNN has no engine for a fused graph (its runtime-fusion support depends on the card, the dtypes and the
shape), the op steps down a ladder rather than fail, and `fusion_report()` says how many graphs took each rung:

    "epilogue in graph"                   the fused graph above (bias in fp32)
    "epilogue in graph, bias in io dtype" the same with the bias in the activations' dtype (conv_bias_act only)
    "epilogue in torch"                   the convolution alone in cuDNN, its epilogue as torch ops (fp32 math)
    "no epilogue"                         a call with nothing to fuse (a bare convolution or dgrad)

Only when even the bare convolution cannot be built is it a one-line CCFastError naming the graph. Tests run
every rung (`force_rung`); the benchmarks print the report beside their times.

Tensors are NCHW-indexed with channels_last strides (x, dy, gate, residual/add, and the outputs); weights
(K, C, R, S) channels_last; the bias (K,) fp32, given to cuDNN as (1, K, 1, 1). fp32 activations use TF32 only
as cuDNN's heuristics choose for the FLOAT compute type; the reference is exact fp32 (see the tests'
tolerances).

tests/test_kernel_cudnn_conv.py checks the references and the torch-epilogue rung on CPU, and every rung against
the reference on a GPU with nvidia-cudnn-frontend installed (H200, stop 23: 59 passed, 1 skipped where cuDNN has
no fused engine for a strided odd-size dgrad, which the ladder then serves). Outputs are allocated channels_last
directly: `torch.empty(...).contiguous(memory_format=...)` allocates NCHW and copies, which at B = 256 was one
full-activation copy kernel per convolution, half the fused network's GPU time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch

from ccfast.conv_epilogue import bias_act_epilogue, dgrad_gate_epilogue
from ccfast.errors import CCFastError

_LOCK = threading.Lock()
_GRAPHS: dict[tuple, _Built] = {}
_HANDLES: dict[int, object] = {}


def _cudnn():
    try:
        import cudnn
    except ImportError as exc:  # the frontend wheel is optional: ccfast[cudnn]
        raise CCFastError(f"cuDNN graph ops need nvidia-cudnn-frontend (pip install 'ccfast[cudnn]'): {exc}") from None
    return cudnn


def _cudnn_dtype(dtype: torch.dtype):
    dt = _cudnn().data_type
    table = {torch.bfloat16: dt.BFLOAT16, torch.float16: dt.HALF, torch.float32: dt.FLOAT}
    if dtype not in table:
        raise CCFastError(f"cuDNN graph ops: dtype {dtype} is not supported (bf16, fp16, fp32)")
    return table[dtype]


def _handle(device: torch.device):
    idx = device.index if device.index is not None else torch.cuda.current_device()
    h = _HANDLES.get(idx)
    if h is None:
        with torch.cuda.device(idx):
            h = _HANDLES[idx] = _cudnn().create_handle()
    return h


def _channels_last_strides(shape) -> list[int]:
    B, C, H, W = shape
    return [H * W * C, 1, W * C, C]


IN_GRAPH, BIAS_IO, IN_TORCH, NO_EPILOGUE = ("epilogue in graph", "epilogue in graph, bias in io dtype",
                                           "epilogue in torch", "no epilogue")
_FORCED: list[str] = []  # force_rung's stack: tests build a given rung only


class _Built:
    """A built graph, its tensors (by role), its workspace and the ladder's rung it was built at."""

    def __init__(self, graph, tensors: dict, out_role: str, workspace: torch.Tensor, handle, rung: str):
        self.graph, self.tensors, self.out_role = graph, tensors, out_role
        self.workspace, self.handle, self.rung = workspace, handle, rung

    def run(self, inputs: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Execute on the current stream; inputs whose role this rung's graph does not have are not bound."""
        cudnn = _cudnn()
        cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(out.device).cuda_stream)
        pack = {self.tensors[role]: t for role, t in inputs.items() if role in self.tensors}
        pack[self.tensors[self.out_role]] = out
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return out


def _describe(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), tuple(t.stride()), t.dtype)


def _build(key: tuple, device: torch.device, rungs: list[tuple[str, Callable]]) -> _Built:
    """The cached graph of `key`, else the first of `rungs` ((label, make(graph, cudnn) -> (tensors by role,
    output role)), best first) that cuDNN builds; a one-line CCFastError when none does."""
    key = (*key, str(device))  # a graph is built with one device's handle
    built = _GRAPHS.get(key)
    if built is not None:
        return built
    with _LOCK:
        built = _GRAPHS.get(key)
        if built is not None:
            return built
        cudnn = _cudnn()
        handle = _handle(device)
        io = _cudnn_dtype(key[1])
        if _FORCED:
            rungs = [r for r in rungs if r[0] == _FORCED[-1]] or rungs[-1:]
        failures = []
        for label, make in rungs:
            graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                                  compute_data_type=cudnn.data_type.FLOAT, handle=handle)
            try:
                tensors, out_role = make(graph, cudnn)
                graph.validate()
                graph.build_operation_graph()
                graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
                graph.check_support()
                graph.build_plans()
            except Exception as exc:  # cudnnGraphNotSupportedError, RuntimeError: cuDNN's own one-liners
                failures.append(f"{label}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
            ws = torch.empty(max(1, graph.get_workspace_size()), device=device, dtype=torch.uint8)
            built = _GRAPHS[key] = _Built(graph, tensors, out_role, ws, handle, label)
            return built
        raise CCFastError(f"cuDNN graph {key[0]} {key[2:-1]} could not be built: {'; '.join(failures)}")


@contextlib.contextmanager
def force_rung(label: str):
    """Build new graphs at this rung of the ladder only (tests: every rung's result is checked); graphs already
    built keep theirs, so callers clear the cache first (`clear_cache`)."""
    _FORCED.append(label)
    try:
        yield
    finally:
        _FORCED.pop()


def clear_cache() -> None:
    """Drop every built graph (their workspaces with them)."""
    with _LOCK:
        _GRAPHS.clear()


def _tensor(graph, name: str, t: torch.Tensor, shape=None, stride=None):
    return graph.tensor(name=name, dim=list(shape or t.shape), stride=list(stride or t.stride()),
                        data_type=_cudnn_dtype(t.dtype))


def _cl(t: torch.Tensor | None) -> torch.Tensor | None:
    """channels_last (a no-op when it already is), so that one graph serves every caller of a shape."""
    return None if t is None else t.contiguous(memory_format=torch.channels_last)


def _check(name: str, **tensors) -> torch.device:
    devices = {t.device for t in tensors.values() if t is not None}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise CCFastError(f"{name}: every tensor must be on one CUDA device, got {sorted(map(str, devices))}")
    for role, t in tensors.items():
        if t is not None and t.ndim != 4:
            raise CCFastError(f"{name}: {role} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    return next(iter(devices))


def conv_bias_act(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0,
                  residual: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """relu(conv2d(x, w, stride, padding) (+ bias) (+ residual)) as one cuDNN graph (relu=False: without the
    ReLU; bias None: none added): y (B, K, Ho, Wo) in x's dtype, channels_last. The `_ref` is
    `ccfast.conv_epilogue.conv_bias_act_ref`."""
    device = _check("conv_bias_act", x=x, w=w, residual=residual)
    x, w, residual = _cl(x), _cl(w), _cl(residual)
    if w.dtype != x.dtype or (residual is not None and residual.dtype != x.dtype):
        raise CCFastError(f"conv_bias_act: x, w (and residual) need one dtype, got {x.dtype}, {w.dtype}")
    B, C, H, W = x.shape
    K, Cw, R, S = w.shape
    if Cw != C:
        raise CCFastError(f"conv_bias_act: x has {C} channels, the weight expects {Cw}")
    Ho, Wo = (H + 2 * padding - R) // stride + 1, (W + 2 * padding - S) // stride + 1
    out_shape = (B, K, Ho, Wo)
    if residual is not None and tuple(residual.shape) != out_shape:
        raise CCFastError(f"conv_bias_act: residual must be {out_shape}, got {tuple(residual.shape)}")
    b4 = None if bias is None else bias.reshape(1, K, 1, 1).float().contiguous()
    key = ("conv_bias_act", x.dtype, _describe(x), _describe(w), stride, padding, bias is not None,
           None if residual is None else _describe(residual), relu)

    def make(epilogue: bool, bias_dtype: torch.dtype):
        def build(graph, cudnn):
            t = {"x": _tensor(graph, "x", x), "w": _tensor(graph, "w", w)}
            y = graph.conv_fprop(image=t["x"], weight=t["w"], padding=[padding] * 2, stride=[stride] * 2,
                                 dilation=[1, 1], name="conv")
            if epilogue and b4 is not None:
                t["bias"] = _tensor(graph, "bias", b4.to(bias_dtype))
                y = graph.bias(input=y, bias=t["bias"], name="bias_add")
            if epilogue and residual is not None:
                t["residual"] = _tensor(graph, "residual", residual)
                y = graph.add(a=y, b=t["residual"], name="residual_add")
            if epilogue and relu:
                y = graph.relu(input=y, name="relu")
            y.set_output(True).set_data_type(_cudnn_dtype(x.dtype)).set_dim(list(out_shape)).set_stride(
                _channels_last_strides(out_shape))
            t["y"] = y
            return t, "y"
        return build

    if b4 is None and residual is None and not relu:
        rungs = [(NO_EPILOGUE, make(False, torch.float32))]
    else:
        rungs = [(IN_GRAPH, make(True, torch.float32))]
        if b4 is not None and x.dtype != torch.float32:
            rungs.append((BIAS_IO, make(True, x.dtype)))
        rungs.append((IN_TORCH, make(False, torch.float32)))
    built = _build(key, device, rungs)
    out = torch.empty(out_shape, device=device, dtype=x.dtype, memory_format=torch.channels_last)
    inputs = {"x": x, "w": w}
    if b4 is not None:
        inputs["bias"] = b4.to(x.dtype) if built.rung == BIAS_IO else b4
    if residual is not None:
        inputs["residual"] = residual
    y = built.run(inputs, out)
    # the "epilogue in torch" rung: the reference's epilogue, in fp32 math as the fused graph computes it
    return y if built.rung != IN_TORCH else bias_act_epilogue(y, b4, residual, relu, x.dtype)


def conv_dgrad_gate(dy: torch.Tensor, w: torch.Tensor, in_hw: tuple[int, int], stride: int = 1, padding: int = 0,
                    gate: torch.Tensor | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
    """(conv2d_input(w, dy) (+ add)) ⊙ [gate > 0] as one cuDNN graph: the input gradient (B, C, H, W) of a
    convolution with weight w (K, C, R, S), for the input size in_hw = (H, W) (strided convolutions round), in
    dy's dtype, channels_last. gate: the ReLU output whose mask gates the result (None: no gate); add: a
    gradient added before the gate (the identity path). The `_ref` is
    `ccfast.conv_epilogue.conv_dgrad_gate_ref`."""
    device = _check("conv_dgrad_gate", dy=dy, w=w, gate=gate, add=add)
    dy, w, gate, add = _cl(dy), _cl(w), _cl(gate), _cl(add)
    B, K, Ho, Wo = dy.shape
    Kw, C, R, S = w.shape
    if Kw != K:
        raise CCFastError(f"conv_dgrad_gate: dy has {K} channels, the weight produces {Kw}")
    H, W = in_hw
    out_shape = (B, C, H, W)
    for role, t in (("gate", gate), ("add", add)):
        if t is not None and (tuple(t.shape) != out_shape or t.dtype != dy.dtype):
            raise CCFastError(f"conv_dgrad_gate: {role} must be {out_shape} {dy.dtype}, got {tuple(t.shape)} {t.dtype}")
    key = ("conv_dgrad_gate", dy.dtype, _describe(dy), _describe(w), tuple(in_hw), stride, padding,
           None if gate is None else _describe(gate), None if add is None else _describe(add))

    def make(epilogue: bool):
        def build(graph, cudnn):
            t = {"dy": _tensor(graph, "dy", dy), "w": _tensor(graph, "w", w)}
            dx = graph.conv_dgrad(loss=t["dy"], filter=t["w"], padding=[padding] * 2, stride=[stride] * 2,
                                  dilation=[1, 1], name="dgrad")
            dx.set_dim(list(out_shape)).set_stride(_channels_last_strides(out_shape))
            if epilogue and add is not None:
                t["add"] = _tensor(graph, "add", add)
                dx = graph.add(a=dx, b=t["add"], name="grad_add")
            if epilogue and gate is not None:
                t["gate"] = _tensor(graph, "gate", gate)
                dx = graph.relu_backward(loss=dx, input=t["gate"], name="relu_gate")
            dx.set_output(True).set_data_type(_cudnn_dtype(dy.dtype)).set_dim(list(out_shape)).set_stride(
                _channels_last_strides(out_shape))
            t["dx"] = dx
            return t, "dx"
        return build

    if gate is None and add is None:
        rungs = [(NO_EPILOGUE, make(False))]
    else:
        rungs = [(IN_GRAPH, make(True)), (IN_TORCH, make(False))]
    built = _build(key, device, rungs)
    out = torch.empty(out_shape, device=device, dtype=dy.dtype, memory_format=torch.channels_last)
    inputs = {"dy": dy, "w": w}
    if add is not None:
        inputs["add"] = add
    if gate is not None:
        inputs["gate"] = gate
    dx = built.run(inputs, out)
    return dx if built.rung != IN_TORCH else dgrad_gate_epilogue(dx, add, gate, dy.dtype)


def cached_graphs() -> int:
    """How many cuDNN graphs are built."""
    return len(_GRAPHS)


def fusion_report() -> dict[str, int]:
    """How many built graphs took each rung of the ladder ({"conv_bias_act: epilogue in graph": 52, ...})."""
    out: dict[str, int] = {}
    for key, built in list(_GRAPHS.items()):
        name = f"{key[0]}: {built.rung}"
        out[name] = out.get(name, 0) + 1
    return out


def fusion_summary() -> str:
    """fusion_report() as one line for a benchmark row's notes: "conv_bias_act: epilogue in graph ×19, ..."."""
    return ", ".join(f"{k} ×{v}" for k, v in sorted(fusion_report().items()))
