"""The runtime benchmarks' shared harness: timing, input rotation, memory probes, run metadata, the report.

One home for what every runtime benchmark needs (bench_refine.py and the roofline use it):
- `time_calls`: warm-up calls, then timed calls (CUDA events around each call, or synchronised wall time),
  median; each call may be preceded by `before(i)` (outside the timed region) that loads input set i;
  after every call a memory probe is read, so "memory after call 2 == after call 10" is checked on the
  calls that were timed, not on extra ones.
- `InputPool`: a few distinct input batches, rotated call by call, so no contender is timed on one batch
  whose data sits in L2 from the previous call.
- `capture`: warm a step up on a side stream and capture it in a CUDA graph.
- `parse_engine_options` / `parse_variant`: `KEY=V,KEY=V` lists (a value may itself hold commas, as in
  `buckets=1,16,256`) and `NAME:KEY=V,...` engine variants; a malformed one is a `CCFastError` (exit 2).
- `run_metadata`: card, driver, versions (torch, CUDA, cuDNN, triton, onnxruntime and its providers,
  TensorRT, torchattacks, Python), commit and date, for the report's header.
- `Report`: rows written as CSV and Markdown after every row (atomic writes, so a run cut short keeps
  what it measured), ratio columns against named baselines of the same (section, batch), and a short
  plain-text table for the end of the console output.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ccfast.errors import CCFastError
from ccfast.io_utils import write_text_atomic
from ccfast.refine.options import parse_key_values

ROOT = Path(__file__).resolve().parents[1]

MIB = 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- inputs


def make_inputs(batch: int, size: int, num_classes: int, device, seed: int = 0):
    """(x0, labels): smooth random images in [0, 1] (low-frequency noise upsampled, plus a little white noise:
    closer to photographs than white noise) and random labels, from a seeded CPU generator."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, max(2, size // 8), max(2, size // 8), generator=g)
    x0 = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x0 = (x0 + 0.05 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return x0.to(device), labels.to(device)


class InputPool:
    """`n_sets` distinct input batches of one size; `get(i)` is set i mod n_sets (set 0 is the same for every
    contender, so results can be compared on it)."""

    def __init__(self, batch: int, size: int, num_classes: int, device, n_sets: int = 3, seed: int = 0):
        if n_sets < 1:
            raise CCFastError(f"an input pool needs at least one set, got {n_sets}")
        self.batch = batch
        self.sets = [make_inputs(batch, size, num_classes, device, seed=seed + 7919 * k) for k in range(n_sets)]

    def get(self, i: int):
        return self.sets[i % len(self.sets)]


# ---------------------------------------------------------------- timing and memory


@dataclass
class Timing:
    """Seconds of each timed call, and the memory probe's reading after every call (warm-up calls included)."""

    seconds: list[float]
    memory_after: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def growth_bytes(self, first: int = 2) -> int | None:
        """Memory after the last call minus memory after call `first` (1-based); None without a probe."""
        if len(self.memory_after) < max(first, 2):
            return None
        return self.memory_after[-1] - self.memory_after[first - 1]


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, reps: int = 8,
               before: Callable[[int], None] | None = None, clock: str = "wall",
               probe: Callable[[], int] | None = None) -> Timing:
    """Call `fn` warmup + reps times; time the last `reps`.

    before(i)  runs ahead of call i (0-based, warm-ups included), outside the timed region: loads inputs.
    clock      "event": CUDA events recorded around the call on the current stream (GPU time of what the
               call enqueued, for graph replays); "wall": synchronise, perf_counter, call, synchronise (for
               calls that do host work, or run on another library's stream). CPU devices always use "wall".
    probe      read after every call (e.g. bytes allocated), for the growth check."""
    if clock not in ("event", "wall"):
        raise ValueError(f"clock must be 'event' or 'wall', got {clock!r}")
    use_events = clock == "event" and device.type == "cuda"
    seconds, memory = [], []
    for i in range(warmup + reps):
        if before is not None:
            before(i)
        sync(device)
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
        if probe is not None:
            memory.append(int(probe()))
        if i >= warmup:
            seconds.append(dt)
    return Timing(seconds, memory)


def capture(fn: Callable[[], object], device: torch.device, warmup: int = 2) -> Callable[[], None]:
    """Warm `fn` up on a side stream (compile, cuDNN autotuning) and capture it in a CUDA graph; returns the
    graph's replay. On a CPU device, `fn` itself."""
    if device.type != "cuda":
        return fn
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    sync(device)
    return graph.replay


class MemoryMeter:
    """Peak and growth of GPU memory for one benchmark row.

    counter "torch": bytes allocated by PyTorch's caching allocator (`memory_allocated`; peak from
    `max_memory_allocated` after `reset_peak_memory_stats`). counter "device": bytes in use on the whole
    device (`cudaMemGetInfo`), the one number that also sees ONNX Runtime's and TensorRT's own allocators
    (it includes PyTorch's cached blocks). On a CPU device every reading is 0."""

    def __init__(self, device: torch.device, counter: str = "torch"):
        if counter not in ("torch", "device"):
            raise ValueError(f"memory counter must be 'torch' or 'device', got {counter!r}")
        self.device, self.counter, self.cuda = device, counter, device.type == "cuda"
        self.start = 0

    def read(self) -> int:
        if not self.cuda:
            return 0
        if self.counter == "torch":
            return torch.cuda.memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def begin(self) -> None:
        if self.cuda:
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = self.read()

    def peak_above_start(self) -> int:
        """torch: the allocator's peak since `begin` minus what was allocated then. device: memory in use now
        minus at `begin` (ONNX Runtime's arena does not shrink, so this is its high-water mark)."""
        if not self.cuda:
            return 0
        if self.counter == "torch":
            return torch.cuda.max_memory_allocated(self.device) - self.start
        return self.read() - self.start


# ---------------------------------------------------------------- options


def parse_engine_options(text: str, where: str = "engine options") -> dict[str, str]:
    """'KEY=V,KEY=V' → {KEY: V}. A piece without '=' continues the previous value (so `buckets=1,16,256`
    stays one option); an empty key, a first piece without '=', or a repeated key is an error."""
    items: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" not in piece and items:
            items[-1] += "," + piece
        else:
            items.append(piece)
    return parse_key_values(items, f"{where} {text!r}")


def parse_variant(text: str, where: str = "--ort-variant") -> tuple[str, dict[str, str]]:
    """'NAME:KEY=V,KEY=V' (or just 'NAME') → (NAME, options)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise CCFastError(f"{where} {text!r}: expected NAME or NAME:KEY=VALUE,KEY=VALUE")
    return name, parse_engine_options(rest, f"{where} {name}")


def parse_variants(texts: list[str], where: str = "--ort-variant") -> list[tuple[str, dict[str, str]]]:
    variants = [parse_variant(t, where) for t in texts]
    names = [n for n, _ in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CCFastError(f"{where}: variant name(s) {', '.join(repeated)} given more than once")
    return variants


def parse_int_list(text: str, where: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise CCFastError(f"{where} {text!r}: expected a comma list of positive integers")
    return values


# ---------------------------------------------------------------- metadata


def _version(module: str) -> str:
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - absent or broken: the header says so, the run goes on
        return f"absent ({type(exc).__name__})"
    return str(getattr(mod, "__version__", "?"))


def git_commit() -> str:
    """CCFAST_COMMIT if set (a copied tree has no .git), else `git rev-parse --short HEAD`, else 'unknown'."""
    if os.environ.get("CCFAST_COMMIT"):
        return os.environ["CCFAST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=False,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(device: torch.device, commit: str | None = None) -> dict[str, str]:
    cuda = device.type == "cuda"
    card = torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu")
    ort = _version("onnxruntime")
    if not ort.startswith("absent"):
        import onnxruntime

        ort += f" ({', '.join(onnxruntime.get_available_providers())})"
    trt = _version("tensorrt")
    if trt.startswith("absent"):
        trt += f"; tensorrt_rtx {_version('tensorrt_rtx')}"
    versions = {
        "torch": torch.__version__, "CUDA": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()) if cuda else "-", "triton": _version("triton"),
        "onnxruntime": ort, "tensorrt": trt, "torchattacks": _version("torchattacks"),
        "python": platform.python_version(),
    }
    driver = "-"
    if cuda:
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,memory.total", "--format=csv,noheader"],
                check=False, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):  # no nvidia-smi: the header says less
            driver = "unknown"
    return {"card": card, "driver/max SM clock/memory": driver,
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "commit": commit or git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---------------------------------------------------------------- the report


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


class Report:
    """Rows of one benchmark run, written to OUT/STEM.csv and OUT/STEM.md after every row (atomic).

    fields       column names (every row has them all; a missing one is "")
    ratios       {column: baseline method, or a tuple of them}: the row's `rate` field over the baseline's, for
                 rows of the same `group` key (e.g. arch and batch); with a tuple, over the fastest of those
                 methods in that group (the strongest contender); the baseline's own row gets 1.0
    short        columns of the plain-text table printed at the end
    meta         header lines (key: value), `notes`: free text under the header"""

    def __init__(self, out: Path, stem: str, fields: list[str], meta: dict[str, str], *, notes: str = "",
                 ratios: dict[str, str | tuple[str, ...]] | None = None, rate: str = "image_steps_per_s",
                 group: tuple[str, ...] = ("section", "batch"), short: list[str] | None = None,
                 echo: bool = True):
        self.out, self.stem, self.fields, self.meta, self.notes = Path(out), stem, fields, meta, notes
        self.ratios, self.rate, self.group = ratios or {}, rate, group
        self.short = short or fields
        self.echo = echo
        self.rows: list[dict] = []
        self.extra: dict[str, str] = {}
        self.out.mkdir(parents=True, exist_ok=True)

    def add(self, **row) -> dict:
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise ValueError(f"report {self.stem}: no column {unknown}")
        row = {k: row.get(k, "") for k in self.fields}
        self.rows.append(row)
        if self.echo:  # notes cut short: the console's tail is the short table, the files have everything
            notes = f" | {str(row['notes'])[:100]}" if "notes" in row and "notes" not in self.short else ""
            print("row: " + " | ".join(_cell(row[k]) for k in self.short) + notes, flush=True)
        self.write()
        return row

    def compute_ratios(self) -> None:
        for column, baseline in self.ratios.items():
            methods = (baseline,) if isinstance(baseline, str) else tuple(baseline)
            first: dict[tuple, dict[str, float]] = {}  # group -> method -> its first row's rate
            for r in self.rows:
                if r.get("method") in methods and isinstance(r[self.rate], (int, float)):
                    first.setdefault(tuple(r[k] for k in self.group), {}).setdefault(r["method"], r[self.rate])
            base = {key: max(rates.values()) for key, rates in first.items()}
            for r in self.rows:
                b = base.get(tuple(r[k] for k in self.group))
                r[column] = round(r[self.rate] / b, 3) if b and isinstance(r[self.rate], (int, float)) else ""

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()

    def markdown(self) -> str:
        lines = [f"# {self.stem}", ""] + [f"- {k}: {v}" for k, v in self.meta.items()]
        if self.notes:
            lines += ["", self.notes]
        lines += ["", "| " + " | ".join(self.fields) + " |", "|" + "---|" * len(self.fields)]
        lines += ["| " + " | ".join(_cell(r[k]).replace("|", "/") for k in self.fields) + " |" for r in self.rows]
        for title, text in self.extra.items():
            lines += ["", f"## {title}", "", text]
        return "\n".join(lines) + "\n"

    def short_table(self) -> str:
        """Fixed-width table of the `short` columns: what the console shows last."""
        cells = [[str(c) for c in self.short]] + [[_cell(r[k]) for k in self.short] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.short))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells)

    def write(self) -> None:
        self.compute_ratios()
        write_text_atomic(self.out / f"{self.stem}.csv", self.csv_text())
        write_text_atomic(self.out / f"{self.stem}.md", self.markdown())
