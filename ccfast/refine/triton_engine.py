"""`--engine triton`: the fused fast path — the network compiled, two Triton kernels, the step loop in CUDA graphs.

Same function as the reference engine (`torch_engine.py`, SPEC §4), computed differently:

    per step t = 0..T:  logits = f(x)                      (Inductor-compiled or eager; channels_last;
                                                            bf16/fp16 autocast or fp32, TF32 on/off)
                        J, ℓ_fake, dJ/dlogits, active ← objective_head(...)     one kernel (kernels/)
                        if t == T: stop
                        g = ∇_x J  (the network's input-gradient backward, seeded with dJ/dlogits)
                        x ← pgd_step(x, g, x0, active) in place, steps += active  one kernel (kernels/)

The loop runs on static per-bucket buffers; each run of K steps (`compact_every`) is one CUDA graph replay,
and there is no host synchronisation inside a graph: stop decisions live in a device mask. Between graphs
the host reads how many images are still active and, once they fit the next smaller bucket, gathers them
into it and goes on with that bucket's graphs (early stopping saves compute, not only pixels); it stops
when none is active. Stopped images leave with their statistics at that moment, which equal the
reference's: their x is frozen, so every later forward of the reference gives the same J and ℓ_fake.

Compile and capture happen once per engine and bucket (warm-up, capture, then replays), and `timings()`
reports their cost apart from the steady state. BatchNorm is folded into the preceding convolutions
(`fold_bn`), which changes fp32 rounding only (~1e-7 relative). In bf16/fp16 the weights are cast once
(`cast_weights`; autocast then only casts activations, instead of every weight at every step), and a first
convolution over 3 channels is zero-padded to 8 (`pad_channels`): cuDNN's NHWC tensor-core kernels need
C % 8 == 0, and with 3 channels its input-gradient kernel alone took 9% of a ResNet-50 step (profile in
benchmarks/results). Neither changes the function computed.

PGD only (`Engine.methods`): SGLD draws its noise per example on the CPU (so results do not depend on
batching), which a CUDA graph cannot replay; `ccfast.Refiner` runs it on the reference engine (`make_engine`).

Options (`--engine-option KEY=VALUE`, or keyword arguments of `Refiner`; parsed by refine/options.py):
    dtype=bf16|fp16|fp32   network precision (autocast); default bf16 on CUDA, fp32 on CPU
    tf32=0|1               TF32 convolutions/matmuls when dtype=fp32 (default 0: exact fp32)
    compile=0|1            Inductor-compile forward + head + backward (default 1 on CUDA; 0 and refused with
                           fused_net=1)
    graphs=0|1             capture the step loop in CUDA graphs (default 1; CUDA only)
    channels_last=0|1      NHWC activations (default 1)
    fold_bn=0|1            fold eval-mode BatchNorm into convolutions (default 1)
    cast_weights=0|1       bf16/fp16: keep the network's weights in that dtype (default 1)
    pad_channels=0|1       bf16/fp16: zero-pad convolutions over < 8 input channels to 8 (default 1)
    compact_every=K        steps per graph between early-stop compactions (default 5)
    buckets=auto|N,N,...   batch sizes with their own graphs; auto: the batch's size, then powers of two
    min_bucket=N           smallest bucket (default 2 with compile: size 1 would compile a second graph)
    compile_mode=MODE      torch.compile mode (default "default")
    fused_net=0|1          1: the network's forward and input gradient without autograd, from the fused bottleneck
                           blocks (refine/fused_net.py; ReLU masks and the max-pool's window offsets saved, no
                           activation); bottleneck ResNets only (resnet50, wide_resnet50_2), else a one-line
                           error; BatchNorm always folded, weights always cast, never compiled; default 0. Measured
                           slower than the default path (H200, ResNet-50 64×64 bf16: 0.69× the compile+graph
                           recipe at B=256, benchmarks/results/bench_refine_h200_1bdda65_fused.md)
    fused_ops=triton|cudnn with fused_net=1: whose blocks. triton (default): kernels/bottleneck.py, bit masks saved;
                           cudnn: every convolution one cuDNN graph with its epilogue fused (kernels/cudnn_conv.py,
                           needs nvidia-cudnn-frontend and a CUDA device; ReLU outputs saved; H200: 0.99×
                           the recipe at B=256, benchmarks/results/bench_refine_h200_4f86a0e_cudnn.md)

With fused_net=1 the per-step function is `_fused_step`: logits and the saved masks from the fused forward,
objective_head, the same bookkeeping, and g from the fused input gradient seeded with the head's dJ/dlogits;
pgd_step, compaction and CUDA graphs as above (a fused step keeps no autograd graph, so nothing is freed
with J).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch

from ..bn_fold import fold_batchnorm
from ..errors import CCFastError
from ..kernels.objective_head import interpreted, objective_head
from ..kernels.pgd_step import pgd_step
from . import options
from .base import Engine, RefineResult

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

# None: the default depends on the device (CUDA or not), or on `compile` (min_bucket); see TritonOptions.parse.
OPTIONS = {
    "dtype": options.choice(None, *_DTYPES), "tf32": options.flag(False), "compile": options.flag(None),
    "graphs": options.flag(None), "channels_last": options.flag(True), "fold_bn": options.flag(True),
    "cast_weights": options.flag(True), "pad_channels": options.flag(True), "compact_every": options.integer(5),
    "buckets": options.buckets(None, auto=True), "min_bucket": options.integer(None),
    "compile_mode": options.text("default"), "fused_net": options.flag(False),
    "fused_ops": options.choice("triton", "triton", "cudnn"),
}


@dataclass
class TritonOptions:
    dtype: str = "bf16"
    tf32: bool = False
    compile: bool = True
    graphs: bool = True
    channels_last: bool = True
    fold_bn: bool = True
    cast_weights: bool = True
    pad_channels: bool = True
    compact_every: int = 5
    buckets: tuple[int, ...] | None = None
    min_bucket: int = 2
    compile_mode: str = "default"
    fused_net: bool = False
    fused_ops: str = "triton"

    @classmethod
    def parse(cls, given: dict, device: torch.device) -> TritonOptions:
        values = options.parse_options("triton", OPTIONS, given)
        cuda = device.type == "cuda"
        if values["fused_net"] and values["compile"]:
            # H200, torch 2.11 (stop 20): Inductor fails to generate its max-pool backward's scatter-add with a
            # symbolic batch size (InductorError in value ranges), and the fused network's kernels are custom ops
            # it cannot fuse anyway.
            raise CCFastError("engine 'triton' option fused_net=1 runs without torch.compile: drop compile=1 "
                              "(Inductor fails on its max-pool backward)")
        compile_default = cuda and not values["fused_net"]
        for name, default in (("dtype", "bf16" if cuda else "fp32"), ("compile", compile_default), ("graphs", cuda)):
            if values[name] is None:
                values[name] = default
        if values["min_bucket"] is None:  # size 1 would compile a second graph
            values["min_bucket"] = 2 if values["compile"] else 1
        if values["graphs"] and not cuda:
            raise CCFastError("engine 'triton' option graphs=1 needs a CUDA device (CUDA graphs); pass graphs=0 on CPU")
        if values["fused_ops"] != "triton" and not values["fused_net"]:
            raise CCFastError(f"engine 'triton' option fused_ops={values['fused_ops']} needs fused_net=1")
        if values["fused_ops"] == "cudnn" and not cuda:
            raise CCFastError("engine 'triton' option fused_ops=cudnn needs a CUDA device (cuDNN graphs)")
        if values["fused_net"] and not values["fold_bn"]:
            raise CCFastError("engine 'triton' option fused_net=1 always folds BatchNorm; drop fold_bn=0")
        return cls(**values)


class _ChannelPaddedConv(torch.nn.Module):
    """conv2d over C_in channels zero-padded to a multiple of 8: zero inputs meet zero weights, so the output
    is the same; the input gradient of the padded channels is dropped by the pad's backward."""

    def __init__(self, conv: torch.nn.Conv2d, multiple: int = 8):
        super().__init__()
        self.extra = (-conv.in_channels) % multiple
        weight = torch.nn.functional.pad(conv.weight.detach(), (0, 0, 0, 0, 0, self.extra))
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x):
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def _pad_narrow_convs(net: torch.nn.Module) -> list[str]:
    """Replace every plain Conv2d with fewer than 8 (or a non-multiple of 8) input channels; returns their names."""
    replaced = []
    for name, module in list(net.named_modules()):
        if (type(module) is torch.nn.Conv2d and module.in_channels % 8 and module.groups == 1
                and module.padding_mode == "zeros" and isinstance(module.padding, tuple)):
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, _ChannelPaddedConv(module))
            replaced.append(name)
    return replaced


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Bucket:
    """Static buffers of one batch size; CUDA graphs are captured on their addresses."""

    def __init__(self, size: int, image_shape: tuple[int, ...], device, memory_format):
        self.size = size
        f32 = {"device": device, "dtype": torch.float32}
        self.x = torch.full((size, *image_shape), 0.5, **f32).contiguous(memory_format=memory_format)
        self.x0 = torch.full_like(self.x, 0.5)
        self.labels = torch.zeros(size, device=device, dtype=torch.int64)
        self.active = torch.ones(size, device=device, dtype=torch.bool)
        self.steps = torch.zeros(size, device=device, dtype=torch.int64)
        self.t = torch.zeros((), device=device, dtype=torch.int64)  # steps done: the device-side loop counter
        self.J_init, self.r_init = torch.zeros(size, **f32), torch.zeros(size, **f32)
        self.J_last, self.r_last = torch.zeros(size, **f32), torch.zeros(size, **f32)
        self.ones = torch.ones(size, **f32)  # seeds the backward: ∇_x Σ_i J_i (SPEC §3.4: sum, not mean)
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.capture_s = 0.0

    def load(self, x0: torch.Tensor, labels: torch.Tensor) -> None:
        n = x0.shape[0]
        self.x[:n].copy_(x0)
        self.x0[:n].copy_(x0)
        self.labels[:n].copy_(labels)
        self.active[:n].fill_(True)
        self.active[n:].fill_(False)  # padding rows never move and are never returned
        self.steps.zero_()
        self.t.zero_()

    def gather_from(self, other: _Bucket, keep: torch.Tensor) -> None:
        n = keep.numel()
        for name in ("x", "x0", "labels", "steps", "J_init", "r_init"):
            getattr(self, name)[:n].copy_(getattr(other, name).index_select(0, keep))
        self.active[:n].fill_(True)
        self.active[n:].fill_(False)
        self.t.copy_(other.t)


class TritonEngine(Engine):
    name = "triton"
    OPTIONS = OPTIONS

    @staticmethod
    def availability() -> str:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed: pip install 'ccfast[triton]'"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU (none is visible to PyTorch)"
        return "ok"

    @classmethod
    def check_options(cls, given: dict, device: torch.device) -> TritonOptions:
        return TritonOptions.parse(given, device)

    def __init__(self, model, config, scalars, device, **given):
        super().__init__(model, config, scalars, device, **given)
        if self.device.type != "cuda" and not interpreted():
            raise CCFastError(
                "engine 'triton' needs a CUDA GPU (use --engine torch on CPU); its kernels run on CPU only under "
                "Triton's interpreter (TRITON_INTERPRET=1), for tests"
            )
        self._autocast_dtype = _DTYPES[self.opts.dtype]
        self._memory_format = torch.channels_last if self.opts.channels_last else torch.contiguous_format
        self._timings: dict = {"compile_s": 0.0, "capture_s": {}, "fold_bn": "off", "options": self._options_summary()}
        self._buckets: dict[int, _Bucket] = {}
        self._pool = None
        self._compiled_once = False
        tau, T = scalars.tau, config.steps
        # K steps per graph between compactions; without early stopping nothing is ever compacted.
        self._K = T if tau is None else min(self.opts.compact_every, T)
        self._segments = sorted({k for k in (self._K, T % self._K if self._K else 0) if k > 0})
        t0 = time.perf_counter()
        if self.opts.fused_net:
            self.net, self._fused = None, self._prepare_fused(model)
        else:
            self.net, self._fused = self._prepare_network(model), None
        self._timings["prepare_s"] = time.perf_counter() - t0
        fn = self._fused_step if self.opts.fused_net else self._forward_head_bookkeep
        if self.opts.compile:
            fn = torch.compile(fn, mode=None if self.opts.compile_mode == "default" else self.opts.compile_mode,
                               dynamic=None)
        self._step_fn = fn

    # ------------------------------------------------------------------ set-up

    def _options_summary(self) -> dict:
        o = self.opts
        return {"dtype": o.dtype, "tf32": o.tf32, "compile": o.compile, "graphs": o.graphs,
                "channels_last": o.channels_last, "fold_bn": o.fold_bn, "cast_weights": o.cast_weights,
                "pad_channels": o.pad_channels, "compact_every": o.compact_every,
                "buckets": "auto" if o.buckets is None else list(o.buckets), "min_bucket": o.min_bucket,
                "compile_mode": o.compile_mode, "fused_net": o.fused_net, "fused_ops": o.fused_ops}

    def _prepare_network(self, model: torch.nn.Module) -> torch.nn.Module:
        net = copy.deepcopy(model).eval().requires_grad_(False)
        if self.opts.fold_bn:
            net, self._timings["fold_bn"] = fold_batchnorm(net)
        half = self._autocast_dtype is not None
        if self.opts.pad_channels and half:
            self._timings["padded_convs"] = _pad_narrow_convs(net)
        net = net.to(self.device, memory_format=self._memory_format)
        if self.opts.cast_weights and half:
            # The backbone only: JointModel's normalisation (x − mean)/std stays fp32, as under plain autocast.
            (net.backbone if isinstance(getattr(net, "backbone", None), torch.nn.Module) else net).to(
                self._autocast_dtype
            )
        return net.requires_grad_(False)

    def _prepare_fused(self, model: torch.nn.Module):
        """fused_net=1: the folded weights of the bottleneck ResNet (a one-line error for another network), in the
        engine's dtype (fp32 on CPU), the stem padded to 8 input channels in bf16/fp16 as pad_channels says."""
        from ..fused_resnet import FusedResNetWeights

        try:
            weights = FusedResNetWeights.from_model(model)  # checks the network first (check_supported)
        except CCFastError as exc:
            raise CCFastError(f"engine 'triton' option fused_net=1: {exc}") from None
        if self.opts.fused_ops == "cudnn":
            from . import cudnn_net as ops  # the cuDNN frontend, on first use: only when asked for
        else:
            from . import fused_net as ops  # imports the kernels (triton): only when asked for, for a supported network

        self._fused_ops = ops
        dtype = self._autocast_dtype or torch.float32
        pad = 8 if self.opts.pad_channels and self._autocast_dtype is not None else 0
        self._timings["fold_bn"] = "on"
        return weights.cast(dtype, self.device, pad_channels=pad)

    @contextlib.contextmanager
    def _precision(self):
        """TF32 and cuDNN autotuning as asked, for everything this engine runs or captures; restored after."""
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.opts.tf32
        try:
            with torch.backends.cudnn.flags(enabled=True, benchmark=self.device.type == "cuda",
                                            deterministic=False, allow_tf32=self.opts.tf32):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul

    # ------------------------------------------------------------------ one step

    def _forward_head_bookkeep(self, x, labels, active, t, J_init, r_init, J_last, r_last):
        """Forward, fused head, and the per-step bookkeeping on the bucket's buffers (all on device).

        Compiled as one graph: the bookkeeping ops fuse into one kernel. Returns J (its backward through
        the head is the kernel's dJ/dlogits) and the gradient step's mask."""
        if self._autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self._autocast_dtype):
                logits = self.net(x)
        else:
            logits = self.net(x)
        return self._head_bookkeep(logits, labels, active, t, J_init, r_init, J_last, r_last)[0]

    def _fused_step(self, x, labels, active, t, J_init, r_init, J_last, r_last, take_step: bool):
        """fused_net=1: forward (masks saved), head and bookkeeping, then (take_step) g = ∇_x Σ_i J_i from the
        fused input gradient seeded with dJ/dlogits, the head's (SPEC §3.4: the sum, per example). No autograd."""
        logits, saved = self._fused_ops.fused_logits_and_saved(self._fused, x)
        _, dlogits = self._head_bookkeep(logits, labels, active, t, J_init, r_init, J_last, r_last)
        return self._fused_ops.fused_input_grad(self._fused, saved, dlogits) if take_step else None

    def _head_bookkeep(self, logits, labels, active, t, J_init, r_init, J_last, r_last):
        """objective_head and the per-step bookkeeping on the bucket's buffers: (J, dJ/dlogits)."""
        J, realness, dlogits, still_active = objective_head(logits, labels, active, self.scalars.head,
                                                            self.scalars.tau)
        first = t == 0
        J_init.copy_(torch.where(first, J.detach(), J_init))
        r_init.copy_(torch.where(first, realness, r_init))
        J_last.copy_(J.detach())
        r_last.copy_(realness)
        active.copy_(still_active)  # SPEC §4: active ← active ∧ (ℓ_fake < τ), decided on the current x
        t.add_(1)
        return J, dlogits

    def _body(self, b: _Bucket, take_step: bool) -> None:
        if self.opts.fused_net:
            g = self._step_fn(b.x, b.labels, b.active, b.t, b.J_init, b.r_init, b.J_last, b.r_last, take_step)
            if take_step:
                pgd_step(b.x, g, b.x0, b.active, self.config.alpha, self.config.eps, inplace=True, steps=b.steps)
            return
        x = b.x.detach().requires_grad_(True)
        if self.opts.compile and b.size >= 2:
            torch._dynamo.maybe_mark_dynamic(x, 0)  # this alias is a new tensor each step
        J = self._step_fn(x, b.labels, b.active, b.t, b.J_init, b.r_init, b.J_last, b.r_last)
        if take_step:  # (without a step, the saved activations are freed with J, unused)
            (g,) = torch.autograd.grad(J, x, grad_outputs=b.ones)
            pgd_step(b.x, g, b.x0, b.active, self.config.alpha, self.config.eps, inplace=True, steps=b.steps)

    def _run(self, b: _Bucket, k: int, take_step: bool) -> None:
        if self.opts.graphs:
            b.graphs[(k, take_step)].replay()
            return
        with self._precision():
            for _ in range(k):
                self._body(b, take_step)

    # ------------------------------------------------------------------ buckets and graphs

    def _bucket_size(self, n: int, initial: bool) -> int:
        o = self.opts
        if o.buckets is not None:
            fits = [s for s in o.buckets if s >= n]
            return max(o.min_bucket, fits[0] if fits else n)
        return max(o.min_bucket, n if initial else _next_pow2(n))

    def _bucket(self, size: int, image_shape) -> _Bucket:
        b = self._buckets.get(size)
        if b is not None:
            return b
        b = _Bucket(size, image_shape, self.device, self._memory_format)
        self._mark_dynamic(b)
        t0 = time.perf_counter()
        if self.opts.graphs:
            self._capture(b)
        elif self.opts.compile and not self._compiled_once:
            with self._precision():
                self._body(b, True)
            self._compiled_once = True
            self._timings["compile_s"] = time.perf_counter() - t0
        b.capture_s = time.perf_counter() - t0
        self._timings["capture_s"][size] = round(b.capture_s, 4)
        self._buckets[size] = b
        return b

    def _mark_dynamic(self, b: _Bucket) -> None:
        """One compiled graph for every bucket size ≥ 2 (dimension 0 symbolic), not one per size."""
        if self.opts.compile and b.size >= 2:
            for t in (b.x, b.labels, b.active, b.J_init, b.r_init, b.J_last, b.r_last):
                torch._dynamo.maybe_mark_dynamic(t, 0)

    def _capture(self, b: _Bucket) -> None:
        """Warm up (compile, cuDNN autotuning, Triton JIT) on a side stream, then capture each segment."""
        with self._precision():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                t0 = time.perf_counter()
                self._body(b, True)
                if not self._compiled_once:
                    torch.cuda.synchronize(self.device)
                    self._timings["compile_s"] = time.perf_counter() - t0
                    self._compiled_once = True
                self._body(b, True)
                self._body(b, False)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # Every graph writes only into the bucket's buffers (allocated outside capture), so graphs can
            # share one memory pool whatever order they replay in.
            for k, take_step in [(k, True) for k in self._segments] + [(1, False)]:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    for _ in range(k):
                        self._body(b, take_step)
                b.graphs[(k, take_step)] = graph
        torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ the loop

    def refine_batch(self, x0, labels, indices):
        x0 = x0.float()
        B = x0.shape[0]
        T, tau = self.config.steps, self.scalars.tau
        out = RefineResult(
            images=x0.clone(), steps=torch.zeros(B, dtype=torch.int64, device=x0.device),
            realness_init=torch.empty(B, device=x0.device), realness_final=torch.empty(B, device=x0.device),
            objective_init=torch.empty(B, device=x0.device), objective_final=torch.empty(B, device=x0.device),
            stopped=torch.zeros(B, dtype=torch.bool, device=x0.device), labels=labels,
        )
        if B == 0:
            return out
        bucket = self._bucket(self._bucket_size(B, initial=True), tuple(x0.shape[1:]))
        bucket.load(x0, labels)
        rows = torch.arange(B, device=x0.device)  # bucket row j holds batch row rows[j]
        n, t = B, 0
        while True:
            k = min(self._K, T - t)
            if k > 0:
                self._run(bucket, k, take_step=True)
                t += k
            if t >= T:
                self._run(bucket, 1, take_step=False)  # the forward at the final x (reference: T+1 forwards)
                self._harvest(bucket, torch.arange(n, device=x0.device), rows, out)
                break
            still = bucket.active[:n]
            n_active = int(still.sum())  # the one host synchronisation per K steps
            if n_active == 0:
                self._harvest(bucket, torch.arange(n, device=x0.device), rows, out)
                break
            size = self._bucket_size(n_active, initial=False)
            if size < bucket.size:
                keep, gone = still.nonzero().squeeze(1), (~still).nonzero().squeeze(1)
                self._harvest(bucket, gone, rows, out)
                smaller = self._bucket(size, tuple(x0.shape[1:]))
                smaller.gather_from(bucket, keep)
                rows, n, bucket = rows.index_select(0, keep), n_active, smaller
        out.stopped = out.realness_final >= tau if tau is not None else out.stopped
        return out

    @staticmethod
    def _harvest(b: _Bucket, idx: torch.Tensor, rows: torch.Tensor, out: RefineResult) -> None:
        """Write bucket rows `idx` (their images and statistics as of now) to batch rows rows[idx]."""
        if idx.numel() == 0:
            return
        dest = rows.index_select(0, idx)
        out.images.index_copy_(0, dest, b.x.index_select(0, idx).contiguous())
        out.steps.index_copy_(0, dest, b.steps.index_select(0, idx))
        out.realness_init.index_copy_(0, dest, b.r_init.index_select(0, idx))
        out.objective_init.index_copy_(0, dest, b.J_init.index_select(0, idx))
        out.realness_final.index_copy_(0, dest, b.r_last.index_select(0, idx))
        out.objective_final.index_copy_(0, dest, b.J_last.index_select(0, idx))

    def timings(self) -> dict:
        return dict(self._timings)
