"""The fused 1×1 convolution kernels (`kernels/conv1x1.py`) against the compiled plain-PyTorch recipe, on
ResNet-50's bottleneck 1×1 shapes at 64×64 input (issue 12).

    python benchmarks/bench_conv1x1.py --out benchmarks/results          # GPU: writes bench_conv1x1_<card>.md/.csv
    TRITON_INTERPRET=1 python benchmarks/bench_conv1x1.py --smoke       # CPU: runs every path once, tiny shapes

Shapes (per image, 64×64 input: layer1..4 run at 16², 8², 4², 2²): the conv1 (Cin=4w -> w, bias + ReLU)
and conv3 (w -> 4w, bias + identity + ReLU) of the repeated bottlenecks, w = 64, 128, 256, 512 — the eight
GEMM shapes of issue 12. M = B·H·W rows, bf16, channels_last.

    forward  fused        conv1x1_relu: y and the packed ReLU mask, bias/residual/ReLU in the epilogue
             contenders   torch.compile of F.conv2d (cuDNN) + bias (+ identity) + ReLU  — the recipe
                          torch.compile of the same as a matmul on the channels_last rows
    dgrad    fused        conv1x1_dgrad: (dy ⊙ mask) @ W (+ r ⊙ mask_r for conv1, whose input gradient
                          also receives the identity path's), mask applied while loading dy
             contenders   torch.compile of threshold (dy where y > 0) + aten.convolution_backward (input
                          only: cuDNN dgrad) (+ gated residual), and of the same with a matmul

Each timed call is one CUDA-graph replay of `REPEAT` launches rotating over input sets (so that a large
shape does not run from L2 alone), median over rounds of events. Bytes are the fewest each implementation
must move (inputs read once, outputs written once): the contender reads the saved bf16 output y for its
ReLU gradient where the fused dgrad reads 1 bit per element. GB/s is those bytes over the time.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEAT = 20
ROUNDS = 30


@dataclass(frozen=True)
class Shape:
    name: str
    hw: int      # spatial side at 64×64 input
    cin: int
    cout: int
    role: str    # "conv1": bias + ReLU; "conv3": bias + identity + ReLU


SHAPES = [Shape(f"layer{i + 1}.{role}", 16 >> i, cin, cout, role)
          for i, w in enumerate((64, 128, 256, 512))
          for role, cin, cout in (("conv1", 4 * w, w), ("conv3", w, 4 * w))]
SMOKE_SHAPES = [Shape("smoke.conv1", 3, 64, 32, "conv1"), Shape("smoke.conv3", 3, 32, 64, "conv3")]


def _timed(calls, device, rounds):
    """Median µs of one call: REPEAT calls (cycling over `calls`) in one CUDA graph, events around replays."""
    for fn in calls:
        fn()
        fn()
    if device.type != "cuda":  # smoke mode: one eager pass is the check
        return float("nan")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(REPEAT):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / REPEAT)
    return statistics.median(times)


def _sets(bytes_per_call):
    """Input sets to rotate over: enough that they do not all fit the H200's 60 MB L2 (at most 8)."""
    return max(1, min(8, -(-240_000_000 // max(bytes_per_call, 1))))


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


# The recipes a user writes, each compiled once with dynamic shapes (as the engine compiles one graph for every
# batch bucket): Inductor generates the pointwise kernels; the GEMMs are cuDNN/cuBLAS calls either way.
def conv_recipe(x, w, b, r):
    y = F.conv2d(x, w, b)
    return torch.relu(y + r if r is not None else y)


def mm_recipe(x, w, b, r):
    Bx, C, H, W = x.shape
    rows_ = x.permute(0, 2, 3, 1).reshape(-1, C)
    y = rows_ @ w.flatten(1).t() + b
    if r is not None:
        y = y + r.permute(0, 2, 3, 1).reshape(-1, w.shape[0])
    return torch.relu(y).view(Bx, H, W, -1).permute(0, 3, 1, 2)


def conv_bwd_recipe(dy, y, w, r, yo, x):
    dz = torch.where(y > 0, dy, 0)
    dx = torch.ops.aten.convolution_backward(dz, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                             [True, False, False])[0]
    return dx + torch.where(yo > 0, r, 0) if r is not None else dx


def mm_bwd_recipe(dy, y, w, r, yo, x):
    Bx, C, H, W = dy.shape
    dz = torch.where(y > 0, dy, 0).permute(0, 2, 3, 1).reshape(-1, C)
    dx = dz @ w.flatten(1)
    if r is not None:
        dx = dx + torch.where(yo > 0, r, 0).permute(0, 2, 3, 1).reshape(-1, w.shape[1])
    return dx.view(Bx, H, W, -1).permute(0, 3, 1, 2)


def make_recipes(compile_fn):
    return {"conv_fwd": compile_fn(conv_recipe), "mm_fwd": compile_fn(mm_recipe),
            "conv_bwd": compile_fn(conv_bwd_recipe), "mm_bwd": compile_fn(mm_bwd_recipe)}


def bench_shape(shape, B, device, dtype, recipes, rounds):
    from ccfast.kernels.conv1x1 import (
        _DGRAD_TUNED,
        _FWD_TUNED,
        conv1x1_dgrad,
        conv1x1_relu,
        pack_relu_mask,
    )

    e = torch.tensor([], dtype=dtype).element_size()
    M, K, N, hw = B * shape.hw * shape.hw, shape.cin, shape.cout, shape.hw
    res = shape.role == "conv3"
    def words(c):
        return 4 * -(-c // 32)
    g = torch.Generator(device="cpu").manual_seed(M + K + N)
    w = (torch.randn(N, K, 1, 1, generator=g) / K**0.5).to(device, dtype)
    b = torch.randn(N, generator=g).to(device, dtype)
    rows = []

    # ---- forward: x (B, K, hw, hw), identity (B, N, hw, hw) for conv3 -> y (B, N, hw, hw)
    fwd_bytes = {"base": e * (M * K + N * K + N + M * N + (M * N if res else 0))}
    n_sets = _sets(fwd_bytes["base"])
    xs = [_cl(torch.randn(B, K, hw, hw, generator=g).to(device, dtype)) for _ in range(n_sets)]
    ids = [_cl(torch.randn(B, N, hw, hw, generator=g).to(device, dtype)) if res else None for _ in range(n_sets)]

    conv_c, mm_c = recipes["conv_fwd"], recipes["mm_fwd"]
    impls = {
        "fused conv1x1_relu": ([lambda i=i: conv1x1_relu(xs[i], w, b, ids[i]) for i in range(n_sets)],
                               fwd_bytes["base"] + M * words(N)),
        "compile conv2d+bias+relu": ([lambda i=i: conv_c(xs[i], w, b, ids[i]) for i in range(n_sets)],
                                     fwd_bytes["base"]),
        "compile matmul+bias+relu": ([lambda i=i: mm_c(xs[i], w, b, ids[i]) for i in range(n_sets)],
                                     fwd_bytes["base"]),
    }
    # Correctness on the benchmark's own inputs: the fused y equals the recipe's within bf16 rounding.
    y_f, _ = conv1x1_relu(xs[0], w, b, ids[0])
    y_c = conv_c(xs[0], w, b, ids[0])
    fwd_err = ((y_f.float() - y_c.float()).norm() / y_c.float().norm().clamp_min(1e-12)).item()
    for impl, (calls, nbytes) in impls.items():
        rows.append(_row("forward", shape, B, M, K, N, impl, _timed(calls, device, rounds), nbytes,
                         2 * M * N * K, fwd_err if impl.startswith("fused") else None, _FWD_TUNED))

    # ---- dgrad: dy (B, N, hw, hw) and the ReLU of y -> dx (B, K, hw, hw); conv1 adds the identity path's
    # gradient r (B, K, hw, hw) gated by the block output's ReLU (its mask over K channels).
    gate = shape.role == "conv1"
    base = e * (M * N + N * K + M * K + (M * K if gate else 0))
    n_sets = _sets(base)
    dys = [_cl(torch.randn(B, N, hw, hw, generator=g).to(device, dtype)) for _ in range(n_sets)]
    ys = [_cl(torch.relu(torch.randn(B, N, hw, hw, generator=g)).to(device, dtype)) for _ in range(n_sets)]
    rs = [_cl(torch.randn(B, K, hw, hw, generator=g).to(device, dtype)) if gate else None for _ in range(n_sets)]
    yos_all = [_cl(torch.relu(torch.randn(B, K, hw, hw, generator=g)).to(device, dtype)) for _ in range(n_sets)]
    yos = [yo if gate else None for yo in yos_all]
    def as_rows(t):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    masks = [pack_relu_mask(as_rows(y) > 0) for y in ys]
    in_masks = [pack_relu_mask(as_rows(yo) > 0) for yo in yos_all]  # ReLU of this convolution's input
    rmasks = [m if gate else None for m in in_masks]
    dzs = [
        torch.where(y > 0, dy, 0) for y, dy in zip(ys, dys, strict=False)
    ]  # dy as the epilogue placement receives it

    conv_b, mm_b = recipes["conv_bwd"], recipes["mm_bwd"]
    impls = {
        "fused conv1x1_dgrad": (
            [lambda i=i: conv1x1_dgrad(dys[i], masks[i], w, rs[i], rmasks[i]) for i in range(n_sets)],
            base + M * words(N) + (M * words(K) if gate else 0),
        ),
        "fused conv1x1_dgrad, mask in epilogue": (
            [lambda i=i: conv1x1_dgrad(dzs[i], None, w, rs[i], None, out_mask=in_masks[i]) for i in range(n_sets)],
            base + M * words(K),
        ),
        "compile relu-bwd+conv-dgrad": (
            [lambda i=i: conv_b(dys[i], ys[i], w, rs[i], yos[i], xs[0]) for i in range(n_sets)],
            base + e * M * N + (e * M * K if gate else 0),
        ),
        "compile relu-bwd+matmul": (
            [lambda i=i: mm_b(dys[i], ys[i], w, rs[i], yos[i], xs[0]) for i in range(n_sets)],
            base + e * M * N + (e * M * K if gate else 0),
        ),
    }
    dx_f = conv1x1_dgrad(dys[0], masks[0], w, rs[0], rmasks[0])
    dx_c = conv_b(dys[0], ys[0], w, rs[0], yos[0], xs[0])
    bwd_err = ((dx_f.float() - dx_c.float()).norm() / dx_c.float().norm().clamp_min(1e-12)).item()
    # The epilogue placement computes (dz @ W + r) ⊙ m_in: compare with the recipe's result gated the same way.
    dx_e = conv1x1_dgrad(dzs[0], None, w, rs[0], None, out_mask=in_masks[0])
    dx_plain = conv_b(dys[0], ys[0], w, None, None, xs[0])
    dx_ce = torch.where(yos_all[0] > 0, dx_plain + rs[0] if gate else dx_plain, 0)
    epi_err = ((dx_e.float() - dx_ce.float()).norm() / dx_ce.float().norm().clamp_min(1e-12)).item()
    errs = {"fused conv1x1_dgrad": bwd_err, "fused conv1x1_dgrad, mask in epilogue": epi_err}
    for impl, (calls, nbytes) in impls.items():
        rows.append(_row("dgrad", shape, B, M, K, N, impl, _timed(calls, device, rounds), nbytes,
                         2 * M * N * K, errs.get(impl), _DGRAD_TUNED))
    for op in ("forward", "dgrad"):
        mine = [r for r in rows if r["op"] == op]
        best = min(r["us"] for r in mine if not r["impl"].startswith("fused"))
        for r in mine:
            r["speedup_vs_best_contender"] = round(best / r["us"], 3) if r["us"] == r["us"] else float("nan")
    return rows


def _config_str(cfg):
    k = cfg.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"


def _row(op, shape, B, M, K, N, impl, us, nbytes, flops, err, tuned):
    """One result; for a fused kernel, the tile its autotuner chose for this call (its last launch)."""
    cfg = getattr(tuned, "best_config", None) if impl.startswith("fused") else None
    return {"op": op, "shape": shape.name, "B": B, "M": M, "Cin": K, "Cout": N, "impl": impl,
            "us": round(us, 2), "MB": round(nbytes / 1e6, 3), "GBps": round(nbytes / (us * 1e-6) / 1e9, 1),
            "TFLOPs": round(flops / (us * 1e-6) / 1e12, 1), "rel_err_vs_recipe": "" if err is None else f"{err:.2e}",
            "config": _config_str(cfg) if cfg is not None else "", "speedup_vs_best_contender": ""}


def _copy_bandwidth(device):
    a = torch.empty(2**29, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    us = _timed([lambda: b.copy_(a)], device, 10)
    return 2 * a.numel() / (us * 1e-6) / 1e9


def _write(out: Path, rows, header):
    from ccfast.io_utils import write_text_atomic

    tag = torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / f"bench_conv1x1_{tag}.csv", buf.getvalue())
    lines = [header, "", ("| op | shape | B | M×Cin→Cout | impl | µs | MB | GB/s | TFLOP/s | × best contender | "
                          "tile | rel. err vs recipe |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['B']} | {r['M']}×{r['Cin']}→{r['Cout']} | {r['impl']} | "
                     f"{r['us']} | {r['MB']} | {r['GBps']} | {r['TFLOPs']} | {r['speedup_vs_best_contender']} | "
                     f"{r['config']} | {r['rel_err_vs_recipe']} |")
    lines += ["", "Sum over the eight shapes (µs), fused vs the best contender per shape:", "",
              "| op | B | fused | best contender | ratio |", "|---|---|---|---|---|"]
    for op in ("forward", "dgrad"):
        for B in sorted({r["B"] for r in rows}, reverse=True):
            mine = [r for r in rows if r["op"] == op and r["B"] == B]
            if not mine:
                continue
            fused = sum(r["us"] for r in mine if r["impl"].startswith("fused"))
            best = sum(min(r["us"] for r in mine if r["shape"] == s and not r["impl"].startswith("fused"))
                       for s in {r["shape"] for r in mine})
            lines.append(f"| {op} | {B} | {fused:.1f} | {best:.1f} | {best / fused:.2f}× |")
    write_text_atomic(out / f"bench_conv1x1_{tag}.md", "\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for bench_conv1x1_<card>.md/.csv")
    p.add_argument("--batches", default="256,1")
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1: tiny shapes, eager, untimed")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("bench_conv1x1: needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    dtype = torch.float32 if args.smoke else torch.bfloat16  # the interpreter's CPU path is fp32-only in torch ops
    recipes = make_recipes((lambda f: f) if args.smoke else (lambda f: torch.compile(f, dynamic=True)))
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    import triton

    header = ""
    if device.type == "cuda":
        bw = _copy_bandwidth(device)
        header = (f"# bench_conv1x1: fused 1×1 convolution kernels vs the compiled recipe\n\ncard: "
                  f"**{torch.cuda.get_device_name()}**; torch {torch.__version__}, triton {triton.__version__}, CUDA "
                  f"{torch.version.cuda}; commit {os.environ.get('CCFAST_COMMIT', 'unknown')}; bf16, channels_last; "
                  f"{REPEAT} launches per CUDA-graph replay, median of {args.rounds} replays; device-to-device copy "
                  f"{bw:.0f} GB/s (read + write) measured in this run")
    rows = []
    for B in (int(b) for b in args.batches.split(",")):
        for shape in shapes:
            try:
                new = bench_shape(shape, B, device, dtype, recipes, args.rounds)
            except Exception as exc:  # noqa: BLE001 - keep the other shapes' numbers; say what failed
                import traceback

                traceback.print_exc()
                print(f"FAILED {shape.name} B={B}: {type(exc).__name__}: {exc}", flush=True)
                continue
            rows += new
            for r in new:
                print(f"{r['op']:8} {r['shape']:13} B={B:<4} {r['impl']:30} {r['us']:9.2f} us {r['GBps']:8.1f} GB/s "
                      f"x{r['speedup_vs_best_contender']} {r['config']} {r['rel_err_vs_recipe']}", flush=True)
            if args.out is not None and device.type == "cuda":
                _write(args.out, rows, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
