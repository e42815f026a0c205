"""Refinement-step throughput, side by side in one run on one GPU (issue 5).

    python benchmarks/bench_refine.py --out benchmarks/results/ [--batches 256,1,16] [--steps 10]

Section 1 — ResNet-50 at 64×64 (random weights, BatchNorm statistics calibrated on the inputs; timing does
not depend on the weights), paper objective (Eq. 12), α=0.1, ε=1.5, early stopping off, for each batch B:
    torchattacks PGDL2      fp32 eager, the attack users pick today (CE loss; same network work per step)
    reference engine        `--engine torch`: fp32 eager, T+1 forwards for T steps
    eager + CUDA graph      one eager step of the model cast to bf16, captured in a CUDA graph
    compile + CUDA graph    torch.func.grad + torch.compile (Inductor, default mode, static shapes) of the
                            model cast to bf16, one step captured in a CUDA graph: the best plain-PyTorch
                            recipe of issue 5
    triton engine           `--engine triton` defaults (bf16 autocast with bf16 weights, compiled,
                            channels_last, BN folded, first conv padded to 8 channels, fused kernels,
                            T steps per graph); ms/step = refine_batch wall time / T (it includes
                            the final forward and the host work), and separately the graph replay per step
Reported: ms per step, image-steps/s, ratios against torchattacks and against compile + CUDA graph, set-up
cost (compile, capture) apart, and a kernel-level profile of one engine step (where the time goes).

Section 2 — early stopping on real images: CIFAR-10 test images (32×32) and the pretrained CIFAR ResNet-56
of shared/data, `paper` preset (T=25, τ = ℓ0 = mean ℓ_fake over other real test images). What counts is
useful image-steps/s: steps actually taken by still-active images, per second of wall time.
Reference engine vs triton engine without compaction vs with compaction.

Writes OUT/bench_refine.csv and OUT/bench_refine.md as rows complete (atomic writes), so a run cut short
keeps what it measured. `--budget-s` skips what would start after that many seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccfast.config import RefineConfig
from ccfast.io_utils import write_text_atomic
from ccfast.models import build_model, load_backbone_weights
from ccfast.objectives import HeadParams, objective_ref
from ccfast.pgd import pgd_step_ref
from ccfast.refine.base import ResolvedScalars

FIELDS = ["section", "method", "batch", "dtype", "ms_per_step", "image_steps_per_s", "x_vs_torchattacks",
          "x_vs_compile_graph", "setup_s", "notes"]


class Report:
    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows, self.extra = out, meta, [], {}

    def add(self, **row):
        row = {k: row.get(k, "") for k in FIELDS}
        self.rows.append(row)
        print(" | ".join(f"{row[k]}" for k in FIELDS[:8]), row["notes"], flush=True)
        self.write()

    def ratios(self):
        base = {}
        for r in self.rows:
            if r["section"] == "resnet50" and isinstance(r["image_steps_per_s"], float):
                base.setdefault((r["method"], r["batch"]), r["image_steps_per_s"])
        for r in self.rows:
            if r["section"] != "resnet50" or not isinstance(r["image_steps_per_s"], float):
                continue
            ta, cg = base.get(("torchattacks PGDL2", r["batch"])), base.get(("compile + CUDA graph", r["batch"]))
            r["x_vs_torchattacks"] = round(r["image_steps_per_s"] / ta, 2) if ta else ""
            r["x_vs_compile_graph"] = round(r["image_steps_per_s"] / cg, 2) if cg else ""

    def write(self):
        self.ratios()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.out / "bench_refine.csv", buf.getvalue())
        write_text_atomic(self.out / "bench_refine.md", self.markdown())

    def markdown(self) -> str:
        m = self.meta
        lines = ["# bench_refine", "", f"card: **{m['card']}**; {m['versions']}; commit {m['commit']}; {m['date']}", "",
                 m["setup"], "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(r[k]) for k in FIELDS) + " |")
        for title, text in self.extra.items():
            lines += ["", f"## {title}", "", text]
        return "\n".join(lines) + "\n"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, reps=5, warmup=1) -> float:
    """Median wall seconds of fn() (synchronised), after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def capture(fn, device):
    """Warm fn up on a side stream and capture it in a CUDA graph; returns a replay callable (or fn on CPU)."""
    if device.type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    sync(device)
    return graph.replay


def graph_time_per_call(replay, device, calls=20, reps=5) -> float:
    return median_time(lambda: [replay() for _ in range(calls)], device, reps=reps) / calls


# ---------------------------------------------------------------- the contenders (one batch each)


def make_inputs(B, size, num_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images (low-frequency noise, upsampled): closer to photographs than white noise.
    low = torch.rand(B, 3, max(2, size // 8), max(2, size // 8), generator=g)
    x0 = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x0 = (x0 + 0.05 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    labels = torch.randint(0, num_classes, (B,), generator=g)
    return x0.to(device), labels.to(device)


def bench_torchattacks(model, x0, labels, steps, device):
    import torchattacks

    atk = torchattacks.PGDL2(model, eps=1.5, alpha=0.1, steps=steps, random_start=False)
    return median_time(lambda: atk(x0, labels), device, reps=3) / steps, f"torchattacks {torchattacks.__version__}"


def bench_reference(model, x0, labels, steps, device, head):
    from ccfast.refine.torch_engine import TorchEngine

    cfg = RefineConfig(steps=steps, alpha=0.1, eps=1.5, early_stop="none")
    eng = TorchEngine(model, cfg, ResolvedScalars(tau=None, head=head), device)
    idx = torch.arange(len(x0))
    return median_time(lambda: eng.refine_batch(x0, labels, idx), device, reps=3) / steps, "fp32 eager, T+1 forwards"


def bench_eager_graph(model, x0, labels, device, head, dtype):
    """The recipe's network is the model cast to bf16 (weights and input), as a plain PyTorch user would."""
    x = x0.clone()
    active = torch.ones(len(x0), dtype=torch.bool, device=device)

    def step():
        xr = x.detach().requires_grad_(True)
        logits = model(xr.to(dtype))
        J, _ = objective_ref(logits.float(), labels, head)
        (g,) = torch.autograd.grad(J.sum(), xr)
        x.copy_(pgd_step_ref(x, g, x0, active, 0.1, 1.5))

    replay = capture(step, device)
    return graph_time_per_call(replay, device), "one eager step per graph replay"


def bench_compile_graph(model, x0, labels, device, head, dtype):
    x = x0.clone()
    active = torch.ones(len(x0), dtype=torch.bool, device=device)

    def loss(xi):
        return objective_ref(model(xi.to(dtype)).float(), labels, head)[0].sum()

    def step(xi):
        g = torch.func.grad(loss)(xi)
        return pgd_step_ref(xi, g, x0, active, 0.1, 1.5)

    compiled = torch.compile(step, dynamic=False)
    t0 = time.perf_counter()
    x.copy_(compiled(x))
    sync(device)
    compile_s = time.perf_counter() - t0
    replay = capture(lambda: x.copy_(compiled(x)), device)
    return graph_time_per_call(replay, device), compile_s


def make_triton(model, steps, device, head, **opts):
    """One engine serves every batch size (one compile; each new size only captures its graphs)."""
    from ccfast.refine.triton_engine import TritonEngine

    cfg = RefineConfig(steps=steps, alpha=0.1, eps=1.5, early_stop="none")
    return TritonEngine(model, cfg, ResolvedScalars(tau=None, head=head), device, **opts)


def make_ort(model, args, device, head):
    """`--engine ort` on the same network: export its fp32 step graph once, one bucket per batch size."""
    import copy
    import tempfile

    from ccfast.onnx_export.build import export_step_graph
    from ccfast.refine.ort_engine import OrtEngine

    path = Path(tempfile.mkdtemp(prefix="ccfast-bench-")) / "step-fp32.onnx"
    export_step_graph(copy.deepcopy(model).cpu(), (args.size, args.size), path, "fp32")
    cfg = RefineConfig(steps=args.steps, alpha=0.1, eps=1.5, early_stop="none")
    extra = {"buckets": args.batches} if device.type == "cuda" else {}
    return OrtEngine(model, cfg, ResolvedScalars(tau=None, head=head), device, onnx=str(path), **extra)


def bench_triton(eng, x0, labels, steps, device):
    idx = torch.arange(len(x0))
    t0 = time.perf_counter()
    eng.refine_batch(x0, labels, idx)  # first call at this size: compile (first size only), warm-up, capture
    sync(device)
    setup_s = time.perf_counter() - t0
    per_step = median_time(lambda: eng.refine_batch(x0, labels, idx), device, reps=5) / steps
    bucket = eng._buckets[eng._bucket_size(len(x0), initial=True)]
    replay_step = None
    if eng.opts.graphs:
        graph = bucket.graphs[(eng._K, True)]
        replay_step = graph_time_per_call(graph.replay, device, calls=3) / eng._K
    return per_step, replay_step, setup_s, bucket


def profile_engine_step(eng, bucket, device, steps=3) -> str:
    """Kernel-level breakdown of one engine step, run eagerly (outside the graph) so the profiler sees
    every kernel: count, GPU busy time, and the top kernels by time."""
    if device.type != "cuda":
        return "(no GPU)"
    from torch.profiler import ProfilerActivity, profile

    with eng._precision():
        for _ in range(2):
            eng._body(bucket, True)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                eng._body(bucket, True)
            sync(device)
            wall = (time.perf_counter() - t0) / steps
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / steps / 1e3  # ms
    by_name: dict[str, list] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:12]
    lines = [(f"batch {bucket.size}: {len(kernels) / steps:.0f} kernels per step, GPU busy {busy:.3f} ms per step, "
              f"eager wall {wall * 1e3:.3f} ms per step (the CUDA graph removes the launch gaps)"), "",
             "| kernel | calls/step | ms/step | share |", "|---|---|---|---|"]
    for name, ts in top:
        lines.append(f"| `{name[:90]}` | {len(ts) / steps:.0f} | {sum(ts) / steps / 1e3:.3f} | {sum(ts) / steps / 1e3 / busy:.0%} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- section 2: early stopping on real images


def load_cifar(data_dir: Path, n: int, device):
    path = data_dir / "cifar10_test.npz"
    if not path.exists():
        path = data_dir / "cifar10" / "test.npz"
    d = np.load(path)
    images = torch.from_numpy(d["images"][:n]).permute(0, 3, 1, 2).float().div(255.0)
    return images.to(device), torch.from_numpy(d["labels"][:n]).long().to(device)


def early_stop_section(report: Report, args, device, budget_ok):
    """Useful image-steps/s with early stopping. Two image sets: the real test images as they are (about half
    already at least as real as τ = ℓ0, their mean), and the same images with Gaussian noise (σ=0.1), a
    stand-in for generated samples that start below τ and stop at different steps."""
    data_dir = Path(args.data)
    weights = data_dir / "resnet56-4bfd9763.th"
    if not weights.exists():
        weights = data_dir / "models" / "resnet56-4bfd9763.th"
    model = build_model("cifar_resnet56", 10)
    load_backbone_weights(model.backbone, weights, arch="cifar_resnet56")
    model = model.to(device).eval().requires_grad_(False)
    n_ell0, n = 1024, args.es_images
    images, labels = load_cifar(data_dir, n_ell0 + n, device)
    from ccfast.checkpoint import estimate_ell0

    ell0 = estimate_ell0(model, images[:n_ell0], labels[:n_ell0])
    x_all, y_all = images[n_ell0:], labels[n_ell0:]
    noise = torch.randn(x_all.shape, generator=torch.Generator().manual_seed(0)).to(device)
    image_sets = {"real": x_all, "real + noise σ=0.1": (x_all + 0.1 * noise).clamp(0, 1)}
    cfg = RefineConfig.from_preset("paper")
    scalars = ResolvedScalars(tau=ell0, head=HeadParams(ell0=ell0))
    B = 256
    from ccfast.refine.torch_engine import TorchEngine
    from ccfast.refine.triton_engine import TritonEngine

    es_opts = {"compile": args.es_compile} | args.topts
    tag = f"bf16, compile={es_opts.get('compile')}"
    contenders = [
        ("reference engine", "fp32", lambda: TorchEngine(model, cfg, scalars, device)),
        ("triton, no compaction", tag, lambda: TritonEngine(model, cfg, scalars, device, compact_every=cfg.steps, **es_opts)),
        ("triton, compaction every 5", tag, lambda: TritonEngine(model, cfg, scalars, device, compact_every=5, **es_opts)),
        ("triton, compaction every 2", tag, lambda: TritonEngine(model, cfg, scalars, device, compact_every=2, **es_opts)),
    ]
    for name, dtype, make in contenders:
        if not budget_ok(f"early stop: {name}"):
            continue
        try:
            t0 = time.perf_counter()
            eng = make()
            for x_set in image_sets.values():  # warm-up pass: compile and capture every bucket the timed pass uses
                for i in range(0, n, B):
                    eng.refine_batch(x_set[i:i + B], y_all[i:i + B], torch.arange(i, i + B))
            sync(device)
            setup_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - one broken contender must not lose the others' numbers
            traceback.print_exc()
            report.add(section="early-stop", method=name, batch=B, dtype=dtype, notes=f"FAILED: {type(exc).__name__}: {exc}"[:300])
            continue
        for set_name, x_set in image_sets.items():
            t0 = time.perf_counter()
            steps_taken, stopped0 = 0, 0
            for i in range(0, n, B):
                res = eng.refine_batch(x_set[i:i + B], y_all[i:i + B], torch.arange(i, i + B))
                steps_taken += int(res.steps.sum())
                stopped0 += int((res.steps == 0).sum())
            sync(device)
            wall = time.perf_counter() - t0
            report.add(section=f"early-stop ({set_name})", method=name, batch=B, dtype=dtype,
                       ms_per_step=round(wall * 1e3 / cfg.steps, 3), image_steps_per_s=round(steps_taken / wall, 1),
                       setup_s=round(setup_s, 2),
                       notes=f"{n} CIFAR-10 test images, pretrained ResNet-56, paper preset (T={cfg.steps}); useful "
                             f"image-steps {steps_taken} of {n * cfg.steps}; {stopped0} stopped before step 1; "
                             f"τ=ℓ0={ell0:.3f}; wall {wall:.3f}s (ms_per_step = wall / T)")


# ---------------------------------------------------------------- main


def calibrate_bn(model, x):
    """Running BatchNorm statistics from the inputs, so activations of the random network stay O(1)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def meta_info(device, args) -> dict:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "absent"
    try:
        import torchattacks

        ta = torchattacks.__version__
    except ImportError:
        ta = "absent"
    versions = (f"torch {torch.__version__}, triton {tv}, CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version() if device.type == 'cuda' else '-'}, torchattacks {ta}, Python {platform.python_version()}")
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"],
                                check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        versions += f", driver/clock/memory {driver}"
    except (OSError, subprocess.SubprocessError):  # no nvidia-smi: the versions line just says less
        versions += ", driver unknown"
    return {"card": card, "versions": versions, "commit": args.commit, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "setup": (f"ResNet-50 at {args.size}×{args.size}, {args.steps} steps per timed call, paper objective (Eq. 12), α=0.1, ε=1.5, "
                       "early stopping off in section 1. image-steps/s = batch / (s per step). The recipes' bf16 = model.to(bf16); the engine's = autocast over bf16 weights; "
                       "torchattacks runs fp32 with PyTorch's default flags (cuDNN TF32 on); the reference engine is strict fp32 (TF32 off).")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for bench_refine.csv/.md")
    p.add_argument("--batches", default="256,1,16", help="batch sizes, in the order to run them")
    p.add_argument("--steps", type=int, default=10, help="steps per timed call")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--methods", default="torchattacks,reference,eager-graph,compile-graph,triton,triton-eager,ort",
                   help="which contenders to run (comma list)")
    p.add_argument("--early-stop", type=int, default=1, help="run section 2 (needs --data)")
    p.add_argument("--es-images", type=int, default=1024)
    p.add_argument("--es-compile", default="1", help="compile option of the triton engine in section 2")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with cifar10_test.npz (or cifar10/test.npz) and resnet56-4bfd9763.th (or models/...)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--extras", default="", help="engine variants run last, 'B:KEY=V,KEY=V;B:...' (e.g. 256:pad_channels=0,cast_weights=0)")
    p.add_argument("--triton-options", default="", help="extra triton engine options, KEY=VALUE comma list (e.g. for a CPU smoke run: graphs=0,compile=0,dtype=fp32)")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip contenders that would start after this many seconds")
    p.add_argument("--commit", default=os.environ.get("CCFAST_COMMIT", "unknown"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    start = time.perf_counter()

    def budget_ok(what):
        if time.perf_counter() - start > args.budget_s:
            print(f"skipped (time budget): {what}", flush=True)
            return False
        return True

    args.topts = dict(kv.split("=", 1) for kv in args.triton_options.split(",") if kv)
    report = Report(Path(args.out), meta_info(device, args))
    methods = set(args.methods.split(","))
    head = HeadParams(ell0=2.0)
    dtype = torch.bfloat16
    model = build_model(args.arch, args.num_classes).to(device)
    calib_x, _ = make_inputs(64, args.size, args.num_classes, device, seed=123)
    model = calibrate_bn(model, calib_x).requires_grad_(False)
    profiles, engines = {}, {}
    import copy

    model_lowp = copy.deepcopy(model).to(dtype)  # the plain-PyTorch recipes' network: weights in bf16
    def run_batch(B):
        x0, labels = make_inputs(B, args.size, args.num_classes, device, seed=B)
        common = {"section": "resnet50", "batch": B}

        def record(method, dt, per_step, setup_s="", notes=""):
            report.add(method=method, dtype=dt, ms_per_step=round(per_step * 1e3, 4), image_steps_per_s=round(B / per_step, 1),
                       setup_s=setup_s if setup_s == "" else round(setup_s, 2), notes=notes, **common)

        def attempt(method, dt, fn):
            if not budget_ok(f"{method} B={B}"):
                report.add(method=method, dtype=dt, notes="skipped: time budget", **common)
                return
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a failed contender is a row saying so, not a lost run
                traceback.print_exc()
                report.add(method=method, dtype=dt, notes=f"FAILED: {type(exc).__name__}: {exc}"[:300], **common)

        if "torchattacks" in methods:
            attempt("torchattacks PGDL2", "fp32", lambda: record("torchattacks PGDL2", "fp32",
                                                                  *bench_torchattacks(model, x0, labels, args.steps, device)[:1],
                                                                  notes="CE loss, eps=1.5, alpha=0.1, no random start"))
        if "reference" in methods:
            attempt("reference engine", "fp32", lambda: record("reference engine", "fp32",
                                                                bench_reference(model, x0, labels, args.steps, device, head)[0],
                                                                notes="--engine torch, fp32 eager, T+1 forwards for T steps"))
        if "eager-graph" in methods:
            attempt("eager + CUDA graph", "bf16", lambda: record("eager + CUDA graph", "bf16",
                                                                 bench_eager_graph(model_lowp, x0, labels, device, head, dtype)[0],
                                                                 notes="model.to(bf16), eager step, NCHW, captured"))
        if "compile-graph" in methods:
            def run_cg():
                per, compile_s = bench_compile_graph(model_lowp, x0, labels, device, head, dtype)
                record("compile + CUDA graph", "bf16", per, compile_s, "model.to(bf16), torch.func.grad + torch.compile (default, static shapes), NCHW, one step per replay; setup = compile")
            attempt("compile + CUDA graph", "bf16", run_cg)
        if "triton" in methods:
            def run_triton():
                if "triton" not in engines:
                    engines["triton"] = make_triton(model, args.steps, device, head, **args.topts)
                eng = engines["triton"]
                per, replay, setup_s, bucket = bench_triton(eng, x0, labels, args.steps, device)
                t = eng.timings()
                record("triton engine", "bf16", per, setup_s,
                       f"refine_batch wall / T, bucket {bucket.size}; setup = first call at this size (compile "
                       f"{t['compile_s']:.1f}s once per engine, then warm-up + capture); fold_bn {t['fold_bn']}")
                if replay is not None:
                    record("triton engine (graph replay only)", "bf16", replay, notes="one T-step graph replay / T (no final forward, no host work)")
                try:
                    profiles[f"triton engine, batch {B}"] = profile_engine_step(eng, bucket, device)
                except Exception as exc:  # noqa: BLE001 - the profile explains; its failure must not cost the timing rows
                    profiles[f"triton engine, batch {B}"] = f"profile failed: {type(exc).__name__}: {exc}"

            attempt("triton engine", "bf16", run_triton)
        if "ort" in methods:
            def run_ort():
                if "ort" not in engines:
                    engines["ort"] = make_ort(model, args, device, head)
                eng = engines["ort"]
                idx = torch.arange(B)
                t0 = time.perf_counter()
                eng.refine_batch(x0, labels, idx)  # first call at this size: session run, IOBinding, graph capture
                sync(device)
                setup_s = time.perf_counter() - t0
                per = median_time(lambda: eng.refine_batch(x0, labels, idx), device, reps=5) / args.steps
                record("ort engine", "fp32", per, setup_s,
                       f"--engine ort: exported step graph, ONNX Runtime {'CUDA' if device.type == 'cuda' else 'CPU'} "
                       f"provider, CUDA graphs in use: {bool(eng.timings().get('cuda_graph'))}; T+1 graph calls")
            attempt("ort engine", "fp32", run_ort)
        if "triton-eager" in methods:
            def run_triton_eager():
                if "triton-eager" not in engines:
                    engines["triton-eager"] = make_triton(model, args.steps, device, head, **(args.topts | {"compile": "0"}))
                per, _replay, setup_s, bucket = bench_triton(engines["triton-eager"], x0, labels, args.steps, device)
                record("triton engine, compile=0", "bf16", per, setup_s, f"fused kernels + CUDA graphs around the eager network, bucket {bucket.size}")
            attempt("triton engine, compile=0", "bf16", run_triton_eager)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for title, text in profiles.items():
            report.extra[f"profile: {title}"] = text
        report.write()

    for B in [int(b) for b in args.batches.split(",")]:
        run_batch(B)
    if args.early_stop:
        early_stop_section(report, args, device, budget_ok)
    for spec in [e for e in args.extras.split(";") if e]:  # engine variants, to attribute the gains
        B_s, opts_s = spec.split(":", 1)
        B = int(B_s)
        opts = dict(kv.split("=", 1) for kv in opts_s.split(",") if kv)
        name = f"triton engine, {opts_s}"
        if not budget_ok(name):
            report.add(section="resnet50", method=name, batch=B, dtype="bf16", notes="skipped: time budget")
            continue
        try:
            x0, labels = make_inputs(B, args.size, args.num_classes, device, seed=B)
            eng = make_triton(model, args.steps, device, head, **(args.topts | opts))
            per, replay, setup_s, _bucket = bench_triton(eng, x0, labels, args.steps, device)
            report.add(section="resnet50", method=name, batch=B, dtype="bf16", ms_per_step=round(per * 1e3, 4),
                       image_steps_per_s=round(B / per, 1), setup_s=round(setup_s, 2),
                       notes=f"variant of the engine's defaults; graph replay only {replay * 1e3 if replay else float('nan'):.4f} ms/step")
            del eng
        except Exception as exc:  # noqa: BLE001 - a failed variant is a row saying so
            traceback.print_exc()
            report.add(section="resnet50", method=name, batch=B, dtype="bf16", notes=f"FAILED: {type(exc).__name__}: {exc}"[:300])
    report.extra["run"] = f"total wall {time.perf_counter() - start:.0f}s; argv {json.dumps(sys.argv[1:])}"
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main()
