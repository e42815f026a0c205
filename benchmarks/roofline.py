"""Roofline of the triton engine's step: minimal DRAM bytes per image-step beside measured ones (issue 12).

    python benchmarks/roofline.py --out OUT --arch resnet50,wide_resnet50_2 --batch 256 [--ncu auto]

For each arch it reports
- the minimal DRAM bytes of one refinement step per image, counted analytically from the network (the rule
  is printed with the numbers; see COUNTING_RULE), and the floor time of a step at --peak-tbs;
- the measured time of one step (the engine's T-step CUDA graph replay, CUDA events, median), in this process;
- the measured DRAM bytes per image-step: Nsight Compute run as a subprocess on this script's `--worker
  profile` mode, `ncu --clock-control none --metrics dram__bytes_read.sum,dram__bytes_write.sum,... --csv`,
  with `--graph-profiling graph` (--ncu-mode graph: the whole T-step graph is one profiled workload) or the
  kernels of one eager step (--ncu-mode kernels: engine with graphs=0, every kernel profiled, summed);
- the achieved bandwidth (measured bytes / measured time) against --peak-tbs (H200: ~4.3 TB/s achievable
  of 4.8 nominal), and measured / minimal bytes: the distance to the limit as numbers.
Without ncu (not on PATH, in /usr/local/cuda/bin or /opt/nvidia/nsight-compute/*/), or when it fails (e.g. no
permission for the GPU's performance counters), the measured-bytes columns say why and the rest is still reported.

Writes OUT/roofline.md and OUT/roofline.json (atomic).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import parse_engine_options, parse_int_list, run_metadata, sync, time_calls  # noqa: E402
from ccfast.bn_fold import fold_batchnorm  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.io_utils import write_json_atomic, write_text_atomic  # noqa: E402

COUNTING_RULE = (
    "minimal bytes per image-step = weights / B + forward activations + backward gradients + ReLU masks + "
    "image I/O, where: weights = every parameter of the BN-folded network, read once per step per batch "
    "(at --weight-bytes each); a layer is a convolution, linear layer or pooling (bias, BatchNorm, ReLU and "
    "the residual add are fused into the epilogue of the layer that produces their input, so they store no "
    "tensor of their own); forward activations = each layer's output written once and read once "
    "(2 × elements × --act-bytes); backward gradients = the gradient of each layer's output written once and "
    "read once (same size); ReLU masks = 1 bit per ReLU output element, written in the forward and read in "
    "the backward; image I/O = the fp32 image read by the first layer, the fp32 input gradient written and "
    "read by the step, and the step's reads of x and x0 and write of x (6 × 4 bytes × C·H·W). Not counted "
    "(so this is a lower bound): second reads of tensors with two consumers (the residual identity), "
    "max-pool indices, the backward's second read of the weights, workspaces, the objective head's few "
    "bytes per image.")

LAYER_MODULES = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AvgPool2d,
                 torch.nn.AdaptiveAvgPool2d)
LAYER_FUNCTIONS = {torch.nn.functional.conv2d, torch.conv2d, torch.nn.functional.linear,
                   torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                   torch.nn.functional.adaptive_avg_pool2d}
RELU_FUNCTIONS = {torch.nn.functional.relu, torch.relu, torch.relu_}

NCU_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum")
UNIT_SCALE = {"byte": 1, "bytes": 1, "b": 1, "kbyte": 1e3, "kb": 1e3, "mbyte": 1e6, "mb": 1e6, "gbyte": 1e9,
              "gb": 1e9, "tbyte": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
              "nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
              "second": 1.0, "s": 1.0}


# ---------------------------------------------------------------- the analytic count


@dataclass
class MinimalBytes:
    batch: int
    weights_per_batch: float
    activations: float  # per image, forward
    gradients: float  # per image, backward
    relu_masks: float  # per image
    image_io: float  # per image
    layers: int
    relus: int

    @property
    def per_image_step(self) -> float:
        return self.weights_per_batch / self.batch + self.activations + self.gradients + self.relu_masks + \
            self.image_io


def _is_layer(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], LAYER_MODULES)
    return node.op == "call_function" and node.target in LAYER_FUNCTIONS


def _is_relu(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], torch.nn.ReLU)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_function" and node.target in RELU_FUNCTIONS


def minimal_bytes(model: torch.nn.Module, image_shape: tuple[int, int, int], batch: int, act_bytes: float = 2,
                  weight_bytes: float = 2) -> MinimalBytes:
    """COUNTING_RULE applied to `model` (traced with torch.fx after BN folding, shapes from one CPU image)."""
    from torch.fx.passes.shape_prop import ShapeProp

    net, status = fold_batchnorm(_cpu_copy(model))
    if status != "on":
        raise CCFastError(f"the roofline needs an fx-traceable network (BN folding: {status})")
    modules = dict(net.named_modules())
    ShapeProp(net).propagate(torch.rand(1, *image_shape))
    layer_elems, relu_elems, layers, relus = 0, 0, 0, 0
    for node in net.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        elems = int(torch.Size(meta.shape).numel())  # batch 1: elements per image
        if _is_layer(node, modules):
            layer_elems, layers = layer_elems + elems, layers + 1
        elif _is_relu(node, modules):
            relu_elems, relus = relu_elems + elems, relus + 1
    weights = sum(p.numel() for p in net.parameters()) * weight_bytes
    pixels = image_shape[0] * image_shape[1] * image_shape[2]
    return MinimalBytes(batch=batch, weights_per_batch=float(weights), activations=2.0 * layer_elems * act_bytes,
                        gradients=2.0 * layer_elems * act_bytes, relu_masks=2.0 * relu_elems / 8,
                        image_io=6.0 * 4 * pixels, layers=layers, relus=relus)


def _cpu_copy(model):
    import copy

    return copy.deepcopy(model).cpu().float().eval()


# ---------------------------------------------------------------- Nsight Compute


def find_ncu(choice: str = "auto") -> str | None:
    """Path of ncu: --ncu PATH as given, 'auto' = PATH, /usr/local/cuda/bin, then the newest
    /opt/nvidia/nsight-compute/VERSION/ncu; 'none' = do not profile."""
    if choice == "none":
        return None
    if choice != "auto":
        return choice if Path(choice).exists() or shutil.which(choice) else None
    found = shutil.which("ncu")
    if found:
        return found
    candidates = [Path("/usr/local/cuda/bin/ncu"), *sorted(Path("/opt/nvidia").glob("nsight-compute/*/ncu"),
                                                           reverse=True)]
    return next((str(p) for p in candidates if p.exists()), None)


def ncu_command(ncu: str, mode: str, log_file: Path, worker_argv: list[str]) -> list[str]:
    """The Nsight Compute command line around a `--worker profile` run of this script."""
    cmd = [ncu, "--clock-control", "none", "--metrics", ",".join(NCU_METRICS), "--csv", "--print-units", "base",
           "--profile-from-start", "off", "--log-file", str(log_file)]
    if mode == "graph":
        cmd += ["--graph-profiling", "graph"]
    return cmd + [sys.executable, str(Path(__file__).resolve()), *worker_argv]


def _number(text: str) -> float:
    return float(text.replace(",", "").strip())


def parse_ncu_csv(text: str) -> dict:
    """Sums of the metrics over every profiled result (kernel or graph) in ncu's --csv output.

    Lines before the CSV header (`"ID","Process ID",...`) and ncu's `==PROF==` lines are skipped; values are
    scaled by their unit column (base units expected with --print-units base, others converted)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise CCFastError("no ncu CSV table in the output (no line starting with \"ID\")")
    body = [line for line in lines[start:] if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("\n".join(body))))
    for need in ("ID", "Metric Name", "Metric Value"):
        if rows and need not in rows[0]:
            raise CCFastError(f"ncu CSV has no column {need!r}")
    totals = {m: 0.0 for m in NCU_METRICS}
    ids = set()
    for r in rows:
        name = r["Metric Name"]
        if name not in totals:
            continue
        unit = (r.get("Metric Unit") or "byte").strip().lower()
        if unit not in UNIT_SCALE:
            raise CCFastError(f"ncu CSV: unknown unit {r.get('Metric Unit')!r} for {name}")
        totals[name] += _number(r["Metric Value"]) * UNIT_SCALE[unit]
        ids.add(r["ID"])
    return {"results": len(ids), "dram_read_bytes": totals["dram__bytes_read.sum"],
            "dram_write_bytes": totals["dram__bytes_write.sum"], "gpu_time_s": totals["gpu__time_duration.sum"]}


# ---------------------------------------------------------------- the engine under test


def build_engine(arch: str, size: int, batch: int, steps: int, device, options: dict):
    """(engine, bucket) after the first refine_batch at this batch (compiled, captured when graphs are on)."""
    from benchmarks.bench_refine import ALPHA, EPS, make_model
    from benchmarks.harness import make_inputs
    from ccfast.config import RefineConfig
    from ccfast.objectives import HeadParams
    from ccfast.refine.base import ResolvedScalars
    from ccfast.refine.triton_engine import TritonEngine

    model = make_model(arch, size, 1000, device)
    cfg = RefineConfig(steps=steps, alpha=ALPHA, eps=EPS, early_stop="none")
    eng = TritonEngine(model, cfg, ResolvedScalars(tau=None, head=HeadParams(ell0=2.0)), device, **options)
    x0, labels = make_inputs(batch, size, 1000, device, seed=batch)
    eng.refine_batch(x0, labels, torch.arange(batch))
    sync(device)
    return model, eng, eng._buckets[eng._bucket_size(batch, initial=True)]


def worker(args) -> int:
    """Under ncu: warm up outside the profiled range, then profile --replays graph replays (or one eager step)."""
    device = torch.device("cuda")
    opts = parse_engine_options(args.triton_options, "--triton-options")
    if args.ncu_mode == "kernels":
        opts = opts | {"graphs": "0"}
    _model, eng, bucket = build_engine(args.arch_one, args.size, args.batch, args.steps, device, opts)
    if args.ncu_mode == "graph":
        graph = bucket.graphs[(eng._K, True)]
        graph.replay()
        sync(device)
        torch.cuda.profiler.start()
        for _ in range(args.replays):
            graph.replay()
        sync(device)
        torch.cuda.profiler.stop()
        steps = args.replays * eng._K
    else:
        with eng._precision():
            eng._body(bucket, True)
            sync(device)
            torch.cuda.profiler.start()
            eng._body(bucket, True)
            sync(device)
            torch.cuda.profiler.stop()
        steps = 1
    print(json.dumps({"profiled_steps": steps, "bucket": bucket.size}), file=sys.stderr, flush=True)
    write_json_atomic(args.worker_json, {"profiled_steps": steps, "bucket": bucket.size})
    return 0


def measure_bytes(args, arch: str) -> dict:
    """Run ncu on a worker; {'status': ..., and the per-step numbers when it worked}."""
    ncu = find_ncu(args.ncu)
    if ncu is None:
        return {"status": (f"not measured: Nsight Compute (ncu) not found ({args.ncu!r}; looked on PATH, in "
                           "/usr/local/cuda/bin and /opt/nvidia/nsight-compute/*/): install it or pass --ncu PATH")}
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="ccfast-ncu-"))  # ncu's raw output stays out of --out (its files count)
    log_file, worker_json = scratch / f"ncu-{arch}-b{args.batch}.csv", scratch / "worker.json"
    worker_argv = ["--worker", "profile", "--arch", arch, "--size", str(args.size), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--replays", str(args.replays), "--ncu-mode", args.ncu_mode,
                   "--worker-json", str(worker_json), "--triton-options", args.triton_options]
    cmd = ncu_command(ncu, args.ncu_mode, log_file, worker_argv)
    print("running: " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ncu_timeout, check=False,
                          env=os.environ | {"PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    text = log_file.read_text() if log_file.exists() else ""
    if '"ID"' not in text:
        text += "\n" + proc.stdout
    try:
        sums = parse_ncu_csv(text)
        steps = json.loads(worker_json.read_text())["profiled_steps"]
    except (CCFastError, OSError, ValueError, KeyError) as exc:
        tail = (proc.stderr or proc.stdout or text)[-600:].replace("\n", " / ")
        return {"status": f"ncu failed (exit {proc.returncode}, {wall:.0f}s): {exc}; output tail: {tail}"}
    per_step = (sums["dram_read_bytes"] + sums["dram_write_bytes"]) / steps
    return {"status": f"ncu {args.ncu_mode} mode, {sums['results']} profiled results, {steps} steps, {wall:.0f}s",
            "dram_read_per_image_step": sums["dram_read_bytes"] / steps / args.batch,
            "dram_write_per_image_step": sums["dram_write_bytes"] / steps / args.batch,
            "dram_per_image_step": per_step / args.batch, "ncu_gpu_time_per_step_s": sums["gpu_time_s"] / steps}


def roofline_arch(args, arch: str) -> dict:
    from benchmarks.bench_refine import make_model

    cuda = torch.cuda.is_available() and not args.analytic_only
    model = make_model(arch, args.size, 1000, torch.device("cpu"))
    mb = minimal_bytes(model, (3, args.size, args.size), args.batch, args.act_bytes, args.weight_bytes)
    row = {"arch": arch, "batch": args.batch, "minimal": asdict(mb) | {"per_image_step": mb.per_image_step}}
    peak = args.peak_tbs * 1e12
    row["floor_ms_per_step"] = mb.per_image_step * args.batch / peak * 1e3
    if not cuda:
        row["time"] = "not measured: no CUDA GPU" if not args.analytic_only else "not measured: --analytic-only"
        row["measured"] = {"status": "not measured: no CUDA GPU"}
        return row
    device = torch.device("cuda")
    opts = parse_engine_options(args.triton_options, "--triton-options")
    _model, eng, bucket = build_engine(arch, args.size, args.batch, args.steps, device, opts)
    graph = bucket.graphs[(eng._K, True)]
    timing = time_calls(graph.replay, device, warmup=2, reps=10, clock="event")
    step_s = timing.median_s / eng._K
    row["ms_per_step"] = step_s * 1e3
    del eng, bucket, graph
    torch.cuda.empty_cache()
    row["measured"] = measure_bytes(args, arch)
    if "dram_per_image_step" in row["measured"]:
        m = row["measured"]
        m["achieved_tbs"] = m["dram_per_image_step"] * args.batch / step_s / 1e12
        m["fraction_of_peak"] = m["achieved_tbs"] / args.peak_tbs
        m["measured_over_minimal"] = m["dram_per_image_step"] / mb.per_image_step
    row["x_over_floor"] = step_s * 1e3 / row["floor_ms_per_step"]
    return row


def _mb(v: float) -> str:
    return f"{v / 1e6:.3f} MB"


def markdown(rows: list[dict], meta: dict, args) -> str:
    lines = ["# roofline: the triton engine's step", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", f"Counting rule. {COUNTING_RULE}", "",
              (f"Peak bandwidth {args.peak_tbs} TB/s; activations {args.act_bytes} B/element, weights "
              f"{args.weight_bytes} B/element; T={args.steps} steps per graph."), "",
              ("| arch | batch | minimal /image-step | of which weights/B | activ. + grads | measured /image-step | "
              "measured ÷ minimal | ms/step | floor ms/step | ms ÷ floor | achieved TB/s | of peak |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mn, ms = r["minimal"], r["measured"]
        got = "dram_per_image_step" in ms
        lines.append(" | ".join([
            f"| {r['arch']}", str(r["batch"]), _mb(mn["per_image_step"]), _mb(mn["weights_per_batch"] / r["batch"]),
            _mb(mn["activations"] + mn["gradients"]), _mb(ms["dram_per_image_step"]) if got else "—",
            f"{ms['measured_over_minimal']:.2f}" if got else "—",
            f"{r['ms_per_step']:.4f}" if "ms_per_step" in r else "—", f"{r['floor_ms_per_step']:.4f}",
            f"{r['x_over_floor']:.2f}" if "x_over_floor" in r else "—",
            f"{ms['achieved_tbs']:.2f}" if got else "—", f"{ms['fraction_of_peak']:.0%} |" if got else "— |"]))
    lines.append("")
    for r in rows:
        mn = r["minimal"]
        lines.append(f"- {r['arch']}, batch {r['batch']}: {mn['layers']} layers, {mn['relus']} ReLUs; per image: "
                     f"activations "
                     f"{_mb(mn['activations'])}, gradients {_mb(mn['gradients'])}, masks {_mb(mn['relu_masks'])}, "
                     f"image I/O {_mb(mn['image_io'])}; weights {_mb(mn['weights_per_batch'])} per batch. "
                     f"Measured: {r['measured']['status']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for roofline.md / roofline.json")
    p.add_argument("--arch", default="resnet50,wide_resnet50_2", help="backbones, comma list")
    p.add_argument("--batch", default="256", help="batch size(s), comma list (each one an engine build + ncu run)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="T: steps per engine graph")
    p.add_argument("--replays", type=int, default=1, help="graph replays profiled by ncu (graph mode)")
    p.add_argument("--ncu", default="auto", help="ncu path, 'auto' (PATH, /usr/local/cuda/bin) or 'none'")
    p.add_argument("--ncu-mode", choices=("graph", "kernels"), default="graph",
                   help="graph: profile the T-step CUDA graph as one workload; kernels: every kernel of one eager step")
    p.add_argument("--ncu-timeout", type=float, default=400)
    p.add_argument("--peak-tbs", type=float, default=4.3, help="achievable DRAM bandwidth, TB/s (H200 ~4.3)")
    p.add_argument("--act-bytes", type=float, default=2, help="bytes per activation element (bf16: 2)")
    p.add_argument("--weight-bytes", type=float, default=2, help="bytes per weight element (bf16: 2)")
    p.add_argument("--triton-options", default="", help="triton engine options, KEY=VALUE comma list")
    p.add_argument("--analytic-only", action="store_true", help="only the analytic count (no GPU needed)")
    p.add_argument("--commit", default=None)
    p.add_argument("--worker", choices=("profile",), help=argparse.SUPPRESS)
    p.add_argument("--worker-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    try:
        parse_engine_options(args.triton_options, "--triton-options")
        batches = parse_int_list(args.batch, "--batch")
        if args.steps < 1 or args.replays < 1:
            raise CCFastError("--steps and --replays must be ≥ 1")
        args.batch = batches[0]
        if args.worker:
            args.arch_one = archs[0]
            return worker(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        device = torch.device("cuda" if torch.cuda.is_available() and not args.analytic_only else "cpu")
        meta = run_metadata(device, args.commit)
        rows = []
        for arch in archs:
            for batch in batches:
                print(f"roofline: {arch}, batch {batch} ...", flush=True)
                args.batch = batch
                rows.append(roofline_arch(args, arch))
            write_json_atomic(out / "roofline.json", {"meta": meta, "rule": COUNTING_RULE, "rows": rows})
            write_text_atomic(out / "roofline.md", markdown(rows, meta, args))
    except CCFastError as exc:
        print(f"roofline: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows, meta, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
