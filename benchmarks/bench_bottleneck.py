"""The fused bottleneck block (`kernels/bottleneck.py`) against the compiled plain-PyTorch recipe, forward + input
gradient, on ResNet-50's 16 blocks at 64×64 input (issue 12). First H200 run:
benchmarks/results/bench_bottleneck_h200_1bdda65.md.

    python benchmarks/bench_bottleneck.py --out benchmarks/results    # GPU: bench_bottleneck_<card>_<commit>.md/.csv
    python benchmarks/bench_bottleneck.py --smoke --out /tmp/x        # CPU, Triton's interpreter: tiny blocks, fp32

Blocks (64×64 input: layer1..4 run at 16², 8², 4², 2²): layer1.0 (64 -> 256, stride-1 downsample), then
layer{2,3,4}.0 (stride 2, downsample) and the identity blocks; the 8 distinct shapes are timed once each and the
16-block total weights each by how often ResNet-50 repeats it. bf16, channels_last, BN folded, weights cast once.

    fused                  bottleneck_fwd + bottleneck_dgrad (mask1="gate": relu_mask_gate after the 3×3 dgrad)
    fused, m1 in prologue  the same with m1 applied by conv1's dgrad while loading (mask1="prologue")
    cudnn                  every convolution one cuDNN graph with its epilogue (kernels/cudnn_conv.py through
                           ccfast.conv_epilogue.activation_saving_ops: bias, residual, ReLU; dgrad + residual +
                           ReLU gate), ReLU outputs saved; needs nvidia-cudnn-frontend (a row saying why without
                           it). --smoke runs the same composition with the `_ref` ops
    compile+graph recipe   torch.compile of y, vjp = torch.func.vjp(block, x); dx = vjp(g) — the plain block
                           (`ccfast.bottleneck.bottleneck_torch`), Inductor's pointwise kernels, cuDNN convolutions
    compile+graph autograd the compiled block's forward, then torch.autograd.grad(y, x, g) (AOTAutograd's
                           backward graph: what the triton engine runs today)

Both compute one block's share of a chain's forward + input gradient: the recipe's autograd applies the block's
output ReLU gradient to g itself; the fused dgrad receives dz = g ⊙ m3 from its consumer and applies the input's
ReLU (in_mask) instead — one ReLU gradient per block either way. Each timed call is one CUDA-graph replay
(`benchmarks/harness.py`: capture, event clock) of REPEAT calls rotating over input sets, so that a large
shape does not run from L2 alone; µs are per call, the median of the replays. x_vs_recipe is a row's rate over
the faster of the two recipes on the same block and batch. Correctness on the benchmark's own inputs: relative L2
error of y and dx (gated alike) against the recipe's.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Report, capture, parse_int_list, run_metadata, time_calls  # noqa: E402

REPEAT = 10
BASELINE = "compile+graph recipe"
RECIPES = (BASELINE, "compile+graph autograd")


@dataclass(frozen=True)
class Block:
    name: str
    count: int  # how many of ResNet-50's 16 blocks have this shape
    hw: int     # input side at 64×64 image size
    cin: int
    planes: int
    stride: int


SHAPES = [Block("layer1.0", 1, 16, 64, 64, 1), Block("layer1.1-2", 2, 16, 256, 64, 1),
          Block("layer2.0", 1, 16, 256, 128, 2), Block("layer2.1-3", 3, 8, 512, 128, 1),
          Block("layer3.0", 1, 8, 512, 256, 2), Block("layer3.1-5", 5, 4, 1024, 256, 1),
          Block("layer4.0", 1, 4, 1024, 512, 2), Block("layer4.1-2", 2, 2, 2048, 512, 1)]
SMOKE_SHAPES = [Block("smoke.down", 1, 5, 40, 24, 2), Block("smoke.identity", 1, 3, 96, 24, 1)]
FIELDS = ["block", "count", "batch", "Cin", "width", "Cout", "stride", "hw", "method", "us", "calls_per_s",
          "x_vs_recipe", "rel_err_y", "rel_err_dx", "notes"]


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _weights(shape: Block, seed: int):
    """Random folded weights of the block's shape (He-scaled so activations neither vanish nor blow up)."""
    from ccfast.bottleneck import BottleneckWeights

    g = torch.Generator().manual_seed(seed)
    w, cout = shape.planes, 4 * shape.planes

    def conv(co, ci, k=1):
        return torch.randn(co, ci, k, k, generator=g) * (2 / (ci * k * k)) ** 0.5

    def bias(c):
        return 0.1 * torch.randn(c, generator=g)

    down = shape.stride != 1 or shape.cin != cout
    return BottleneckWeights(conv(w, shape.cin), bias(w), conv(w, w, 3), bias(w), 0.5 * conv(cout, w), bias(cout),
                             shape.stride, conv(cout, shape.cin) if down else None, bias(cout) if down else None)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


# --methods keys -> rows; both recipes always run: each ratio is over the faster of them (at 1bdda65 the
# autograd recipe was the faster on one block of eight)
OPTIONAL = {"fused": "fused", "prologue": "fused, m1 in prologue", "cudnn": "cudnn"}
METHODS = (*OPTIONAL.values(), *RECIPES)


def bench_block(shape: Block, B: int, device, dtype, compile_fn, reps: int, repeat: int, report: Report,
                methods: tuple[str, ...] = METHODS):
    from ccfast.bottleneck import BottleneckWeights, bottleneck_torch
    from ccfast.conv1x1 import as_rows, pack_relu_mask, unpack_relu_mask
    from ccfast.kernels.bottleneck import bottleneck_dgrad, bottleneck_fwd

    p = _weights(shape, seed=shape.cin + shape.planes)
    q = p.cast(dtype, device)
    # The recipe's weights and biases all in the storage dtype (as the engine's cast_weights leaves them).
    qr = BottleneckWeights(q.w1, q.b1.to(dtype), q.w2, q.b2.to(dtype), q.w3, q.b3.to(dtype), q.stride, q.wd,
                           None if q.bd is None else q.bd.to(dtype))
    cout, ho = 4 * shape.planes, (shape.hw - 1) // shape.stride + 1
    e = torch.tensor([], dtype=dtype).element_size()
    n_sets = max(1, min(4, -(-240_000_000 // (e * B * (shape.cin * shape.hw**2 + 2 * cout * ho**2)))))
    g = torch.Generator().manual_seed(B)
    us_ = [torch.randn(B, shape.cin, shape.hw, shape.hw, generator=g) for _ in range(n_sets)]
    xs = [_cl(torch.relu(u).to(device, dtype)) for u in us_]
    in_masks = [pack_relu_mask(as_rows(u) > 0).to(device) for u in us_]
    gs = [_cl(torch.randn(B, cout, ho, ho, generator=g).to(device, dtype)) for _ in range(n_sets)]
    # dz as the consumer hands it to the fused dgrad: g gated by the block's output mask (fixed per set).
    dzs = [_cl(torch.where(bottleneck_torch(x, qr) > 0, gi, 0)) for x, gi in zip(xs, gs, strict=True)]

    def fused(i, mask1):
        y, saved = bottleneck_fwd(xs[i], q)
        return y, bottleneck_dgrad(dzs[i], saved, q, in_masks[i], mask1=mask1)

    def recipe(x, gi):
        y, vjp = torch.func.vjp(lambda t: bottleneck_torch(t, qr), x)
        return y, vjp(gi)[0]

    recipe_c = compile_fn(recipe)
    fwd_c = compile_fn(lambda t: bottleneck_torch(t, qr))
    xs_req = [x.detach().requires_grad_() for x in xs]

    def autograd_recipe(i):
        y = fwd_c(xs_req[i])
        return y, torch.autograd.grad(y, xs_req[i], gs[i])[0]

    act_ops = _activation_ops(device)

    def cudnn_block(i):  # x = relu(u) is its own gate: x > 0 ⇔ u > 0, the in_mask of the fused path
        y, saved = act_ops.block_fwd(xs[i], q)
        return y, act_ops.block_dgrad(dzs[i], saved, q, xs[i])

    impls = {"fused": lambda i: fused(i, "gate"), "fused, m1 in prologue": lambda i: fused(i, "prologue"),
             "cudnn": cudnn_block, BASELINE: lambda i: recipe_c(xs[i], gs[i]), RECIPES[1]: autograd_recipe}
    y_r, dx_r = impls[BASELINE](0)
    keep_in = unpack_relu_mask(in_masks[0], shape.cin).view(B, shape.hw, shape.hw, -1).permute(0, 3, 1, 2)
    dx_r = torch.where(keep_in, dx_r, 0)
    for method, call in impls.items():
        if method not in methods:
            continue
        notes, us, err_y, err_dx = "", float("nan"), "", ""
        try:
            y, dx = call(0)
            err_y, err_dx = f"{_rel(y, y_r):.2e}", f"{_rel(torch.where(keep_in, dx, 0), dx_r):.2e}"

            def many(call=call):
                for k in range(repeat):
                    call(k % n_sets)

            replay = capture(many, device)
            warmup = 2 if device.type == "cuda" else 0  # the interpreter is slow; CPU numbers mean nothing
            us = time_calls(replay, device, warmup=warmup, reps=reps, clock="event").median_s * 1e6 / repeat
            if method == "cudnn" and device.type == "cuda":  # which rung of cudnn_conv's ladder each graph took
                from ccfast.kernels.cudnn_conv import fusion_summary

                notes = "graphs built so far: " + fusion_summary()
        except Exception as exc:  # noqa: BLE001 - keep the other rows; the row says what failed
            notes = f"FAILED: {type(exc).__name__}: {exc}"[:300]
            print(f"{shape.name} B={B} {method}: {notes}", file=sys.stderr, flush=True)
        report.add(block=shape.name, count=shape.count, batch=B, Cin=shape.cin, width=shape.planes, Cout=cout,
                   stride=shape.stride, hw=shape.hw, method=method, us=round(us, 2),
                   calls_per_s=round(1e6 / us, 1) if us == us else "", rel_err_y=err_y, rel_err_dx=err_dx,
                   notes=notes)


def _activation_ops(device):
    """The cuDNN blocks on a GPU (an op that cannot run raises, and its row says why), the `_ref` ops on CPU."""
    if device.type != "cuda":
        from ccfast.conv_epilogue import activation_saving_ops

        return activation_saving_ops()
    from ccfast.refine.cudnn_net import CUDNN_OPS  # the engine's fused_ops=cudnn blocks themselves

    return CUDNN_OPS


def _timed(row) -> bool:
    """A row that has a time: a failed contender's row has NaN µs."""
    return isinstance(row["us"], float) and row["us"] == row["us"]


def _summary(rows) -> str:
    """µs over ResNet-50's 16 blocks (each distinct shape × its count), per batch and method, and against the
    best recipe of each shape."""
    lines = ["| batch | method | µs, 16 blocks | × best recipe per block |", "|---|---|---|---|"]
    for B in sorted({r["batch"] for r in rows}, reverse=True):
        batch = [r for r in rows if r["batch"] == B]
        mine = [r for r in batch if _timed(r)]
        totals, failed = {}, {}
        for m in dict.fromkeys(r["method"] for r in batch):
            failed[m] = [r["block"] for r in batch if r["method"] == m and not _timed(r)]
            totals[m] = sum(r["us"] * r["count"] for r in mine if r["method"] == m)
        best = {r["block"]: min(o["us"] for o in mine if o["block"] == r["block"] and o["method"] in RECIPES)
                for r in mine if r["method"] in RECIPES}
        base = sum(us * next(r["count"] for r in mine if r["block"] == b) for b, us in best.items())
        for m, t in totals.items():
            if failed[m]:  # a sum without those blocks would read as a faster method
                lines.append(f"| {B} | {m} | — | — (failed on {', '.join(failed[m])}) |")
            else:
                lines.append(f"| {B} | {m} | {t:.1f} | {base / t:.2f}× |" if base else f"| {B} | {m} | {t:.1f} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--batches", default="256,1")
    p.add_argument("--reps", type=int, default=20, help="timed graph replays per row (median)")
    p.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter: tiny blocks, fp32, eager recipe")
    p.add_argument("--methods", default=",".join(OPTIONAL),
                   help=f"comma list of {', '.join(OPTIONAL)} (default all; both recipes always run: each ratio "
                        "is over the faster)")
    p.add_argument("--commit", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton
    elif not torch.cuda.is_available():
        print("bench_bottleneck: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    try:
        batches = parse_int_list(args.batches, "--batches")
        keys = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in keys if m not in OPTIONAL]
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(OPTIONAL)}")
        methods = tuple(OPTIONAL[k] for k in keys)
    except Exception as exc:  # noqa: BLE001 - a one-line error, not a traceback
        print(f"bench_bottleneck: {exc}", file=sys.stderr)
        return 2
    methods = tuple(dict.fromkeys(methods + RECIPES))
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    compile_fn = (lambda f: f) if args.smoke else (lambda f: torch.compile(f, dynamic=False))
    meta = run_metadata(device, args.commit)
    tag = torch.cuda.get_device_name().split()[-1].lower() if device.type == "cuda" else "cpu"
    report = Report(args.out, f"bench_bottleneck_{tag}_{meta['commit']}", FIELDS, meta,
                    notes=__doc__.split("\n\n", 1)[1].strip(), ratios={"x_vs_recipe": RECIPES}, rate="calls_per_s",
                    group=("block", "batch"), short=["block", "batch", "method", "us", "x_vs_recipe", "rel_err_dx"])
    for B in batches if not args.smoke else [1]:
        for shape in SMOKE_SHAPES if args.smoke else SHAPES:
            bench_block(shape, B, device, dtype, compile_fn, 1 if args.smoke else args.reps,
                        1 if args.smoke else REPEAT, report, methods)
            torch._dynamo.reset()  # one compile per shape; drop the last one's graphs and caches
    report.extra["Sum over ResNet-50's 16 blocks"] = _summary(report.rows)
    report.write()
    print(report.short_table())
    print(_summary(report.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
