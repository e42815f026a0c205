"""`--engine ort` throughput beside the reference engine, in one run on one device (issue 6).

    python benchmarks/bench_ort.py --out-dir OUT [--batches 1,16,256] [--steps 10] [--device cuda]

ResNet-50 at 64×64 (random weights, BatchNorm statistics calibrated on the inputs; timing does not depend
on the weights), paper objective (Eq. 12), α = 0.1, ε = 1.5, early stopping off (every image takes every
step), T steps per `refine_batch` call. For each batch size B:

    reference engine         `--engine torch`, fp32 eager (cuDNN TF32 off), T+1 forwards and T backwards
    ort fp32                 the exported step graph, ONNX Runtime CUDA provider, IOBinding on torch tensors,
                             one CUDA graph per batch bucket (`enable_cuda_graph`), TF32 off
    ort fp32, no CUDA graph  the same, each step launched op by op
    ort fp32 + TF32          cuDNN may use TF32 in convolutions
    ort fp16                 the graph's network in fp16 (head and step fp32)
    trt                      `--engine trt` when a TensorRT runtime runs on this GPU (else the reason)

ms/step = wall time of one `refine_batch` call / T (it includes the final statistics call and, for ort, the
host check for "all stopped" after each step); image-steps/s = B·T / wall time. Set-up (export, session,
capture) is measured apart. |Δx| is the largest difference from the reference engine's images after the
same T steps (fp32 rows should be ≲1e-4; see tests/test_ort_engine.py for the tolerance rules).

Writes OUT/bench_ort.csv and OUT/bench_ort.md after every row (atomic), so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccfast.config import RefineConfig  # noqa: E402
from ccfast.io_utils import write_text_atomic  # noqa: E402
from ccfast.models import build_model  # noqa: E402
from ccfast.objectives import HeadParams  # noqa: E402
from ccfast.refine.base import ResolvedScalars  # noqa: E402

FIELDS = ["method", "batch", "ms_per_step", "image_steps_per_s", "x_vs_reference", "max_abs_dx", "setup_s", "notes"]


class Report:
    def __init__(self, out: Path, header: str):
        self.out, self.header, self.rows = out, header, []

    def add(self, **row):
        row = {k: row.get(k, "") for k in FIELDS}
        self.rows.append(row)
        print(" | ".join(str(row[k]) for k in FIELDS), flush=True)
        self.write()

    def write(self):
        ref = {r["batch"]: r["image_steps_per_s"] for r in self.rows if r["method"] == "reference engine"}
        for r in self.rows:
            if isinstance(r["image_steps_per_s"], float) and ref.get(r["batch"]):
                r["x_vs_reference"] = round(r["image_steps_per_s"] / ref[r["batch"]], 2)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.out / "bench_ort.csv", buf.getvalue())
        lines = ["# bench_ort", "", self.header, "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
        lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in self.rows]
        write_text_atomic(self.out / "bench_ort.md", "\n".join(lines) + "\n")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps):
    """(median seconds per call, result of the last call), after one warm-up call."""
    out = fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def make_model(arch, size, classes, device):
    torch.manual_seed(0)
    model = build_model(arch, classes)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 3, size, size))
    return model.eval().requires_grad_(False).to(device)


def make_inputs(B, size, classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(B, 3, max(2, size // 8), max(2, size // 8), generator=g)
    x0 = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x0 = (x0 + 0.05 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    return x0.to(device), torch.randint(0, classes, (B,), generator=g).to(device)


def versions() -> str:
    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
    except ImportError as exc:
        parts.append(f"onnxruntime missing ({exc})")
    return "; ".join(parts)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="folder for bench_ort.csv / bench_ort.md (and the exported graphs)")
    p.add_argument("--batches", default="1,16,256", help="batch sizes (default 1,16,256)")
    p.add_argument("--steps", type=int, default=10, help="T steps per refine call (default 10)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per row, after one warm-up (default 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50", help="backbone (default resnet50; tiny for a smoke run)")
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--methods", default="reference,ort,ort-nograph,ort-tf32,ort-fp16,trt",
                   help="comma-separated subset of reference, ort, ort-nograph, ort-tf32, ort-fp16, trt")
    args = p.parse_args(argv)

    from ccfast.onnx_export.build import export_step_graph
    from ccfast.refine.ort_engine import OrtEngine
    from ccfast.refine.torch_engine import TorchEngine

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    methods = args.methods.split(",")
    torch.backends.cudnn.allow_tf32 = False  # the reference is fp32 through and through
    torch.backends.cuda.matmul.allow_tf32 = False
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    header = (f"card: **{card}**; {versions()}; commit {commit()}; {time.strftime('%Y-%m-%d %H:%M')}\n\n"
              f"{args.arch} at {args.size}×{args.size}, {args.classes} classes, Eq. 12, α=0.1, ε=1.5, early stopping off, "
              f"T={args.steps} steps per call; ms/step = call time / T; median of {args.reps} calls after a warm-up.")
    report = Report(out, header)

    model = make_model(args.arch, args.size, args.classes, device)
    config = RefineConfig(steps=args.steps, alpha=0.1, eps=1.5, early_stop="none")
    scalars = ResolvedScalars(tau=None, head=HeadParams(objective="eq12", ell0=1.0))
    graphs = {}
    for dtype in ("fp32", "fp16"):
        t0 = time.perf_counter()
        graphs[dtype] = out / f"step-{args.arch}-{dtype}.onnx"
        export_step_graph(model.cpu(), (args.size, args.size), graphs[dtype], dtype)
        print(f"exported {graphs[dtype]} in {time.perf_counter() - t0:.1f} s", flush=True)
    model.to(device)
    buckets = ",".join(map(str, batches))
    variants = {
        "ort": ("ort fp32", dict(onnx=str(graphs["fp32"]))),
        "ort-nograph": ("ort fp32, no CUDA graph", dict(onnx=str(graphs["fp32"]), cuda_graph="0")),
        "ort-tf32": ("ort fp32 + TF32", dict(onnx=str(graphs["fp32"]), tf32="1")),
        "ort-fp16": ("ort fp16", dict(onnx=str(graphs["fp16"]))),
    }
    engines = {}
    for B in batches:
        x0, labels = make_inputs(B, args.size, args.classes, device)
        idx = torch.arange(B)
        ref_images = None
        if "reference" in methods:
            eng = TorchEngine(model, config, scalars, device)
            s, res = timed(lambda: eng.refine_batch(x0, labels, idx), device, args.reps)
            ref_images = res.images
            report.add(method="reference engine", batch=B, ms_per_step=round(1e3 * s / args.steps, 3),
                       image_steps_per_s=round(B * args.steps / s, 1), notes="fp32 eager, T+1 forwards")
        for key, (label, opts) in variants.items():
            if key not in methods or device.type != "cuda" and key in ("ort-nograph", "ort-tf32"):
                continue
            try:
                if key not in engines:
                    extra = {"buckets": buckets} if device.type == "cuda" else {}
                    engines[key] = OrtEngine(model, config, scalars, device, **opts, **extra)
                eng = engines[key]
                t0 = time.perf_counter()
                eng.refine_batch(x0, labels, idx)  # first call: session, IOBinding, CUDA graph capture
                sync(device)
                setup = time.perf_counter() - t0
                s, res = timed(lambda: eng.refine_batch(x0, labels, idx), device, args.reps)
                dx = (res.images - ref_images).abs().max().item() if ref_images is not None else ""
                report.add(method=label, batch=B, ms_per_step=round(1e3 * s / args.steps, 3),
                           image_steps_per_s=round(B * args.steps / s, 1), max_abs_dx=f"{dx:.2e}" if dx != "" else "",
                           setup_s=round(setup, 2),
                           notes="; ".join([f"{k}={v}" for k, v in opts.items() if k != "onnx"]
                                           + [f"cuda graphs in use: {bool(eng.timings().get('cuda_graph'))}"] * (device.type == "cuda")))
            except Exception as exc:  # keep measuring the others; say what failed
                traceback.print_exc()
                report.add(method=label, batch=B, notes=f"failed: {type(exc).__name__}: {exc}"[:300])
        if "trt" in methods:
            from ccfast.refine.trt_engine import TrtEngine

            status = TrtEngine.availability()
            if status != "ok":
                report.add(method="trt", batch=B, notes=f"not run: {status}"[:300])
            else:
                try:
                    if "trt" not in engines:
                        engines["trt"] = TrtEngine(model, config, scalars, device, buckets=buckets)
                    eng = engines["trt"]
                    t0 = time.perf_counter()
                    eng.refine_batch(x0, labels, idx)
                    sync(device)
                    setup = time.perf_counter() - t0
                    s, res = timed(lambda: eng.refine_batch(x0, labels, idx), device, args.reps)
                    dx = (res.images - ref_images).abs().max().item() if ref_images is not None else ""
                    report.add(method="trt fp32", batch=B, ms_per_step=round(1e3 * s / args.steps, 3),
                               image_steps_per_s=round(B * args.steps / s, 1), max_abs_dx=f"{dx:.2e}" if dx != "" else "",
                               setup_s=round(setup, 2), notes=eng.runtime_name)
                except Exception as exc:
                    traceback.print_exc()
                    report.add(method="trt fp32", batch=B, notes=f"failed: {type(exc).__name__}: {exc}"[:300])
    print(f"wrote {out / 'bench_ort.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
