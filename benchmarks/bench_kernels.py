"""Each fused kernel against its `_ref` twin, in GB/s of the bytes the step must move (pytest-benchmark).

    python -m pytest benchmarks/bench_kernels.py --benchmark-columns=median,ops -q
    CCFAST_BENCH_OUT=benchmarks/results python -m pytest benchmarks/bench_kernels.py   # also writes CSV + md

Bytes counted are the fewest a step must move (each input read once, each output written once), the same
for kernel and reference, so GB/s compares them on one scale and against the card's copy bandwidth:
    objective_head  B×C logits in + B×C dJ/dlogits out (+ 17 bytes per row of labels, mask, J, ℓ_fake)
    pgd_step        x, g, x0 in + x' out: 4 × B×C×H×W elements (every image active)
Each timed call replays one CUDA graph of `REPEAT` launches and synchronises: the GPU time per launch, as
inside the engine's graphs (timed eagerly instead, each call costs ~60-70 µs of Python and launch overhead
whatever the size). GPU only: the interpreter's timings mean nothing.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("kernel benchmarks need a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton")
pytest.importorskip("pytest_benchmark")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccfast.io_utils import write_text_atomic
from ccfast.kernels.objective_head import objective_head, objective_head_ref
from ccfast.kernels.pgd_step import pgd_step, pgd_step_ref
from ccfast.objectives import HeadParams

REPEAT = 20
RESULTS: list[dict] = []
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _record(benchmark, kernel, impl, case, nbytes, captured):
    impl = impl if captured else f"{impl} (eager: not capturable)"
    median = benchmark.stats.stats.median / REPEAT
    gbps = nbytes / median / 1e9
    benchmark.extra_info.update(GBps=round(gbps, 1), us_per_call=round(median * 1e6, 2))
    RESULTS.append(
        {
            "kernel": kernel,
            "impl": impl,
            "case": case,
            "bytes": nbytes,
            "us_per_call": round(median * 1e6, 2),
            "GBps": round(gbps, 1),
        }
    )


def _timed(fn):
    """REPEAT calls captured in one CUDA graph, as the engine runs them (the GPU's time, not Python's);
    falls back to eager calls for code that cannot be captured."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(REPEAT):
                fn()
    except RuntimeError:
        graph = None

    def run():
        if graph is not None:
            graph.replay()
        else:
            for _ in range(REPEAT):
                fn()
        torch.cuda.synchronize()
    return run, graph is not None


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    out = os.environ.get("CCFAST_BENCH_OUT")
    if not out or not RESULTS:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RESULTS[0]))
    w.writeheader()
    w.writerows(RESULTS)
    write_text_atomic(Path(out) / "bench_kernels.csv", buf.getvalue())
    import triton

    lines = [(f"# bench_kernels\n\ncard: **{torch.cuda.get_device_name()}**; torch {torch.__version__}, triton "
              f"{triton.__version__}, CUDA {torch.version.cuda}; commit {os.environ.get('CCFAST_COMMIT', 'unknown')}; "
              f"{REPEAT} launches per CUDA-graph replay, median of pytest-benchmark rounds\n"),
             "| kernel | impl | case | MB moved | µs per call | GB/s |", "|---|---|---|---|---|---|"]
    for r in RESULTS:
        lines.append(
            f"| {r['kernel']} | {r['impl']} | {r['case']} | {r['bytes'] / 1e6:.2f} | {r['us_per_call']} | {r['GBps']} |"
        )
    write_text_atomic(Path(out) / "bench_kernels.md", "\n".join(lines) + "\n")


HEAD_CASES = [(256, 1000, "fp32"), (256, 1000, "bf16"), (4096, 1000, "bf16"), (1, 1000, "fp32")]


@pytest.mark.parametrize("impl", ["kernel", "ref"])
@pytest.mark.parametrize("B,C,dtype", HEAD_CASES, ids=[f"B{b}-C{c}-{d}" for b, c, d in HEAD_CASES])
def test_objective_head(benchmark, impl, B, C, dtype):
    logits = (torch.randn(B, C, device="cuda") * 4).to(DTYPES[dtype])
    labels = torch.randint(0, C, (B,), device="cuda")
    active = torch.ones(B, dtype=torch.bool, device="cuda")
    params = HeadParams(ell0=2.0)
    fn = (lambda: objective_head(logits, labels, active, params, 3.0)) if impl == "kernel" else \
        (lambda: objective_head_ref(logits, labels, active, params, 3.0))
    run, captured = _timed(fn)
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(
        benchmark, "objective_head", impl, f"B={B} C={C} {dtype}", 2 * B * C * logits.element_size() + 17 * B, captured
    )


PGD_CASES = [(256, 64, "fp32", False), (256, 64, "fp32", True), (256, 64, "bf16", True), (1, 64, "fp32", True),
             (2048, 64, "fp32", True)]


@pytest.mark.parametrize("impl", ["kernel", "ref"])
@pytest.mark.parametrize("B,hw,dtype,channels_last", PGD_CASES,
                         ids=[f"B{b}-{h}x{h}-{d}-{'nhwc' if cl else 'nchw'}" for b, h, d, cl in PGD_CASES])
def test_pgd_step(benchmark, impl, B, hw, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    def make():
        return torch.rand(B, 3, hw, hw, device="cuda").to(DTYPES[dtype]).contiguous(memory_format=fmt)
    x, g, x0 = make(), make(), make()
    active = torch.ones(B, dtype=torch.bool, device="cuda")
    fn = (lambda: pgd_step(x, g, x0, active, 0.1, 1.5)) if impl == "kernel" else \
        (lambda: pgd_step_ref(x, g, x0, active, 0.1, 1.5))
    run, captured = _timed(fn)
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(
        benchmark,
        "pgd_step",
        impl,
        f"B={B} {hw}x{hw} {dtype} {'channels_last' if channels_last else 'contiguous'}",
        4 * x.numel() * x.element_size(),
        captured,
    )
