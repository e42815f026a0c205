"""TensorRT: every exported graph parses and builds a plan (TensorRT-RTX builds without a GPU, so this runs in
CI), the CLI writes plans, plans are checked before use, and the runtime engine matches the reference
where a GPU the installed runtime supports is present (skipped elsewhere, with the exact reason).

Builds use optimisation level 0 (CI time); profiles for batch 1, 16 and 256 as in production.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (pip install 'ccfast[onnx]')")

from ccfast.errors import CCFastError  # noqa: E402
from ccfast.onnx_export.tensorrt_build import check_plan, import_tensorrt  # noqa: E402
from export_cases import ARCH_CASES, DEFAULT_DGRAD, DGRADS, checkpoint, graph  # noqa: E402


def _tensorrt_or_skip():
    try:
        return import_tensorrt()
    except CCFastError as exc:
        pytest.skip(str(exc))


BUCKETS = [1, 16, 256]


# Every backbone with the exporter's default dgrad; the other way of writing convolution gradients on the two
# small backbones only (it uses the same operators there, and ResNet-50's builds are CI's longest tests).
GRAPH_CASES = [pytest.param(a, d, marks=pytest.mark.slow) if a == "resnet50" else (a, d)
               for a in ARCH_CASES for d in DGRADS if a != "resnet50" or d == DEFAULT_DGRAD]


@pytest.mark.parametrize("arch,dgrad", GRAPH_CASES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_every_graph_parses_and_builds_a_plan(arch, dtype, dgrad, tmp_path):
    from ccfast.onnx_export.tensorrt_build import build_plan

    trt, runtime = _tensorrt_or_skip()
    plan = tmp_path / "step.plan"
    side = build_plan(graph(arch, dtype, dgrad), plan, BUCKETS, opt_level=0)
    assert plan.stat().st_size == side["plan_bytes"] > 0
    assert json.loads((tmp_path / "step.plan.json").read_text()) == side
    assert side["runtime"] == runtime and side["runtime_version"] == str(trt.__version__)
    assert side["buckets"] == BUCKETS and side["dtype"] == dtype
    size = ARCH_CASES[arch][0]
    io = {t["name"]: (t["kind"], t["dtype"], t["shape"]) for t in side["io"]}
    assert io == {
        "x": ("input", "FLOAT", [-1, 3, size, size]), "x0": ("input", "FLOAT", [-1, 3, size, size]),
        "labels": ("input", "INT32", [-1]), "active": ("input", "BOOL", [-1]), "params": ("input", "FLOAT", [10]),
        "x_next": ("output", "FLOAT", [-1, 3, size, size]), "active_next": ("output", "BOOL", [-1]),
        "objective": ("output", "FLOAT", [-1]), "realness": ("output", "FLOAT", [-1]),
    }


def test_alternative_graph_layouts_parse_and_build(tmp_path):
    """The measured alternatives of `GraphLayout` (padded first convolution, interleave max-pool scatter) stay
    TensorRT-parsable too, in fp16 and fp32."""
    from ccfast.onnx_export.build import GraphLayout, export_step_graph
    from ccfast.onnx_export.tensorrt_build import build_plan
    from export_cases import loaded

    _tensorrt_or_skip()
    model, info = loaded("tiny")
    layout = GraphLayout(pad_channels=True, maxpool_scatter="interleave")
    for dtype in ("fp16", "fp32"):
        onnx_path = tmp_path / f"alt-{dtype}.onnx"
        meta = export_step_graph(model, info.image_size, onnx_path, dtype, layout=layout)
        # tiny's first convolution has stride 1: its padded input gradient is a dgrad Conv, then a Slice
        assert meta["first_conv_padded"] == "1" and meta["maxpool_scatter"] == "interleave" and meta["dgrad"] == "conv"
        side = build_plan(onnx_path, tmp_path / f"alt-{dtype}.plan", [1, 16], opt_level=0)
        assert side["plan_bytes"] > 0 and side["dtype"] == dtype


def test_compute_capability_targets(tmp_path, caplog):
    from ccfast.onnx_export.tensorrt_build import build_plan

    trt, runtime = _tensorrt_or_skip()
    if runtime != "tensorrt_rtx":
        pytest.skip("compute-capability targets are a TensorRT-RTX option")
    cache = tmp_path / "timing.cache"
    side = build_plan(graph("tiny"), tmp_path / "a.plan", [1, 4], opt_level=0, compute_capabilities=["SM86", "8.9"],
                      timing_cache=str(cache))
    assert side["compute_capabilities"] == ["SM86", "8.9"]
    assert not cache.exists() and "timing cache" in caplog.text  # a no-op in TensorRT-RTX, said so
    with pytest.raises(CCFastError, match="unknown compute capability"):
        build_plan(graph("tiny"), tmp_path / "b.plan", [1], opt_level=0, compute_capabilities=["SM99"])


def test_parser_errors_name_the_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    trt, _ = _tensorrt_or_skip()
    from ccfast.onnx_export.tensorrt_build import TrtLogger, parse_onnx

    node = helper.make_node("StringNormalizer", ["s"], ["t"], name="not_for_gpus")
    g = helper.make_graph([node], "bad", [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
                          [helper.make_tensor_value_info("t", TensorProto.STRING, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CCFastError, match=r"rejected the step graph:[\s\S]*not_for_gpus"):
        parse_onnx(trt, model.SerializeToString(), TrtLogger(trt, False).logger)
    assert onnx  # the graph above is valid ONNX; only TensorRT refuses it


def test_export_cli_writes_graph_and_plan(tmp_path, capsys):
    from ccfast.export import main

    _tensorrt_or_skip()
    onnx_path, plan = tmp_path / "step.onnx", tmp_path / "step.plan"
    args = ["--checkpoint", str(checkpoint("tiny")), "--onnx", str(onnx_path), "--trt", str(plan),
            "--trt-opt-level", "0", "--batch-buckets", "1,4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert onnx_path.exists() and plan.exists() and (tmp_path / "step.plan.json").exists()
    assert "labels INT32[-1]" in err and "active_next BOOL[-1]" in err  # the I/O shapes are reported
    assert main(args) == 2  # refuses to overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err
    plan2 = tmp_path / "again.plan"  # a plan from an existing graph, no checkpoint needed
    assert main(["--onnx", str(onnx_path), "--trt", str(plan2), "--trt-opt-level", "0", "--batch-buckets", "2"]) == 0
    assert json.loads((tmp_path / "again.plan.json").read_text())["buckets"] == [2]


def test_check_plan_refuses_what_cannot_run():
    side = {
        "runtime": "tensorrt_rtx",
        "runtime_version": "1.7.1.116",
        "weights_sha256": "abc",
        "compute_capabilities": ["SM86"],
    }
    ok = dict(plan_path="p.plan", runtime="tensorrt_rtx", runtime_version="1.7.1.116", device_cc=(8, 6),
              supported_ccs=[(8, 0), (8, 6), (8, 9)], weights_sha256="abc")
    check_plan(side, **ok)
    for change, message in [({"runtime": "tensorrt"}, "built by tensorrt_rtx"),
                            ({"runtime_version": "1.8.0"}, "plans do not cross versions"),
                            ({"weights_sha256": "def"}, "other weights"),
                            ({"device_cc": (9, 0)}, "does not run on compute capability 9.0"),
                            ({"device_cc": (8, 9)}, "targets SM86")]:
        with pytest.raises(CCFastError, match=message):
            check_plan(side, **{**ok, **change})


def test_trt_engine_explains_why_it_cannot_run_here():
    from ccfast.config import RefineConfig
    from ccfast.refine import Refiner
    from ccfast.refine.trt_engine import TrtEngine

    status = TrtEngine.availability()
    if status == "ok":
        pytest.skip("a supported GPU and TensorRT runtime are present: the runtime test covers this machine")
    assert status  # a reason, not a blank
    with pytest.raises(CCFastError, match="engine 'trt' cannot run here"):
        Refiner(checkpoint("tiny"), engine="trt", config=RefineConfig.from_preset("paper", ell0=1.0), device="cpu")


@pytest.mark.gpu
def test_trt_engine_matches_torch_engine(tmp_path):
    from ccfast.config import RefineConfig
    from ccfast.onnx_export.tensorrt_build import build_plan
    from ccfast.refine import Refiner
    from ccfast.refine.trt_engine import TrtEngine
    from export_cases import ReluMargins, assert_matches, batch
    from test_ort_engine import realness_split

    status = TrtEngine.availability()
    if status != "ok":
        pytest.skip(status)
    plan = tmp_path / "step.plan"
    build_plan(graph("cifar_resnet20"), plan, [4, 8], opt_level=3)
    config = RefineConfig.from_preset("paper", steps=3, tau=realness_split("cifar_resnet20", "eq12"), ell0=1.0)
    x0, _, labels = batch("cifar_resnet20", 6)
    with ReluMargins() as margins:
        want = Refiner(checkpoint("cifar_resnet20"), engine="torch", config=config, device="cpu").refine(x0, labels)
    for cuda_graph in ("1", "0"):
        got = Refiner(checkpoint("cifar_resnet20"), engine="trt", config=config, device="cuda", plan=str(plan),
                      cuda_graph=cuda_graph).refine(x0.cuda(), labels.cuda()).to("cpu")
        assert torch.equal(got.steps, want.steps) and torch.equal(got.stopped, want.stopped)
        assert_matches(got.images, want.images, margins.near_tie())
        assert np.isfinite(got.objective_final.numpy()).all()
