"""kernels/cudnn_conv.py (one cuDNN graph per convolution with its epilogue) against its `_ref`,
ccfast.conv_epilogue, and that reference (and the block composed from it) against autograd.

The reference and the composition run everywhere (CPU in CI). The cuDNN ops need a CUDA GPU and
nvidia-cudnn-frontend (`pip install 'ccfast[cudnn]'`); there, reduced precision is judged against fp32 with plain
PyTorch's own error at that precision (the same convolution and epilogue in torch, in that dtype) as the
yardstick: ‖cudnn − ref32‖ ≤ 2·‖torch_lowp − ref32‖ + 1e-3·‖ref32‖. fp32 is judged so against torch with TF32
on, since cuDNN's heuristics may pick TF32 engines for a FLOAT compute type. The whole network built from these
ops is judged beside the Triton blocks in tests/test_fused_resnet.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ccfast.conv_epilogue import activation_saving_ops, conv_bias_act_ref, conv_dgrad_gate_ref
from ccfast.fused_resnet import FusedResNetWeights, input_grad, logits_and_saved
from factories import small_bottleneck_resnet

CUDA = torch.cuda.is_available()


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# (B, C, K, H, W, kernel, stride, padding): 1×1, 3×3 stride 1 and 2 at odd sizes, the stem's 7×7/2 over 8 channels
SHAPES = [(1, 16, 24, 9, 11, 1, 1, 0), (3, 24, 16, 9, 11, 3, 1, 1), (2, 16, 32, 9, 11, 3, 2, 1),
          (1, 32, 64, 7, 7, 1, 2, 0), (2, 8, 16, 19, 17, 7, 2, 3)]
IDS = ["1x1-B1", "3x3-B3", "3x3s2-B2", "1x1s2-B1", "7x7s2-B2"]


def _inputs(B, C, K, H, W, k, stride, padding, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(B, C, H, W, generator=g, dtype=dtype))
    w = torch.randn(K, C, k, k, generator=g, dtype=dtype) * (2 / (C * k * k)) ** 0.5
    b = 0.1 * torch.randn(K, generator=g, dtype=dtype)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    r = torch.randn(B, K, Ho, Wo, generator=g, dtype=dtype)
    dy = torch.randn(B, K, Ho, Wo, generator=g, dtype=dtype)
    return x, w, b, r, dy


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_references_match_autograd(shape):
    """relu(conv + b + r) and the gated input gradient of a convolution whose input is a ReLU output, against
    autograd in fp64 (the gate is that ReLU's output: a > 0 ⇔ pre > 0); the reference's math is fp32."""
    B, C, K, H, W, k, stride, padding = shape
    x, w, b, r, dy = _inputs(*shape)
    pre = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    a = torch.relu(pre)
    y = torch.relu(F.conv2d(a, w, b, stride=stride, padding=padding) + r)
    (dpre,) = torch.autograd.grad(F.conv2d(a, w, None, stride=stride, padding=padding), pre, dy)
    fp32 = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(conv_bias_act_ref(a.detach(), w, b, stride, padding, residual=r), y.detach(), **fp32)
    torch.testing.assert_close(conv_dgrad_gate_ref(dy, w, (H, W), stride, padding, gate=a.detach()), dpre, **fp32)
    no_gate = conv_dgrad_gate_ref(dy, w, (H, W), stride, padding, add=x)
    torch.testing.assert_close(no_gate, torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=padding) + x,
                               **fp32)
    assert bool((dpre == 0).any()) and bool((dpre != 0).any()), "the gate should gate some units, not all"


@pytest.mark.parametrize("B,H,W", [(1, 37, 45), (3, 33, 31)])
def test_activation_saving_composition_matches_autograd(B, H, W):
    """The whole bottleneck ResNet through `activation_saving_ops` (the `_ref` ops): logits and ∂L/∂x against
    autograd of the JointModel in fp64; what it saves are ReLU outputs."""
    model = small_bottleneck_resnet(seed=B).double()
    g = torch.Generator().manual_seed(H)
    x = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    dlogits = torch.randn(B, 10, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    logits_ag = model(xr)
    (grad_ag,) = torch.autograd.grad(logits_ag, xr, dlogits)
    weights = FusedResNetWeights.from_model(model)
    ops = activation_saving_ops()
    logits, saved = logits_and_saved(weights, x, ops)
    grad = input_grad(weights, saved, dlogits, ops)
    torch.testing.assert_close(logits, logits_ag.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_ag.float(), rtol=1e-4, atol=1e-5 * float(grad_ag.abs().max()))
    first = saved.blocks[0]
    assert first.a1.min() >= 0 and bool((first.a1 == 0).any()) and first.mask_out.shape[1] == 32


@pytest.mark.parametrize("shape", SHAPES[:3], ids=IDS[:3])
def test_the_epilogue_in_torch_rung_computes_the_reference(shape, monkeypatch):
    """The ladder's last rung runs only the bare convolution in cuDNN and the epilogue in torch: that epilogue
    code, checked on CPU with the cuDNN graph replaced by the bare torch convolution (the graph's own job)."""
    from ccfast.kernels import cudnn_conv

    B, C, K, H, W, k, stride, padding = shape

    class BareConv:  # what a built "epilogue in torch" graph computes: the convolution or its input gradient
        rung = cudnn_conv.IN_TORCH

        def __init__(self, op):
            self.op = op

        def run(self, inputs, out):
            assert set(inputs) - {"bias", "residual", "add", "gate"} == ({"x", "w"} if self.op == "fwd"
                                                                         else {"dy", "w"})
            if self.op == "fwd":
                r = F.conv2d(inputs["x"].float(), inputs["w"].float(), stride=stride, padding=padding)
            else:
                r = torch.nn.grad.conv2d_input(out.shape, inputs["w"].float(), inputs["dy"].float(), stride=stride,
                                               padding=padding)
            return out.copy_(r)

    monkeypatch.setattr(cudnn_conv, "_check", lambda name, **t: torch.device("cpu"))
    monkeypatch.setattr(cudnn_conv, "_build", lambda key, device, rungs: BareConv(
        "fwd" if key[0] == "conv_bias_act" else "dgrad"))
    x, w, b, r, dy = (t.float() for t in _inputs(*shape, seed=4))
    y = cudnn_conv.conv_bias_act(x, w, b, stride, padding, residual=r)
    torch.testing.assert_close(y, conv_bias_act_ref(x, w, b, stride, padding, residual=r), rtol=1e-5, atol=1e-5)
    dx = cudnn_conv.conv_dgrad_gate(dy, w, (H, W), stride, padding, gate=x, add=x)
    ref = conv_dgrad_gate_ref(dy, w, (H, W), stride, padding, gate=x, add=x)
    torch.testing.assert_close(dx, ref, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    assert bool((dx == 0).any()) and bool((dx != 0).any())


def test_fusion_summary_counts_the_rungs_of_built_graphs(monkeypatch):
    """The benchmarks' one-line note: built graphs counted per (op, rung), sorted."""
    from ccfast.kernels import cudnn_conv

    class Built:
        def __init__(self, rung):
            self.rung = rung

    monkeypatch.setattr(cudnn_conv, "_GRAPHS", {("conv_dgrad_gate", 1): Built(cudnn_conv.NO_EPILOGUE),
                                                 ("conv_bias_act", 2): Built(cudnn_conv.IN_GRAPH),
                                                 ("conv_bias_act", 3): Built(cudnn_conv.IN_GRAPH)})
    assert cudnn_conv.fusion_summary() == "conv_bias_act: epilogue in graph ×2, conv_dgrad_gate: no epilogue ×1"


# ---------------------------------------------------------------- the cuDNN graphs (GPU + nvidia-cudnn-frontend)


def _cudnn_ops():
    if not CUDA:
        pytest.skip("the cuDNN graph ops need a CUDA GPU")
    pytest.importorskip("cudnn", reason="needs nvidia-cudnn-frontend (pip install 'ccfast[cudnn]')")
    from ccfast.kernels import cudnn_conv

    return cudnn_conv


def _within_yardstick(mine, plain, ref, what):
    err, yardstick = float((mine.double() - ref).norm()), float((plain.double() - ref).norm())
    assert err <= 2.0 * yardstick + 1e-3 * float(ref.norm()), (what, err, yardstick)
    return err, yardstick


RUNGS = ["epilogue in graph", "epilogue in graph, bias in io dtype", "epilogue in torch"]


@pytest.mark.gpu
@pytest.mark.parametrize("rung", RUNGS, ids=["in-graph", "bias-io", "in-torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_cudnn_conv_bias_act_and_dgrad_gate_match_the_reference(shape, dtype, rung, fp32_without_tf32):
    """Each rung of the ladder (forced; a rung cuDNN cannot build here is skipped with its message) against the
    fp32 reference, with plain PyTorch at that dtype as the yardstick."""
    ops = _cudnn_ops()
    from ccfast.errors import CCFastError

    B, C, K, H, W, k, stride, padding = shape
    x64, w64, b64, r64, dy64 = _inputs(*shape, seed=3)
    dev = torch.device("cuda")
    x, w, r, dy = (_cl(t.to(dev, dtype)) for t in (x64, w64, r64, dy64))
    b = b64.to(dev, torch.float32)
    ref_y = conv_bias_act_ref(x.double(), w.double(), b.double(), stride, padding, residual=r.double())
    ref_dx = conv_dgrad_gate_ref(dy.double(), w.double(), (H, W), stride, padding, gate=x.double())
    torch.backends.cudnn.allow_tf32 = dtype == torch.float32  # the yardstick at fp32: what TF32 costs
    plain_y = torch.relu(F.conv2d(x, w, b.to(dtype), stride=stride, padding=padding) + r)
    plain_dx = torch.where(x > 0, torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=padding), 0)
    torch.backends.cudnn.allow_tf32 = False
    ops.clear_cache()
    try:
        with ops.force_rung(rung):
            y = ops.conv_bias_act(x, w, b, stride, padding, residual=r)
            dx = ops.conv_dgrad_gate(dy, w, (H, W), stride, padding, gate=x)
    except CCFastError as exc:
        pytest.skip(f"cuDNN builds no {rung!r} graph here: {exc}")
    report = ops.fusion_report()
    expected = rung if rung != RUNGS[1] or dtype != torch.float32 else RUNGS[2]  # fp32 has no separate io dtype
    assert report.get(f"conv_bias_act: {expected}") == 1, report
    assert y.dtype == dx.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == ref_y.shape and dx.shape == x.shape
    _within_yardstick(y, plain_y, ref_y, "y")
    _within_yardstick(dx, plain_dx, ref_dx, "dx")
    # the variants the block uses: no bias, no ReLU (the downsample); dgrad + add, no gate (its identity sum)
    y_lin = ops.conv_bias_act(x, w, None, stride, padding, relu=False)
    _within_yardstick(y_lin, F.conv2d(x, w, None, stride=stride, padding=padding),
                      conv_bias_act_ref(x.double(), w.double(), None, stride, padding, relu=False), "y_lin")
    add = _cl(torch.randn(x.shape, device=dev).to(dtype))
    with ops.force_rung(rung):
        dx_add = ops.conv_dgrad_gate(dy, w, (H, W), stride, padding, add=add)
    _within_yardstick(dx_add, torch.nn.grad.conv2d_input(x.shape, w, dy, stride=stride, padding=padding) + add,
                      conv_dgrad_gate_ref(dy.double(), w.double(), (H, W), stride, padding, add=add.double()), "dx+a")
    n = ops.cached_graphs()
    ops.conv_bias_act(x, w, b, stride, padding, residual=r)
    assert ops.cached_graphs() == n, "a second call of one shape reuses its graph"


@pytest.mark.gpu
def test_bf16_resnet50_convolutions_fuse_their_epilogue_in_the_graph():
    """What fused_ops=cudnn exists for: on this card cuDNN builds every bf16 convolution of a ResNet-50 block
    (1×1, 3×3, stride 2) with its epilogue in the graph, none at a lower rung."""
    ops = _cudnn_ops()
    ops.clear_cache()
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    for B, C, K, hw, k, stride in [(256, 256, 64, 16, 1, 1), (256, 64, 64, 16, 3, 1), (1, 128, 128, 16, 3, 2),
                                   (16, 128, 512, 8, 1, 1)]:
        pad = k // 2
        x = _cl(torch.relu(torch.randn(B, C, hw, hw, generator=g)).to(dev, torch.bfloat16))
        w = _cl((torch.randn(K, C, k, k, generator=g) * 0.05).to(dev, torch.bfloat16))
        y = ops.conv_bias_act(x, w, torch.zeros(K, device=dev), stride, pad)
        ops.conv_dgrad_gate(torch.ones_like(y), w, (hw, hw), stride, pad, gate=x, add=x if stride == 1 and C == K
                            else None)
    report = ops.fusion_report()
    assert set(report) == {"conv_bias_act: epilogue in graph", "conv_dgrad_gate: epilogue in graph"}, report


@pytest.mark.gpu
def test_cudnn_ops_refuse_bad_input_in_one_line():
    ops = _cudnn_ops()
    x = _cl(torch.rand(1, 8, 5, 5, device="cuda", dtype=torch.bfloat16))
    w = _cl(torch.rand(4, 6, 1, 1, device="cuda", dtype=torch.bfloat16))
    from ccfast.errors import CCFastError

    for call, match in ((lambda: ops.conv_bias_act(x, w, None), "8 channels, the weight expects 6"),
                        (lambda: ops.conv_bias_act(x.cpu(), w.cpu(), None), "CUDA device"),
                        (lambda: ops.conv_bias_act(x, w.float(), None), "one dtype")):
        with pytest.raises(CCFastError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
