"""A small ONNX graph builder: unique names, typed constants, node emission.

The step graph is written node by node with `onnx.helper` (no tracing: PyTorch's exporters cannot export
autograd, see docs/export.md). Everything here is plumbing; the mathematics lives in `layers.py`,
`head.py` and `step.py`.

Opset 17 throughout, and only operators of the TensorRT ONNX parser's support matrix
(onnx-tensorrt `docs/operators.md`, the TensorRT 8.5 / opset-17 list, which TensorRT 10 and TensorRT-RTX
extend): `ALLOWED_OPS` below is checked for every exported graph by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OPSET = 17

# Operators the step graph may use: each one is "Y" in onnx-tensorrt's operator matrix (TensorRT 8.5, opset
# 17) and implemented by ONNX Runtime's CPU and CUDA providers.
ALLOWED_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Clip", "Concat", "Conv", "ConvTranspose", "Div", "Equal", "Exp", "Flatten",
    "Gemm", "GlobalAveragePool", "Greater", "Less", "Log", "MatMul", "Max", "MaxPool", "Mul", "Not", "Or",
    "Pad", "ReduceMax", "ReduceSum", "Relu", "Reshape", "Slice", "Sqrt", "Squeeze", "Sub",
    "Unsqueeze", "Where",
})

# Reduced-precision variants: the network runs in this type, the head and the step stay fp32.
COMPUTE_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def onnx_type(np_dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))


@dataclass
class Tensor:
    """A tensor of the graph: its name, element type and static per-example shape (batch excluded)."""

    name: str
    dtype: type
    shape: tuple[int, ...]


@dataclass
class GraphBuilder:
    """Collects nodes and initializers; every emitted tensor gets a fresh, readable name."""

    compute_dtype: type = np.float32
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    _used: dict = field(default_factory=dict)
    _const_cache: dict = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        n = self._used.get(hint, 0)
        self._used[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs):
        """Emit one node; returns its output name (or names when n_out > 1)."""
        from onnx import helper

        if op_type not in ALLOWED_OPS:  # a programming error: the list is the contract with TensorRT
            raise AssertionError(f"{op_type} is not in the TensorRT-checked operator list")
        base = hint or op_type.lower()
        outs = [self.fresh(base if n_out == 1 else f"{base}_{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"n_{outs[0]}"), **attrs))
        return outs[0] if n_out == 1 else outs

    def initializer(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, array: np.ndarray, hint: str) -> str:
        """A learned weight, stored in the compute type (folded in fp32 first, then rounded once)."""
        return self.initializer(np.asarray(array, dtype=np.float32).astype(self.compute_dtype), hint)

    def const(self, value, dtype, hint: str = "c") -> str:
        """A small constant (scalars, shapes, axes); identical constants share one initializer."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.initializer(arr, hint)
        return self._const_cache[key]

    def axes(self, *axes: int) -> str:
        return self.const(list(axes), np.int64, "axes")

    def cast(self, t: Tensor, dtype, hint: str | None = None) -> Tensor:
        if np.dtype(t.dtype) == np.dtype(dtype):
            return t
        name = self.op("Cast", [t.name], hint or f"{t.name}_as_{np.dtype(dtype).name}", to=onnx_type(dtype))
        return Tensor(name, dtype, t.shape)
