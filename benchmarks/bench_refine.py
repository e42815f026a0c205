"""Refinement-step throughput and memory, every contender side by side in one run on one GPU (issues 5, 12, 15).

    python benchmarks/bench_refine.py --out OUT --arch resnet50,wide_resnet50_2 --batches 256,1,16 --early-stop 0

Section 1, for each --arch (at --size×--size; random weights, BatchNorm statistics calibrated on the inputs:
timing does not depend on the weights) and each batch B: paper objective (Eq. 12), α=0.1, ε=1.5, early
stopping off, T=--steps steps per timed call. Contenders (--methods):
    torchattacks         PGDL2, fp32 eager, the attack library users have (CE loss; same network work per
                         step); only if torchattacks is installed
    reference            `--engine torch`: fp32 eager (the engine turns TF32 off), T+1 forwards for T steps
    compile-graph        THE BASELINE, the best plain-PyTorch recipe a user would write: the model with BN
                         folded as the triton engine folds it (ccfast.bn_fold), cast to bf16, channels_last;
                         one step = torch.func.grad + torch.compile (Inductor default mode, static shapes,
                         compiled per (arch, batch)), captured in a CUDA graph. Every x_vs_recipe is against it
    compile-graph-nchw   the same recipe without channels_last (an extra row, labelled NCHW; --nchw-batches)
    eager-graph          the recipe without torch.compile (eager step in a CUDA graph); off by default
    triton               `--engine triton` (--triton-options): whole refine_batch, and its T-step graph replay
    triton-eager         the triton engine with compile=0; off by default
    triton-fused         the triton engine with fused_net=1 (the bottleneck ResNet's forward and input gradient
                         from the fused blocks, no autograd; ccfast/refine/fused_net.py); other archs: a row
                         saying why
    triton-cudnn         the triton engine with fused_net=1 fused_ops=cudnn (each convolution one cuDNN graph
                         with its epilogue: kernels/cudnn_conv.py); a row saying why without nvidia-cudnn-frontend
    ort                  `--engine ort`, one row per --ort-variant NAME:KEY=V,... (engine options, forwarded)
    trt                  `--engine trt` where a TensorRT runtime runs on this GPU (else a row saying why)
Each row: median over --reps timed calls after --warmup calls (the input batch rotates over 3 sets between
calls, loaded outside the timed region); graph replays are timed with CUDA events, whole engine calls with
synchronised wall time. ms_per_step = call time / T; image_steps_per_s = B / (s per step). Memory: peak_mib
is the peak of PyTorch's allocator during the row's set-up and calls above what was allocated when the row
began (ort/trt rows: growth of device memory in use, cudaMemGetInfo, which sees their own allocators);
growth_mib is memory after the last timed call minus after call 2 (0 = repeated calls do not grow it).
max_abs_dx: largest |x − x_reference| after the same T steps on input set 0 (engine rows).

Section 2 (--early-stop 1, needs --data): early stopping on real images: CIFAR-10 test images and the
pretrained CIFAR ResNet-56, `paper` preset; useful image-steps/s of the reference engine and the triton engine
with and without compaction.

Writes OUT/bench_refine.csv and OUT/bench_refine.md after every row (atomic), so a run cut short keeps what
it measured, and prints a short table at the end. `--budget-s` skips what would start after that many s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    MIB,
    InputPool,
    MemoryMeter,
    Report,
    capture,
    parse_engine_options,
    parse_int_list,
    parse_variants,
    run_metadata,
    sync,
    time_calls,
)
from ccfast.bn_fold import fold_batchnorm  # noqa: E402
from ccfast.config import RefineConfig  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.models import build_model, load_backbone_weights  # noqa: E402
from ccfast.objectives import HeadParams, objective_ref  # noqa: E402
from ccfast.pgd import pgd_step_ref  # noqa: E402
from ccfast.refine.base import ResolvedScalars  # noqa: E402

FIELDS = ["section", "method", "batch", "dtype", "ms_per_step", "image_steps_per_s", "x_vs_recipe",
          "x_vs_torchattacks", "peak_mib", "growth_mib", "max_abs_dx", "setup_s", "notes"]
SHORT = ["section", "method", "batch", "dtype", "ms_per_step", "image_steps_per_s", "x_vs_recipe", "peak_mib",
         "growth_mib"]
BASELINE = "recipe: compile+graph, channels_last"
TORCHATTACKS = "torchattacks PGDL2"
DEFAULT_METHODS = "torchattacks,reference,compile-graph,compile-graph-nchw,triton,triton-fused,triton-cudnn,ort,trt"
ALL_METHODS = ("torchattacks", "reference", "compile-graph", "compile-graph-nchw", "eager-graph", "triton",
               "triton-eager", "triton-fused", "triton-cudnn", "ort", "trt")
DEFAULT_ORT_VARIANTS = ["fp32", "fp16:dtype=fp16"]
ALPHA, EPS = 0.1, 1.5


# ---------------------------------------------------------------- what a contender hands the driver


@dataclass
class Timed:
    """One row's timed thing: `call()` does `steps` refinement steps on the input set `load(i)` put in place."""

    method: str
    dtype: str
    call: Callable[[], object]
    load: Callable[[int], None]
    steps: int
    clock: str = "wall"  # "event" for graph replays (GPU time), "wall" for whole engine calls
    notes: str = ""


@dataclass
class Bench:
    """What every contender's set-up needs for one architecture; engines live here across batch sizes."""

    arch: str
    model: torch.nn.Module  # fp32, eval, BN calibrated, on the device
    device: torch.device
    args: argparse.Namespace
    head: HeadParams = field(default_factory=lambda: HeadParams(ell0=2.0))
    engines: dict = field(default_factory=dict)
    _lowp: dict = field(default_factory=dict)

    @property
    def config(self) -> RefineConfig:
        return RefineConfig(steps=self.args.steps, alpha=ALPHA, eps=EPS, early_stop="none")

    @property
    def scalars(self) -> ResolvedScalars:
        return ResolvedScalars(tau=None, head=self.head)

    def recipe_network(self, channels_last: bool) -> torch.nn.Module:
        """The plain-PyTorch recipe's network: BN folded (the engine's function), then bf16 weights."""
        if channels_last not in self._lowp:
            net, status = fold_batchnorm(copy.deepcopy(self.model).eval())
            if status != "on":
                raise CCFastError(f"BN folding failed for {self.arch}: {status}")
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self._lowp[channels_last] = net.to(torch.bfloat16).to(memory_format=fmt).requires_grad_(False)
        return self._lowp[channels_last]


def engine_call(eng, pool: InputPool) -> tuple[Callable, Callable]:
    """(call, load) for an engine's refine_batch on the pool's rotating input sets."""
    current = {}
    idx = torch.arange(pool.batch)

    def load(i):
        current["x0"], current["labels"] = pool.get(i)

    def call():
        return eng.refine_batch(current["x0"], current["labels"], idx)

    return call, load


# ---------------------------------------------------------------- the contenders: one set-up function each


def setup_torchattacks(b: Bench, pool: InputPool) -> list[Timed]:
    import torchattacks

    atk = torchattacks.PGDL2(b.model, eps=EPS, alpha=ALPHA, steps=b.args.steps, random_start=False)
    current = {}

    def load(i):
        current["x0"], current["labels"] = pool.get(i)

    return [Timed(TORCHATTACKS, "fp32", lambda: atk(current["x0"], current["labels"]), load, b.args.steps,
                  notes=f"torchattacks {torchattacks.__version__}, CE loss, no random start, PyTorch default "
                        "flags (cuDNN TF32 on)")]


def setup_reference(b: Bench, pool: InputPool) -> list[Timed]:
    from ccfast.refine.torch_engine import TorchEngine

    call, load = engine_call(TorchEngine(b.model, b.config, b.scalars, b.device), pool)
    return [Timed("reference engine", "fp32", call, load, b.args.steps, notes="--engine torch, fp32 eager (TF32 "
                  "off), T+1 forwards for T steps")]


def _recipe(b: Bench, pool: InputPool, channels_last: bool, compiled: bool) -> list[Timed]:
    """One step of the recipe on static buffers, captured in a CUDA graph; a call = T replays."""
    net, dev = b.recipe_network(channels_last), b.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0_static, labels = pool.get(0)
    x0_static = x0_static.clone().contiguous(memory_format=fmt)
    x, labels = x0_static.clone(), labels.clone()
    active = torch.ones(pool.batch, dtype=torch.bool, device=dev)
    head = b.head

    def loss(xi):
        return objective_ref(net(xi.to(torch.bfloat16)).float(), labels, head)[0].sum()

    def step(xi):
        return pgd_step_ref(xi, torch.func.grad(loss)(xi), x0_static, active, ALPHA, EPS)

    fn = torch.compile(step, dynamic=False) if compiled and b.args.recipe_compile else step
    x.copy_(fn(x))  # compiles here (set-up), outside the graph
    replay = capture(lambda: x.copy_(fn(x)), dev)

    def load(i):
        xs, ls = pool.get(i)
        x.copy_(xs)
        x0_static.copy_(xs)
        labels.copy_(ls)

    def call():
        for _ in range(b.args.steps):
            replay()

    layout = "channels_last" if channels_last else "NCHW"
    kind = "compile+graph" if compiled else "eager+graph"
    method = f"recipe: {kind}, {layout}" + ("" if channels_last else " (extra row)")
    how = ("torch.func.grad + torch.compile (Inductor default, static shapes)" if fn is not step
           else "torch.func.grad, eager")
    return [Timed(method, "bf16", call, load, b.args.steps, clock="event",
                  notes=f"BN folded (ccfast.bn_fold), model.to(bf16), {layout}, {how}, one step per CUDA graph "
                        "replay; setup = compile + capture")]


def setup_compile_graph(b, pool):
    return _recipe(b, pool, channels_last=True, compiled=True)


def setup_compile_graph_nchw(b, pool):
    return _recipe(b, pool, channels_last=False, compiled=True)


def setup_eager_graph(b, pool):
    return _recipe(b, pool, channels_last=True, compiled=False)


def _triton(b: Bench, pool: InputPool, key: str, label: str, options: dict) -> list[Timed]:
    from ccfast.refine.triton_engine import TritonEngine

    if key not in b.engines:  # one engine for every batch size: one compile, each size only captures
        b.engines[key] = TritonEngine(b.model, b.config, b.scalars, b.device, **options)
    eng = b.engines[key]
    call, load = engine_call(eng, pool)
    load(0)
    call()  # first call at this size: compile (first size only), warm-up, capture
    t = eng.timings()
    bucket = eng._buckets[eng._bucket_size(pool.batch, initial=True)]
    opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
    # Before capturing graphs the engine times its first warm-up step as compile_s, compiled or not (with
    # compile=0 that is Triton JIT, autotuning, cuDNN plans), so the note says which it was.
    if eng.opts.compile:
        first = f"compile {t['compile_s']:.1f}s once per engine"
    elif eng.opts.graphs:
        first = f"first warm-up step (no compile) {t['compile_s']:.1f}s once per engine"
    else:
        first = "no compile"
    extra = ""
    if eng.opts.fused_net and eng.opts.fused_ops == "cudnn":  # which rung of cudnn_conv's ladder the graphs took
        from ccfast.kernels.cudnn_conv import fusion_summary

        extra = "; cuDNN graphs: " + fusion_summary()
    rows = [Timed(label, eng.opts.dtype, call, load, b.args.steps,
                  notes=f"{opts}; refine_batch wall / T (includes the final forward and host work), bucket "
                        f"{bucket.size}; {first}; fold_bn {t['fold_bn']}{extra}")]
    if eng.opts.graphs:
        graph = bucket.graphs[(eng._K, True)]

        def load_bucket(i):
            bucket.load(*pool.get(i))

        rows.append(Timed(f"{label}, graph replay only", eng.opts.dtype, graph.replay, load_bucket, eng._K,
                          clock="event", notes=f"one {eng._K}-step graph replay (no final forward, no host work)"))
    return rows


def setup_triton(b, pool):
    return _triton(b, pool, "triton", "triton engine", b.args.topts)


def setup_triton_eager(b, pool):
    return _triton(b, pool, "triton-eager", "triton engine, compile=0", b.args.topts | {"compile": "0"})


def _needs_fused_network(b) -> None:
    """NotRun, saying why, unless the model is the bottleneck ResNet the fused network supports."""
    from ccfast.fused_resnet import check_supported

    try:
        check_supported(b.model)
    except CCFastError as exc:
        raise NotRun(str(exc)) from None


def setup_triton_fused(b, pool):
    _needs_fused_network(b)
    return _triton(b, pool, "triton-fused", "triton engine, fused_net=1", b.args.topts | {"fused_net": "1"})


def setup_triton_cudnn(b, pool):
    if b.device.type != "cuda":
        raise NotRun("fused_ops=cudnn needs a CUDA device (cuDNN graphs)")
    _needs_fused_network(b)
    try:
        import cudnn  # noqa: F401 - nvidia-cudnn-frontend, optional
    except ImportError as exc:
        raise NotRun(str(exc)) from None
    return _triton(b, pool, "triton-cudnn", "triton engine, fused_net=1 fused_ops=cudnn",
                   b.args.topts | {"fused_net": "1", "fused_ops": "cudnn"})


def setup_ort_variant(name: str, options: dict) -> Callable[[Bench, InputPool], list[Timed]]:
    def setup(b: Bench, pool: InputPool) -> list[Timed]:
        from ccfast.refine.ort_engine import OrtEngine

        key = f"ort:{name}"
        if key not in b.engines:
            opts = dict(options)
            if b.device.type == "cuda":
                opts.setdefault("buckets", ",".join(map(str, b.args.batch_list)))
            b.engines[key] = OrtEngine(b.model, b.config, b.scalars, b.device, **opts)
        eng = b.engines[key]
        call, load = engine_call(eng, pool)
        load(0)
        call()  # first call at this size: (export on first use), session, IOBinding, graph capture
        dtype = options.get("precision", options.get("dtype", "fp32"))
        opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        return [Timed(f"ort engine, {name}", dtype, call, load, b.args.steps,
                      notes=f"--engine ort {opts}; CUDA graphs in use: {bool(eng.timings().get('cuda_graph'))}; "
                            "T+1 graph calls; setup includes the export on first use")]

    return setup


def setup_trt(b: Bench, pool: InputPool) -> list[Timed]:
    from ccfast.refine.trt_engine import TrtEngine

    status = TrtEngine.availability()
    if status != "ok":
        raise NotRun(status)
    if "trt" not in b.engines:
        opts = {"buckets": ",".join(map(str, b.args.batch_list))} | b.args.trt_opts
        b.engines["trt"] = TrtEngine(b.model, b.config, b.scalars, b.device, **opts)
    eng = b.engines["trt"]
    call, load = engine_call(eng, pool)
    load(0)
    call()
    return [Timed("trt engine", b.args.trt_opts.get("dtype", "fp32"), call, load, b.args.steps,
                  notes=getattr(eng, "runtime_name", "trt"))]


class NotRun(Exception):
    """A contender that cannot run here (its runtime is missing): a row that says why, not a failure."""


SETUPS = {"torchattacks": setup_torchattacks, "reference": setup_reference, "compile-graph": setup_compile_graph,
          "compile-graph-nchw": setup_compile_graph_nchw, "eager-graph": setup_eager_graph,
          "triton": setup_triton, "triton-eager": setup_triton_eager, "triton-fused": setup_triton_fused,
          "triton-cudnn": setup_triton_cudnn, "trt": setup_trt}
LABELS = {"torchattacks": TORCHATTACKS, "reference": "reference engine", "compile-graph": BASELINE,
          "compile-graph-nchw": "recipe: compile+graph, NCHW (extra row)",
          "eager-graph": "recipe: eager+graph, channels_last", "triton": "triton engine",
          "triton-eager": "triton engine, compile=0", "triton-fused": "triton engine, fused_net=1",
          "triton-cudnn": "triton engine, fused_net=1 fused_ops=cudnn", "trt": "trt engine"}
MEMORY_COUNTER = {"ort": "device", "trt": "device"}  # their allocators are not PyTorch's


# ---------------------------------------------------------------- the driver


class Runner:
    def __init__(self, report: Report, args, device):
        self.report, self.args, self.device = report, args, device
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def budget_ok(self, what: str) -> bool:
        if self.elapsed() > self.args.budget_s:
            print(f"skipped (time budget {self.args.budget_s:.0f}s): {what}", flush=True)
            return False
        return True

    def contender(self, b: Bench, pool: InputPool, key: str, label: str, setup, ref_images: dict) -> None:
        common = {"section": b.arch, "batch": pool.batch}
        if not self.budget_ok(f"{b.arch} {label} B={pool.batch}"):
            self.report.add(method=label, notes="skipped: time budget", **common)
            return
        print(f"[{self.elapsed():6.1f}s] {b.arch} B={pool.batch}: {label} ...", flush=True)
        meter = MemoryMeter(self.device, MEMORY_COUNTER.get(key.split(":")[0], "torch"))
        meter.begin()
        t0 = time.perf_counter()
        try:
            runs = setup(b, pool)
            sync(self.device)
            setup_s: float | None = time.perf_counter() - t0  # reported on the contender's first row only
            for run in runs:
                timing = time_calls(run.call, self.device, warmup=self.args.warmup, reps=self.args.reps,
                                    before=run.load, clock=run.clock, probe=meter.read)
                per_step = timing.median_s / run.steps
                growth = timing.growth_bytes(2)
                dx = self._dx(run, key, ref_images, pool.batch)
                self.report.add(method=run.method, dtype=run.dtype, ms_per_step=round(per_step * 1e3, 4),
                                image_steps_per_s=round(pool.batch / per_step, 1),
                                peak_mib=round(meter.peak_above_start() / MIB, 1),
                                growth_mib="" if growth is None else round(growth / MIB, 2), max_abs_dx=dx,
                                setup_s="" if setup_s is None else round(setup_s, 2),
                                notes=f"{run.notes}; memory counter {meter.counter}", **common)
                setup_s = None
        except NotRun as why:
            self.report.add(method=label, notes=f"not run: {why}"[:300], **common)
        except Exception as exc:  # noqa: BLE001 - a failed contender is a row saying so, not a lost run
            traceback.print_exc()
            self.report.add(method=label, notes=f"FAILED: {type(exc).__name__}: {exc}"[:300], **common)

    def _dx(self, run: Timed, key: str, ref_images: dict, batch: int):
        """Largest |Δx| from the reference engine's images on input set 0, for rows that return images."""
        run.load(0)
        out = run.call()
        images = getattr(out, "images", None)
        if images is None:
            return ""
        if key == "reference":
            ref_images[batch] = images.detach().clone()
            return ""
        ref = ref_images.get(batch)
        return f"{(images.float() - ref).abs().max().item():.2e}" if ref is not None else ""

    def run_arch(self, arch: str, contenders: list[tuple[str, str, Callable]]) -> None:
        args, device = self.args, self.device
        print(f"[{self.elapsed():6.1f}s] {arch}: building the model", flush=True)
        b = Bench(arch, make_model(arch, args.size, args.num_classes, device), device, args)
        for B in args.batch_list:
            pool = InputPool(B, args.size, args.num_classes, device, n_sets=3, seed=B)
            ref_images: dict = {}
            for key, label, setup in contenders:
                if key == "compile-graph-nchw" and args.nchw_batches != "all" and B not in args.nchw_batch_list:
                    continue
                self.contender(b, pool, key, label, setup, ref_images)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        b.engines.clear()
        del b
        torch._dynamo.reset()  # the next architecture compiles afresh; this one's graphs are not kept
        if device.type == "cuda":
            torch.cuda.empty_cache()


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


def make_model(arch: str, size: int, num_classes: int, device) -> torch.nn.Module:
    from benchmarks.harness import make_inputs

    torch.manual_seed(0)
    model = build_model(arch, num_classes).to(device)
    calib_x, _ = make_inputs(64, size, num_classes, device, seed=123)
    return calibrate_bn(model, calib_x).requires_grad_(False)


def contender_list(args) -> list[tuple[str, str, Callable]]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise CCFastError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    out = []
    for m in methods:
        if m == "ort":
            out += [(f"ort:{name}", f"ort engine, {name}", setup_ort_variant(name, opts)) for name, opts in
                    args.ort_variant_list]
        elif m == "torchattacks" and not _importable("torchattacks"):
            print("torchattacks is not installed: its rows are left out", flush=True)
        else:
            out.append((m, LABELS[m], SETUPS[m]))
    return out


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- section 2: early stopping on real images


def load_cifar(data_dir: Path, n: int, device):
    path = data_dir / "cifar10_test.npz"
    if not path.exists():
        path = data_dir / "cifar10" / "test.npz"
    d = np.load(path)
    images = torch.from_numpy(d["images"][:n]).permute(0, 3, 1, 2).float().div(255.0)
    return images.to(device), torch.from_numpy(d["labels"][:n]).long().to(device)


def early_stop_section(runner: Runner) -> None:
    """Useful image-steps/s with early stopping. Two image sets: the real test images as they are (about half
    already at least as real as τ = ℓ0, their mean), and the same images with Gaussian noise (σ=0.1), a
    stand-in for generated samples that start below τ and stop at different steps."""
    from ccfast.checkpoint import estimate_ell0
    from ccfast.refine.torch_engine import TorchEngine
    from ccfast.refine.triton_engine import TritonEngine

    args, device, report = runner.args, runner.device, runner.report
    data_dir = Path(args.data)
    weights = data_dir / "resnet56-4bfd9763.th"
    if not weights.exists():
        weights = data_dir / "models" / "resnet56-4bfd9763.th"
    model = build_model("cifar_resnet56", 10)
    load_backbone_weights(model.backbone, weights, arch="cifar_resnet56")
    model = model.to(device).eval().requires_grad_(False)
    n_ell0, n = 1024, args.es_images
    images, labels = load_cifar(data_dir, n_ell0 + n, device)
    ell0 = estimate_ell0(model, images[:n_ell0], labels[:n_ell0])
    x_all, y_all = images[n_ell0:], labels[n_ell0:]
    noise = torch.randn(x_all.shape, generator=torch.Generator().manual_seed(0)).to(device)
    image_sets = {"real": x_all, "real + noise σ=0.1": (x_all + 0.1 * noise).clamp(0, 1)}
    cfg = RefineConfig.from_preset("paper")
    scalars = ResolvedScalars(tau=ell0, head=HeadParams(ell0=ell0))
    B = 256
    es_opts = {"compile": args.es_compile} | args.topts
    tag = f"bf16, compile={es_opts.get('compile')}"

    def triton(every):
        return lambda: TritonEngine(model, cfg, scalars, device, **(es_opts | {"compact_every": every}))

    contenders = [("reference engine", "fp32", lambda: TorchEngine(model, cfg, scalars, device)),
                  ("triton, no compaction", tag, triton(cfg.steps)),
                  ("triton, compaction every 5", tag, triton(5)),
                  ("triton, compaction every 2", tag, triton(2))]
    for name, dtype, make in contenders:
        if not runner.budget_ok(f"early stop: {name}"):
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
            report.add(section="early-stop", method=name, batch=B, dtype=dtype,
                       notes=f"FAILED: {type(exc).__name__}: {exc}"[:300])
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for the report (REPORT_NAME.csv/.md)")
    p.add_argument("--report-name", default="bench_refine", help="file stem of the report (default bench_refine)")
    p.add_argument("--arch", default="resnet50,wide_resnet50_2", help="backbones, comma list (run in this order)")
    p.add_argument("--batches", default="256,1,16", help="batch sizes, in the order to run them (default 256,1,16: "
                   "the triton engine compiles once, at the first size, so Inductor's size hints are B=256's)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed call (T)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per row (default 2)")
    p.add_argument("--reps", type=int, default=8, help="timed calls per row, median reported (default 8)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"contenders, comma list of {', '.join(ALL_METHODS)}")
    p.add_argument("--ort-variant", action="append", default=None, metavar="NAME[:KEY=V,...]",
                   help="an ort engine row per variant, its engine options forwarded as given (repeatable; "
                        f"default {' '.join(DEFAULT_ORT_VARIANTS)})")
    p.add_argument("--nchw-batches", default="256", help="batches for the NCHW recipe row ('all' for every batch)")
    p.add_argument("--recipe-compile", type=int, default=1, help="0: the recipes run eagerly (CPU smoke runs)")
    p.add_argument("--triton-options", default="", help="triton engine options, KEY=VALUE comma list (e.g. for a "
                   "CPU smoke run: graphs=0,compile=0,dtype=fp32)")
    p.add_argument("--trt-options", default="", help="trt engine options, KEY=VALUE comma list")
    p.add_argument("--extras", default="", help="triton engine variants run last on the first arch, "
                   "'B:KEY=V,KEY=V;B:...' (e.g. 256:pad_channels=0,cast_weights=0)")
    p.add_argument("--early-stop", type=int, default=1, help="run section 2 (needs --data)")
    p.add_argument("--es-images", type=int, default=1024)
    p.add_argument("--es-compile", default="1", help="compile option of the triton engine in section 2")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with cifar10_test.npz (or cifar10/test.npz) and resnet56-4bfd9763.th (or models/...)")
    p.add_argument("--profile", type=int, default=0, help="1: a kernel-level profile of one triton step per batch")
    p.add_argument("--profile-options", default="",
                   help="triton engine options of the profiled engine, added to --triton-options (e.g. "
                        "fused_net=1,fused_ops=cudnn to profile the cuDNN-graph network)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip contenders that would start after this many s")
    p.add_argument("--commit", default=None, help="commit to report (default: CCFAST_COMMIT, else git)")
    args = p.parse_args(argv)
    args.batch_list = parse_int_list(args.batches, "--batches")
    args.nchw_batch_list = [] if args.nchw_batches == "all" else parse_int_list(args.nchw_batches, "--nchw-batches")
    args.arch_list = [a.strip() for a in args.arch.split(",") if a.strip()]
    args.topts = parse_engine_options(args.triton_options, "--triton-options")
    args.trt_opts = parse_engine_options(args.trt_options, "--trt-options")
    args.profile_opts = parse_engine_options(args.profile_options, "--profile-options")
    args.ort_variant_list = parse_variants(args.ort_variant or DEFAULT_ORT_VARIANTS)
    args.extra_list = []
    for spec in (e for e in args.extras.split(";") if e.strip()):
        b_text, _, opts = spec.partition(":")
        args.extra_list.append((parse_int_list(b_text, "--extras batch")[0], opts,
                                parse_engine_options(opts, "--extras")))
    if args.steps < 1 or args.reps < 1 or args.warmup < 0:
        raise CCFastError("--steps and --reps must be ≥ 1, --warmup ≥ 0")
    return args


def profile_engine_step(eng, batch: int, device, steps: int = 3) -> str:
    """Kernel-level breakdown of one triton engine step, run eagerly (outside the graph) so the profiler sees
    every kernel: count, GPU busy time, and the top kernels by time."""
    if device.type != "cuda":
        return "(no GPU)"
    from torch.profiler import ProfilerActivity, profile

    bucket = eng._buckets[eng._bucket_size(batch, initial=True)]
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
        ms = sum(ts) / steps / 1e3
        lines.append(f"| `{name[:90]}` | {len(ts) / steps:.0f} | {ms:.3f} | {ms / busy:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except CCFastError as exc:
        print(f"bench_refine: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_refine: --device cuda but no CUDA GPU is visible (use --device cpu for a smoke run)",
              file=sys.stderr)
        return 2
    dynamo = torch._dynamo.config  # one compiled step per (arch, batch, layout): more than the default 8 entries
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(64, getattr(dynamo, name)))
    meta = run_metadata(device, args.commit) | {
        "setup": (f"{', '.join(args.arch_list)} at {args.size}×{args.size}, {args.num_classes} classes, random weights "
                  f"(BN calibrated); paper objective (Eq. 12), α={ALPHA}, ε={EPS}, early stopping off in section 1; "
                  f"T={args.steps} steps per call, {args.warmup} warm-up + {args.reps} timed calls per row (median), "
                  f"3 input sets rotated; batches {args.batches}"),
        "dtype": ("bf16: recipes = BN-folded model.to(bf16); triton = autocast over bf16 weights. fp32: torchattacks "
                  "(PyTorch defaults, TF32 on), reference (TF32 off), ort fp32 (TF32 off unless its options say)"),
        "baseline": f"x_vs_recipe = image-steps/s over '{BASELINE}' of the same arch and batch, same run",
    }
    report = Report(Path(args.out), args.report_name, FIELDS, meta, short=SHORT,
                    ratios={"x_vs_recipe": BASELINE, "x_vs_torchattacks": TORCHATTACKS})
    runner = Runner(report, args, device)
    try:
        contenders = contender_list(args)
    except CCFastError as exc:
        print(f"bench_refine: {exc}", file=sys.stderr)
        return 2
    for arch in args.arch_list:
        runner.run_arch(arch, contenders)
        if args.profile and device.type == "cuda":
            report.extra.update(profile_section(runner, arch))
    if args.extra_list:
        b = Bench(args.arch_list[0], make_model(args.arch_list[0], args.size, args.num_classes, device), device, args)
        for B, opts_text, opts in args.extra_list:
            pool = InputPool(B, args.size, args.num_classes, device, n_sets=3, seed=B)
            key = f"triton-extra:{opts_text}"
            runner.contender(b, pool, key, f"triton engine, {opts_text}",
                             lambda bb, pp, k=key, o=opts, t=opts_text: _triton(bb, pp, k, f"triton engine, {t}",
                                                                                args.topts | o), {})
    if args.early_stop:
        if Path(args.data).exists():
            early_stop_section(runner)
        else:
            print(f"section 2 skipped: no data folder {args.data}", flush=True)
    argv_text = json.dumps(sys.argv[1:] if argv is None else argv)
    report.extra["run"] = f"total wall {runner.elapsed():.0f}s; argv {argv_text}"
    report.write()
    print(f"\nwrote {report.out / report.stem}.md and .csv ({runner.elapsed():.0f}s)\n", flush=True)
    print(report.short_table(), flush=True)
    return 0


def profile_section(runner: Runner, arch: str) -> dict[str, str]:
    """Kernel profiles of the triton engine's step at each batch (an engine of its own, built for it, with
    --triton-options and --profile-options)."""
    args, device = runner.args, runner.device
    b = Bench(arch, make_model(arch, args.size, args.num_classes, device), device, args)
    opts = args.topts | args.profile_opts
    named = " ".join(f"{k}={v}" for k, v in args.profile_opts.items())
    label = f"triton engine, {named}" if named else "triton engine"
    out = {}
    try:
        for B in args.batch_list:
            pool = InputPool(B, args.size, args.num_classes, device, n_sets=1, seed=B)
            _triton(b, pool, "triton-profiled", label, opts)
            out[f"profile: {label}, {arch}, batch {B}"] = profile_engine_step(b.engines["triton-profiled"], B, device)
    except Exception as exc:  # noqa: BLE001 - the profile explains; its failure must not cost the timing rows
        out[f"profile: {label}, {arch}"] = f"profile failed: {type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    sys.exit(main())
