"""benchmarks/bench_bottleneck.py end to end on a CPU (`--smoke`: tiny blocks through Triton's interpreter): every
contender runs, the fused results agree with the recipe's, and the report is written."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton` of the kernels
pytest.importorskip("triton", reason="the Triton kernels need `pip install 'ccfast[triton]'`")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package

from benchmarks import bench_bottleneck  # noqa: E402


def test_smoke_run_writes_every_row_and_the_fused_block_agrees(tmp_path):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("--smoke runs the kernels through the interpreter, which this process imported triton without")
    assert bench_bottleneck.main(["--smoke", "--out", str(tmp_path), "--commit", "test"]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "bench_bottleneck_cpu_test.csv").read_text())))
    methods = ["fused", "fused, m1 in prologue", "cudnn", *bench_bottleneck.RECIPES]  # cudnn: its `_ref` ops on CPU
    assert [(r["block"], r["method"]) for r in rows] == [(s.name, m) for s in bench_bottleneck.SMOKE_SHAPES
                                                        for m in methods]
    for r in rows:
        assert r["notes"] == "" and float(r["us"]) > 0, r
        assert float(r["rel_err_y"]) < 1e-5 and float(r["rel_err_dx"]) < 1e-5, r  # fp32: same function
    md = (tmp_path / "bench_bottleneck_cpu_test.md").read_text()
    assert "- commit: test" in md and "## Sum over ResNet-50's 16 blocks" in md


def test_methods_filter_keeps_the_recipes_and_refuses_unknown_names(tmp_path, capsys):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("--smoke runs the kernels through the interpreter, which this process imported triton without")
    assert bench_bottleneck.main(["--smoke", "--out", str(tmp_path), "--commit", "m", "--methods", "cudnn"]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "bench_bottleneck_cpu_m.csv").read_text())))
    assert {r["method"] for r in rows} == {"cudnn", *bench_bottleneck.RECIPES}
    assert bench_bottleneck.main(["--smoke", "--out", str(tmp_path), "--methods", "cudnn,cutlass"]) == 2
    assert "unknown cutlass" in capsys.readouterr().err


def test_the_shapes_are_resnet50s_sixteen_blocks():
    assert sum(s.count for s in bench_bottleneck.SHAPES) == 16
    assert [s.stride for s in bench_bottleneck.SHAPES].count(2) == 3
    assert bench_bottleneck.main(["--batches", "0"] + ([] if torch.cuda.is_available() else ["--smoke"])) == 2


def test_the_sixteen_block_sum_names_a_method_that_failed_on_a_block_instead_of_summing_the_rest():
    """The H200 run at 1bdda65 lost one autograd-recipe row to a capture error; summing the other blocks made that
    method read 1.08× faster than the recipe."""
    def row(block, count, method, us):
        return {"block": block, "count": count, "batch": 256, "method": method, "us": us}
    rows = [row("a", 1, "fused", 2.0), row("a", 1, "compile+graph recipe", 1.0),
            row("a", 1, "compile+graph autograd", float("nan")),
            row("b", 3, "fused", 4.0), row("b", 3, "compile+graph recipe", 2.0),
            row("b", 3, "compile+graph autograd", 3.0)]
    lines = bench_bottleneck._summary(rows).splitlines()
    assert "| 256 | fused | 14.0 | 0.50× |" in lines  # recipe: 1 + 3·2 = 7 µs; fused 2 + 3·4 = 14
    assert "| 256 | compile+graph autograd | — | — (failed on a) |" in lines
    assert "| 256 | compile+graph recipe | 7.0 | 1.00× |" in lines
