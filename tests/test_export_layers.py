"""Each layer's emitted forward and VJP against PyTorch autograd, alone, on shapes chosen to be awkward
(odd sizes that make strided layers drop rows, ties inside max-pool windows), and the exporter's errors.

Tolerance: 1e-5 absolute (single layers, values O(1)); max-pool routing must match exactly. Convolutions run
every way their gradient is written (`ConvBN.DGRADS`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'ccfast[onnx]')")

from ccfast.errors import CCFastError  # noqa: E402
from ccfast.onnx_export.graph import OPSET, GraphBuilder, Tensor  # noqa: E402
from ccfast.onnx_export.layers import ConvBN, MaxPool, SubsamplePadShortcut  # noqa: E402


def onnx_forward_and_vjp(layer, x: torch.Tensor, gy_fn):
    """Run layer.forward and layer.backward as one ONNX graph; gy = gy_fn(y shape)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    gb = GraphBuilder()
    y = layer.forward(gb, Tensor("x", np.float32, tuple(x.shape[1:])))
    gy = gy_fn((x.shape[0], *y.shape))
    gx = layer.backward(gb, Tensor("gy", np.float32, y.shape))
    y_out = gb.op("Mul", [y.name, gb.const(1.0, np.float32, "one")], "y_out")  # keeps names distinct from inputs
    graph = helper.make_graph(
        gb.nodes, "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
         helper.make_tensor_value_info("gy", TensorProto.FLOAT, list(gy.shape))],
        [helper.make_tensor_value_info(y_out, TensorProto.FLOAT, list(gy.shape)),
         helper.make_tensor_value_info(gx.name, TensorProto.FLOAT, list(x.shape))],
        gb.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y_o, gx_o = sess.run(None, {"x": x.numpy(), "gy": gy.numpy()})
    return torch.from_numpy(y_o), torch.from_numpy(gx_o), gy


def autograd_vjp(fn, x, gy):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, gy)
    return y.detach(), gx


@pytest.mark.parametrize("dgrad", ConvBN.DGRADS)
@pytest.mark.parametrize("k,s,p,d,groups,size", [
    (3, 1, 1, 1, 1, 8), (3, 2, 1, 1, 1, 8), (3, 2, 1, 1, 1, 7), (1, 2, 0, 1, 1, 7), (1, 2, 0, 1, 1, 8),
    (7, 2, 3, 1, 1, 9), (7, 2, 3, 1, 1, 64), (3, 1, 2, 2, 1, 9), (3, 2, 1, 1, 2, 10), (5, 3, 1, 1, 1, 11),
    # stride 1, for the dgrad Conv: 1×1, grouped, unpadded (its Conv pads by d·(k−1) − p = 4), odd sizes, and
    # a 1×1 padded by 1 (a negative dgrad padding: it keeps the ConvTranspose)
    (1, 1, 0, 1, 1, 7), (3, 1, 1, 1, 2, 9), (5, 1, 0, 1, 1, 9), (3, 1, 0, 2, 2, 11), (1, 1, 1, 1, 1, 5),
])
def test_conv_bn_vjp_restores_the_input_shape(k, s, p, d, groups, size, dgrad):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, k, s, p, dilation=d, groups=groups, bias=True)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    seq = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 4, size, size)
    layer = ConvBN(conv, bn, "c", dgrad)
    y_o, gx_o, gy = onnx_forward_and_vjp(layer, x, lambda shape: torch.randn(shape))
    assert layer.dgrad_is_conv == (dgrad == "conv" and s == 1 and p <= d * (k - 1))
    y_t, gx_t = autograd_vjp(seq, x, gy)
    assert y_o.shape == y_t.shape and gx_o.shape == x.shape
    assert (y_o - y_t).abs().max() <= 1e-5 and (gx_o - gx_t).abs().max() <= 1e-5


@pytest.mark.parametrize("scatter", MaxPool.SCATTERS)
@pytest.mark.parametrize("k,s,p,size", [(3, 2, 1, 8), (3, 2, 1, 9), (2, 2, 0, 8), (3, 1, 1, 6), (3, 2, 0, 9),
                                        (2, 2, 1, 8), (3, 3, 1, 10), (5, 2, 2, 11)])
def test_maxpool_vjp_routes_to_pytorchs_first_maximum(k, s, p, size, scatter):
    """Inputs drawn from {−1, 0, 1, 2}: most windows hold tied maxima, so the routing rule is exercised.
    Both scatters (grouped ConvTranspose, interleaved residue planes) must give PyTorch's gradient."""
    torch.manual_seed(1)
    x = torch.randint(-1, 3 if k > 2 else 1, (2, 3, size, size)).float()  # 2×2 windows: {−1, 0}, ties as often
    pool = nn.MaxPool2d(k, s, p)
    layer = MaxPool(pool, "pool", scatter)
    y_o, gx_o, gy = onnx_forward_and_vjp(layer, x, lambda shape: torch.rand(shape) + 0.5)
    y_t, gx_t = autograd_vjp(pool, x, gy)
    xp = torch.nn.functional.pad(x, (p, p, p, p), value=float("-inf"))
    Ho, Wo = y_t.shape[2:]
    hits = sum(
        (xp[..., i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s] == y_t).int()
        for i in range(k)
        for j in range(k)
    )
    assert (hits > 1).float().mean() > 0.3  # many windows hold more than one maximum
    assert torch.equal(y_o, y_t)
    assert (gx_o - gx_t).abs().max() <= 1e-6  # same positions; sums of the same overlapping gradients


def test_interleave_scatter_refuses_stride_past_kernel():
    with pytest.raises(ValueError, match="stride ≤ kernel"):
        MaxPool(nn.MaxPool2d(2, 3), "pool", "interleave")
    with pytest.raises(ValueError, match="unknown max-pool scatter"):
        MaxPool(nn.MaxPool2d(2, 2), "pool", "gather")


def test_dgrad_conv_equals_conv_transpose_for_rectangular_grouped_dilated_kernels():
    """Conv(gy, W′, padding d·(k−1) − p) = ConvTranspose(gy, W) per axis, in float64 against PyTorch's own
    conv_transpose2d, and through the emitted graph; an unknown dgrad is refused by the layer and the exporter."""
    from ccfast.models import build_model
    from ccfast.onnx_export.build import GraphLayout, build_step_model

    torch.manual_seed(6)
    conv = nn.Conv2d(4, 6, (3, 2), padding=(1, 0), dilation=(1, 2), groups=2, bias=False)
    layer = ConvBN(conv, None, "c")
    gy = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    got = torch.nn.functional.conv2d(gy, torch.from_numpy(layer.dgrad_weight()).double(), padding=(1, 2),
                                     dilation=(1, 2), groups=2)
    want = torch.nn.functional.conv_transpose2d(gy, conv.weight.detach().double(), padding=(1, 0), dilation=(1, 2),
                                                groups=2)
    assert got.shape == want.shape and (got - want).abs().max() <= 1e-12
    x = torch.randn(2, 4, 9, 8)
    _, gx_o, gy = onnx_forward_and_vjp(layer, x, lambda shape: torch.randn(shape))
    assert layer.dgrad_is_conv
    assert (gx_o - autograd_vjp(conv, x, gy)[1]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="unknown convolution dgrad"):
        ConvBN(conv, None, "c", "fft")
    with pytest.raises(CCFastError, match="unknown convolution dgrad 'fft'"):
        build_step_model(build_model("tiny", 10).eval(), (16, 16), layout=GraphLayout(dgrad="fft"))


@pytest.mark.parametrize("dgrad", ConvBN.DGRADS)
@pytest.mark.parametrize("stride", [2, 1])
@pytest.mark.parametrize("c_in,multiple,padded", [(3, 8, True), (8, 8, False), (5, 4, True)])
def test_conv_with_padded_input_channels_is_the_same_function(c_in, multiple, padded, stride, dgrad):
    """Zero input channels (weights and input) change nothing: the same y and gx, of x's own shape."""
    torch.manual_seed(4)
    conv = nn.Conv2d(c_in, 6, 7, stride, 3, bias=False)
    bn = nn.BatchNorm2d(6).eval()
    x = torch.randn(2, c_in, 13, 13)
    layer = ConvBN(conv, bn, "stem", dgrad)
    assert layer.pad_input_channels(multiple) is padded
    assert layer.w.shape[1] % multiple == 0 and not layer.w[:, c_in:].any()
    y_o, gx_o, gy = onnx_forward_and_vjp(layer, x, lambda shape: torch.randn(shape))
    y_t, gx_t = autograd_vjp(nn.Sequential(conv, bn).eval(), x, gy)
    assert gx_o.shape == x.shape
    assert (y_o - y_t).abs().max() <= 1e-5 and (gx_o - gx_t).abs().max() <= 1e-5


@pytest.mark.parametrize("size,planes", [(8, 8), (7, 8), (16, 32)])
def test_option_a_shortcut_vjp(size, planes):
    from ccfast.models import LambdaShortcut

    torch.manual_seed(2)
    shortcut = LambdaShortcut(planes)
    x = torch.randn(2, planes // 2, size, size)
    y_o, gx_o, gy = onnx_forward_and_vjp(SubsamplePadShortcut(shortcut.pad, "sc"), x, lambda shape: torch.randn(shape))
    y_t, gx_t = autograd_vjp(shortcut, x, gy)
    assert torch.equal(y_o, y_t) and torch.equal(gx_o, gx_t)


def test_unsupported_layer_is_named():
    from ccfast.models import build_model
    from ccfast.onnx_export.build import build_step_model

    model = build_model("tiny", 10).eval()
    model.backbone.pool = nn.AvgPool2d(3, 2, 1)
    with pytest.raises(CCFastError, match=r"layer pool of type AvgPool2d"):
        build_step_model(model, (16, 16))
    model = build_model("tiny", 10).eval()
    model.backbone.extra = nn.Dropout(0.1)
    with pytest.raises(CCFastError, match=r"layer 'extra' of type Dropout"):
        build_step_model(model, (16, 16))
    model = build_model("resnet50", 10).eval()
    model.backbone.layer2[1].relu = nn.GELU()
    with pytest.raises(CCFastError, match=r"layer2\.1\.relu of type GELU"):
        build_step_model(model, (64, 64))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    from ccfast.models import JointModel

    with pytest.raises(CCFastError, match=r"cannot export backbone Custom.*TinyNet"):
        build_step_model(JointModel(Custom()).eval(), (8, 8))


def test_training_mode_and_bad_dtype_are_refused():
    from ccfast.models import build_model
    from ccfast.onnx_export.build import build_step_model

    model = build_model("tiny", 10)
    with pytest.raises(CCFastError, match="training mode"):
        build_step_model(model.train(), (16, 16))
    with pytest.raises(CCFastError, match="unknown dtype"):
        build_step_model(model.eval(), (16, 16), dtype="int8")


def test_emitted_head_equals_objective_grad_ref():
    """The head subgraph alone (logits in; J, ℓ_fake, dJ/dlogits out) against `objective_grad_ref`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ccfast.objectives import OBJECTIVES, REALNESS, HeadParams, objective_grad_ref
    from ccfast.onnx_export.head import emit_head, head_coefficients
    from ccfast.onnx_export.step import PARAM_SLOTS, param_getter, params_vector

    C = 7
    gb = GraphBuilder()
    J, ell, g = emit_head(gb, Tensor("z", np.float32, (C,)), "labels", param_getter(gb, "params"))
    graph = helper.make_graph(
        gb.nodes,
        "head",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", C]),
            helper.make_tensor_value_info("labels", TensorProto.INT32, ["B"]),
            helper.make_tensor_value_info("params", TensorProto.FLOAT, [len(PARAM_SLOTS)]),
        ],
        [
            helper.make_tensor_value_info(J, TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info(ell, TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info(g.name, TensorProto.FLOAT, ["B", C]),
        ],
        gb.initializers,
    )
    sess = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    torch.manual_seed(3)
    z = torch.randn(6, C) * 6
    z[0, 2] = 120.0  # a realness score far past exp's fp32 range: softplus must stay finite
    z[1, 0] = -30.0  # and far below: σ(s) ≈ 1e-13 must not round to 0 (it sets bce's whole gradient)
    labels = torch.tensor([2, 0, 6, 3, 3, 1])
    for realness in REALNESS:
        for objective in OBJECTIVES:
            head = HeadParams(objective=objective, realness=realness, w_ce=0.6, w_d=1.7, ell0=0.8)
            J_ref, ell_ref, g_ref = objective_grad_ref(z, labels, head)
            out = sess.run(None, {"z": z.numpy(), "labels": labels.numpy().astype(np.int32),
                                  "params": params_vector(0.1, None, None, head_coefficients(head))})
            J_o, ell_o, g_o = (torch.from_numpy(o) for o in out)
            what = f"{objective}/{realness}"
            assert torch.isfinite(J_o).all() and torch.isfinite(g_o).all(), what
            assert torch.allclose(J_o, J_ref, rtol=1e-5, atol=1e-5), what
            assert torch.allclose(ell_o, ell_ref, rtol=1e-6, atol=1e-6), what
            assert torch.allclose(g_o, g_ref, rtol=1e-5, atol=1e-6), what
            nonzero = g_ref.abs() > 0
            assert torch.allclose(g_o[nonzero], g_ref[nonzero], rtol=1e-4, atol=0), what  # relative, even in the tails


def test_every_architecture_is_walked_completely():
    """Every backbone in ccfast.models.ARCHS maps onto forward+VJP emitters with no leaf layer left over
    (the full graphs of three of them are run and built in the other test files)."""
    from ccfast.models import ARCHS, build_backbone
    from ccfast.onnx_export.backbones import backbone_layers
    from ccfast.onnx_export.layers import Residual

    for arch in ARCHS:
        backbone = build_backbone(arch, 10)
        layers = backbone_layers(backbone).layers
        blocks = sum(isinstance(layer, Residual) for layer in layers)
        if arch.startswith("cifar_resnet"):
            expected = (int(arch[len("cifar_resnet"):]) - 2) // 2  # 3 stages of (depth − 2)/6 blocks
        else:
            expected = {"tiny": 1, "resnet50": 16, "wide_resnet50_2": 16}[arch]
        assert blocks == expected, arch
