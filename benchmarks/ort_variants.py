"""Where ONNX Runtime's time goes on the step graph, and what each of its settings changes (issue 15).

    python benchmarks/ort_variants.py --out OUT [--batches 1,256] [--steps 10] [--reps 5] [--budget-s 300]

ResNet-50 at 64×64 (random weights, BatchNorm calibrated: bench_refine.make_model), Eq. 12, α = 0.1, ε = 1.5, early
stopping off, one GPU, one process:

1. Profiles, CUDA graphs off (so every launch is seen): ONNX Runtime's own profiler summed per op type (host
   time of each node's launch, what a CUDA graph removes) and the GPU kernels of the same runs through
   torch.profiler (CUPTI sees every kernel of the process), grouped by kind and listed by name.
2. Variants, each one change away from the engine's previous settings (fp32 graph, CUDA graph on, cuDNN
   exhaustive search, max workspace, NCHW, TF32 off, all graph optimisations), for the fp32 graph and the
   fp16 graphs (`onnx_export.build.GraphLayout`: first convolution padded to 8 input channels or not,
   max-pool scatter "conv" or "interleave", stride-1 convolutions' input gradients as ConvTranspose, the graph
   as first written, or as Conv on flipped, transposed weights: the "dgrad-conv" rows, each beside the same
   settings on the ConvTranspose graph). Each row: ms/step through the engine's loop (step_graph_runner.run_steps
   as the engine calls it, T steps + the final statistics call, / T), the step alone
   (run_with_iobinding repeated), set-up (session + first call: algorithm search, capture), and the error
   ‖x_T − x_ref‖ against the fp32 reference engine on the same GPU, beside plain PyTorch fp16's (the
   reference loop with the network under fp16 autocast: the yardstick for reduced precision).
3. A saved optimised model: session time with and without it, and the optimised graph's op counts.

Writes OUT/ort_variants.md and .csv (rewritten after every row) and OUT/profiles.txt (the summaries).
The last lines printed are the table. `--budget-s` stops starting new variants once that many seconds
have passed (rows not run say so), so a device call ends in time.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_refine import make_model  # noqa: E402
from harness import make_inputs  # noqa: E402

from ccfast.config import RefineConfig  # noqa: E402
from ccfast.io_utils import write_text_atomic  # noqa: E402
from ccfast.objectives import HeadParams  # noqa: E402
from ccfast.onnx_export.build import GraphLayout, export_step_graph, model_fingerprint, read_graph_metadata  # noqa: E402
from ccfast.refine.base import ResolvedScalars  # noqa: E402
from ccfast.refine.ort_session import OrtSettings, create_session  # noqa: E402
from ccfast.refine.step_graph_runner import NUMPY_DTYPES, StepBuffers, collect, params_for, run_steps  # noqa: E402
from ccfast.refine.torch_engine import TorchEngine  # noqa: E402

# name: (dtype, layout). Every layout but the "-dgc" ones pins dgrad="conv_transpose" (the graph as first written,
# no longer the exporter's default), so those rows keep measuring what they measured before.
OLD = GraphLayout(pad_channels=False, dgrad="conv_transpose")
GRAPHS = {
    "fp32": ("fp32", OLD),
    "fp16": ("fp16", OLD),  # the fp16 graph as exported before this issue
    "fp16-pad": ("fp16", replace(OLD, pad_channels=True)),
    "fp16-pad-il": ("fp16", replace(OLD, pad_channels=True, maxpool_scatter="interleave")),
    "fp32-il": ("fp32", replace(OLD, maxpool_scatter="interleave")),
    "fp32-dgc": ("fp32", replace(OLD, dgrad="conv")),  # the exporter's default now
    "fp16-dgc": ("fp16", replace(OLD, dgrad="conv")),
}
BASE = OrtSettings()  # the engine's settings before this issue
NHWC = replace(BASE, prefer_nhwc=True)


@dataclass
class Variant:
    name: str
    graph: str
    settings: OrtSettings


VARIANTS = [  # most informative first: a budget cut drops the tail
    Variant("fp32", "fp32", BASE),
    Variant("fp32 dgrad-conv", "fp32-dgc", BASE),  # each dgrad-conv row: one change from the row before it
    Variant("fp32 tf32", "fp32", replace(BASE, tf32=True)),
    Variant("fp32 tf32 dgrad-conv", "fp32-dgc", replace(BASE, tf32=True)),
    Variant("fp16 heuristic", "fp16", replace(BASE, conv_algo="heuristic")),  # the engine's fp16 default now
    Variant("fp16 heuristic dgrad-conv", "fp16-dgc", replace(BASE, conv_algo="heuristic")),
    Variant("fp32 tf32 nhwc", "fp32", replace(NHWC, tf32=True)),
    Variant("fp32 tf32 nhwc dgrad-conv", "fp32-dgc", replace(NHWC, tf32=True)),
    Variant("fp16 (old graph)", "fp16", BASE),
    Variant("fp16 nhwc heuristic", "fp16", replace(NHWC, conv_algo="heuristic")),
    Variant("fp16+pad nhwc", "fp16-pad", NHWC),
    Variant("fp16 nhwc", "fp16", NHWC),
    Variant("fp16+pad", "fp16-pad", BASE),
    Variant("fp16+pad+il nhwc", "fp16-pad-il", NHWC),
    Variant("fp32 nhwc", "fp32", NHWC),
    Variant("fp32 no CUDA graph", "fp32", replace(BASE, cuda_graph=False)),
    Variant("fp16+pad nhwc heuristic", "fp16-pad", replace(NHWC, conv_algo="heuristic")),
    Variant("fp16+pad nhwc fuse_conv_bias", "fp16-pad", replace(NHWC, fuse_conv_bias=True)),
    Variant("fp32 heuristic", "fp32", replace(BASE, conv_algo="heuristic")),
    Variant("fp32 max workspace off", "fp32", replace(BASE, conv_max_workspace=False)),
    Variant("fp32 fuse_conv_bias", "fp32", replace(BASE, fuse_conv_bias=True)),
    Variant("fp32 opt basic", "fp32", replace(BASE, opt_level="basic")),
    Variant("fp16+pad+il", "fp16-pad-il", BASE),
    Variant("fp32 algo default", "fp32", replace(BASE, conv_algo="default")),
    Variant("fp32+il", "fp32-il", BASE),
]
# The engine's defaults first: fp32 and fp16 (heuristic search) on the Conv-dgrad graph, then the ConvT graphs.
PROFILES = [("fp32-dgc", BASE), ("fp16-dgc", replace(BASE, conv_algo="heuristic")), ("fp32", BASE),
            ("fp16", replace(BASE, conv_algo="heuristic"))]

FIELDS = ["variant", "graph", "batch", "ms_per_step", "image_steps_per_s", "step_only_ms", "setup_s", "err_vs_ref32",
          "err_torch_fp16", "err_ratio", "max_abs_dx", "notes"]

KERNEL_KINDS = [  # first match wins
    ("conv dgrad (ConvTranspose)", r"dgrad|backward_data|bwd_data|convolveDgrad"),
    ("conv fprop", r"fprop|convolve|conv2d|implicit_?gemm|winograd|fft|xmma_conv|conv_kernel"),
    ("layout transpose", r"nchwToNhwc|nhwcToNchw|[Tt]ranspose|nchw2nhwc|nhwc2nchw"),
    ("gemm", r"gemm|Gemm|cutlass|cublas"),
    ("reduction", r"[Rr]educ|softmax|Softmax"),
    ("pool", r"[Pp]ool"),
    ("data movement (pad, slice, concat, copy)", r"[Pp]ad|[Ss]lice|[Cc]oncat|[Cc]opy|memcpy|[Ee]xpand"),
    ("elementwise", r"[Ee]lementwise|ElementWise|_Where|Where|[Uu]nary|[Bb]inary|[Tt]ernary|Cast|Clip|[Ii]mpl"),
]


class Report:
    def __init__(self, out: Path, header: str):
        self.out, self.header, self.rows = out, header, []

    def add(self, **row):
        row = {k: row.get(k, "") for k in FIELDS}
        self.rows.append(row)
        print(" | ".join(str(row[k]) for k in FIELDS), flush=True)
        self.write()

    def write(self, extra: str = ""):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.out / "ort_variants.csv", buf.getvalue())
        lines = ["# ort_variants", "", self.header, "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
        lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in self.rows]
        write_text_atomic(self.out / "ort_variants.md", "\n".join(lines) + "\n" + extra)


def sync():
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def bind(sess, bufs, dev_index):
    """IOBinding on the static torch buffers (the engine's way: no copies between steps)."""
    binding = sess.io_binding()
    where = ("cuda", dev_index) if dev_index is not None else ("cpu", 0)
    for name, t in bufs.graph_inputs().items():
        binding.bind_input(name, *where, NUMPY_DTYPES[t.dtype], list(t.shape), t.data_ptr())
    for name, t in bufs.graph_outputs().items():
        binding.bind_output(name, *where, NUMPY_DTYPES[t.dtype], list(t.shape), t.data_ptr())
    return binding


class Bench:
    def __init__(self, args, out: Path):
        import onnxruntime as ort

        self.ort, self.args, self.out = ort, args, out
        self.device = torch.device(args.device)
        self.dev_index = torch.cuda.current_device() if self.device.type == "cuda" else None  # cpu: a smoke test
        self.model = make_model(args.arch, args.size, args.classes, torch.device("cpu"))
        self.fingerprint = model_fingerprint(self.model)
        self.model.to(self.device)
        self.config = RefineConfig(steps=args.steps, alpha=0.1, eps=1.5, early_stop="none")
        self.scalars = ResolvedScalars(tau=None, head=HeadParams(objective="eq12", ell0=1.0))
        self.params = params_for(self.config, self.scalars)
        self.graph_dir = Path(tempfile.mkdtemp(prefix="ort-variants-"))
        self.graphs: dict[str, Path] = {}
        self.inputs, self.ref, self.ref16 = {}, {}, {}
        self.summaries: list[str] = []

    def keep(self, text: str) -> str:
        """Profile and optimised-model summaries go to one file, OUT/profiles.txt (rewritten whole each time)."""
        self.summaries.append(text)
        write_text_atomic(self.out / "profiles.txt", "\n".join(self.summaries))
        return text

    def export_all(self, keys) -> None:
        """Export the graphs in parallel processes (spawned: each builds the same seeded model on the CPU)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        t0 = time.perf_counter()
        keys = [k for k in dict.fromkeys(keys) if k not in self.graphs]
        a = self.args
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, len(keys)), mp_context=spawn) as pool:
            jobs = {k: pool.submit(_export_worker, k, a.arch, a.size, a.classes, str(self.graph_dir / f"step-{k}.onnx"))
                    for k in keys}
            for k, job in jobs.items():
                self.graphs[k] = Path(job.result())
                if _graph_sha(self.graphs[k]) != self.fingerprint:
                    raise RuntimeError(f"graph {k} was exported from other weights than this process's model")
        print(f"exported {', '.join(keys)} in {time.perf_counter() - t0:.1f} s", flush=True)

    def graph(self, key: str) -> Path:
        if key not in self.graphs:
            self.export_all([key])
        return self.graphs[key]

    def references(self, B: int):
        """fp32 reference engine (TF32 off) and plain PyTorch fp16 (autocast) after T steps, on this GPU."""
        if B in self.ref:
            return
        x0, labels = make_inputs(B, self.args.size, self.args.classes, self.device)
        self.inputs[B] = (x0, labels)
        idx = torch.arange(B)
        for store, net in ((self.ref, self.model), (self.ref16, _Fp16Autocast(self.model))):
            store[B] = TorchEngine(net, self.config, self.scalars, self.device).refine_batch(x0, labels, idx).images
        sync()

    def step_loop(self, sess, B):
        """(call, bufs): one engine-style refine call on static buffers, as OrtEngine.refine_batch does it."""
        x0, labels = self.inputs[B]
        bufs = StepBuffers.allocate(B, (3, self.args.size, self.args.size), self.params, self.device)
        binding = bind(sess, bufs, self.dev_index)

        def run_step():
            sync()  # the torch copies feeding this step run on torch's stream, ORT's on its own
            sess.run_with_iobinding(binding)

        def call():
            bufs.load(x0, labels)
            run_steps(bufs, run_step, self.args.steps, check_every_step=self.scalars.tau is not None)  # as the engine
            return collect(bufs, B, labels, None)

        return call, binding  # keep `call` alive while the binding is used: it owns the buffers

    def measure(self, v: Variant, B: int) -> dict:
        self.references(B)
        path = self.graph(v.graph)
        t0 = time.perf_counter()
        sess = create_session(self.ort, path, v.settings, self.dev_index)
        call, binding = self.step_loop(sess, B)
        call()
        sync()
        setup = time.perf_counter() - t0
        times = []
        for _ in range(self.args.reps):
            t0 = time.perf_counter()
            res = call()
            sync()
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        n = 20
        t0 = time.perf_counter()
        for _ in range(n):
            sess.run_with_iobinding(binding)
        sync()
        step_only = (time.perf_counter() - t0) / n
        x0 = self.inputs[B][0]
        err = float((res.images - self.ref[B]).norm())
        err16 = float((self.ref16[B] - self.ref[B]).norm())
        moved = float((self.ref[B] - x0).norm())
        del sess
        return dict(variant=v.name, graph=v.graph, batch=B, ms_per_step=round(1e3 * s / self.args.steps, 3),
                    image_steps_per_s=round(B * self.args.steps / s, 1), step_only_ms=round(1e3 * step_only, 3),
                    setup_s=round(setup, 2), err_vs_ref32=f"{err:.4g}", err_torch_fp16=f"{err16:.4g}",
                    err_ratio=f"{err / max(err16, 1e-12):.3g}",
                    max_abs_dx=f"{float((res.images - self.ref[B]).abs().max()):.2e}",
                    notes=f"displacement {moved:.4g}")

    def profile(self, graph_key: str, settings: OrtSettings, B: int, warm: int = 3, runs: int = 5) -> str:
        """ORT's per-op-type host times and the GPU kernels (CUPTI), CUDA graphs off; returns a text summary."""
        from torch.profiler import ProfilerActivity, profile

        self.references(B)
        settings = replace(settings, cuda_graph=False)
        tag = f"{graph_key}{'-nhwc' if settings.prefer_nhwc else ''}-b{B}"
        prefix = str(self.graph_dir / f"ortprof-{tag}")
        sess = create_session(self.ort, self.graph(graph_key), settings, self.dev_index, profile_prefix=prefix)
        call, binding = self.step_loop(sess, B)  # `call` holds the buffers the binding points into
        call()
        for _ in range(warm - 1):
            sess.run_with_iobinding(binding)
        sync()
        trace = self.graph_dir / f"trace-{tag}.json"
        t0 = time.perf_counter()
        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (self.dev_index is not None)
        with profile(activities=activities) as prof:
            for _ in range(runs):
                sess.run_with_iobinding(binding)
            sync()
        wall = (time.perf_counter() - t0) / runs
        prof.export_chrome_trace(str(trace))
        ort_file = sess.end_profiling()
        del sess, binding, call
        lines = [f"## profile {tag}: {graph_key} graph, {settings}, batch {B}, {runs} runs (CUDA graph off)",
                 f"wall per run (profiler on): {1e3 * wall:.3f} ms", ""]
        lines += _ort_op_summary(ort_file, skip=self.args.steps + warm, runs=runs)
        lines += [""] + _kernel_summary(trace, runs)
        return self.keep("\n".join(lines) + "\n")

    def optimized_model(self, graph_key: str, settings: OrtSettings, B: int) -> str:
        """Session time building the optimised graph vs loading a saved one; op counts of the optimised graph."""
        import onnx

        self.references(B)
        saved = self.graph_dir / f"optimized-{graph_key}.onnx"
        t0 = time.perf_counter()
        sess = create_session(self.ort, self.graph(graph_key), settings, self.dev_index, optimized_model=str(saved))
        t_build = time.perf_counter() - t0
        del sess
        m = onnx.load(str(saved), load_external_data=False)
        ops = collections.Counter(f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in m.graph.node)
        t0 = time.perf_counter()
        sess = create_session(self.ort, saved, replace(settings, opt_level="disabled"), self.dev_index)
        t_load = time.perf_counter() - t0
        call, _ = self.step_loop(sess, B)
        res = call()
        sync()
        err = float((res.images - self.ref[B]).norm())
        del sess
        text = (f"## saved optimised model: {graph_key} graph, {settings}\n"
                f"session with optimisation: {t_build:.2f} s; from the saved optimised model (opt disabled): "
                f"{t_load:.2f} s; one call from it: err vs ref32 {err:.4g}\n"
                f"optimised graph: {len(m.graph.node)} nodes: "
                + ", ".join(f"{k} {c}" for k, c in ops.most_common()) + "\n")
        return self.keep(text)


def _export_worker(key: str, arch: str, size: int, classes: int, path: str) -> str:
    dtype, layout = GRAPHS[key]
    export_step_graph(make_model(arch, size, classes, torch.device("cpu")), (size, size), path, dtype, layout=layout)
    return path


def _graph_sha(path: Path) -> str:
    return read_graph_metadata(path)["weights_sha256"]


class _Fp16Autocast(torch.nn.Module):
    """Plain PyTorch's fp16: the reference network under autocast, logits back to fp32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.float16):
            return self.model(x).float()


def _ort_op_summary(path: str, skip: int, runs: int) -> list[str]:
    """Node times per op type over the runs after the first `skip` (warm-up: algorithm search, first allocations)."""
    events = json.loads(Path(path).read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])
    start = model_runs[skip - 1]["ts"] + model_runs[skip - 1]["dur"] if len(model_runs) >= skip > 0 else 0
    per_op = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op][0] += e["dur"]
            per_op[op][1] += 1
    total = sum(v[0] for v in per_op.values())
    n_runs = max(1, len([r for r in model_runs if r["ts"] >= start]))
    lines = [f"ONNX Runtime profiler, per op type (host µs per run, node launches per run; {n_runs} runs):",
             f"  total {total / n_runs:.1f} µs, {sum(v[1] for v in per_op.values()) / n_runs:.0f} nodes"]
    for op, (dur, count) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        share = 100 * dur / max(total, 1e-9)
        lines.append(f"  {op:28s} {dur / n_runs:10.1f} µs {share:5.1f}%  {count / n_runs:6.1f} nodes")
    return lines


def _kernel_summary(trace: Path, runs: int) -> list[str]:
    events = json.loads(trace.read_text()).get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    by_kind = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in kernels:
        name = e.get("name", "?")
        kind = "memcpy/memset" if e["cat"] != "kernel" else next(
            (k for k, rx in KERNEL_KINDS if re.search(rx, name)), "other")
        by_kind[kind][0] += e["dur"]
        by_kind[kind][1] += 1
        by_name[name][0] += e["dur"]
        by_name[name][1] += 1
    total = sum(v[0] for v in by_kind.values())
    lines = [f"GPU kernels (CUPTI), per run: {total / runs:.1f} µs busy, {len(kernels) / runs:.0f} kernels"]
    for kind, (dur, count) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        share = 100 * dur / max(total, 1e-9)
        lines.append(f"  {kind:42s} {dur / runs:10.1f} µs {share:5.1f}%  {count / runs:6.1f} kernels")
    lines.append("top kernels by time (per run):")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]:
        lines.append(f"  {dur / runs:9.1f} µs {count / runs:5.1f}×  {name[:150]}")
    return lines


def versions(ort) -> str:
    import platform

    return (f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}); onnxruntime {ort.__version__} "
            f"({', '.join(ort.get_available_providers())})")


def _problem(notes) -> str:
    """A row's note when it says the row did not run or failed (the final table shows only those)."""
    return str(notes) if "not run" in str(notes) or "failed" in str(notes) else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for ort_variants.md/.csv and the profile summaries")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=300.0, help="start no new variant after this many seconds")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--variants", default="", help="comma-separated variant names to run (default: all)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--profiles", default="", help="comma list of graphs to profile (default all of "
                   + ", ".join(k for k, _ in PROFILES) + ")")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke test of this script only")
    args = p.parse_args(argv)
    wanted = [k.strip() for k in args.profiles.split(",") if k.strip()]
    unknown = sorted(set(wanted) - {k for k, _ in PROFILES})
    if unknown:
        print(f"ort_variants: --profiles: unknown {', '.join(unknown)}; choose from "
              f"{', '.join(k for k, _ in PROFILES)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: ort_variants.py measures the CUDA provider and needs a CUDA GPU (--device cpu: smoke test)",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.allow_tf32 = False  # the reference is fp32 through and through
    torch.backends.cuda.matmul.allow_tf32 = False
    bench = Bench(args, out)
    batches = [int(b) for b in args.batches.split(",")]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test)"
    header = (f"card: **{card}**; {versions(bench.ort)}; {time.strftime('%Y-%m-%d %H:%M')}\n\n"
              f"{args.arch} {args.size}×{args.size}, {args.classes} classes, Eq. 12, α=0.1, ε=1.5, no early stop, "
              f"T={args.steps}; ms/step = engine-loop call / T (median of {args.reps}); step_only_ms = one "
              "run_with_iobinding; err = ‖x_T − x_ref32‖ (fp32 reference engine, TF32 off); err_torch_fp16 = plain "
              "PyTorch fp16 autocast's; err_ratio = err / err_torch_fp16.")
    report = Report(out, header)
    chosen = [v for v in VARIANTS if not args.variants or v.name in args.variants.split(",")]
    profiles = [] if args.no_profile else [(k, st) for k, st in PROFILES if not wanted or k in wanted]
    bench.export_all([v.graph for v in chosen] + [k for k, _ in profiles])
    for key, settings in profiles:
        for B in batches:
            try:
                print(bench.profile(key, settings, B), flush=True)
            except Exception:
                traceback.print_exc()
    for v in chosen:
        for B in batches:
            if time.perf_counter() - t_start > args.budget_s:
                report.add(variant=v.name, graph=v.graph, batch=B, notes="not run: time budget")
                continue
            try:
                report.add(**bench.measure(v, B))
            except Exception as exc:
                traceback.print_exc()
                report.add(variant=v.name, graph=v.graph, batch=B, notes=f"failed: {type(exc).__name__}: {exc}"[:300])
    if time.perf_counter() - t_start < args.budget_s + 30:
        try:
            print(bench.optimized_model("fp16", replace(BASE, conv_algo="heuristic"), batches[-1]), flush=True)
        except Exception:
            traceback.print_exc()
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    print("\nvariant | batch | ms/step | img-steps/s | step-only ms | setup s | err ratio vs torch fp16")
    for r in report.rows:
        print(f"{r['variant']} | {r['batch']} | {r['ms_per_step']} | {r['image_steps_per_s']} | {r['step_only_ms']} | "
              f"{r['setup_s']} | {r['err_ratio']} {_problem(r['notes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
