"""Calling ccfast's command lines (train, refine, evaluate) as subprocesses, and reading what they leave behind.

Each CLI writes its own outputs atomically and can resume: `ccfast.train --resume` continues a run directory,
`ccfast.refine` continues from OUT.partial/ chunks. A small marker file beside each output remembers which
stage config started the work there, so an interrupted stage resumes only work begun with the same config and
otherwise starts afresh (`--overwrite`) instead of mixing two configurations.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ccfast.errors import CCFastError
from ccfast.io_utils import write_json_atomic

from .stages import REPO_ROOT, StagePaused

# Set by the orchestrator: CPU threads for the child processes in smoke mode (None: their default), and its
# deadline (a time.monotonic() value), at which a running child is stopped; its CLI resumes on the next call.
CHILD_THREADS: int | None = None
DEADLINE: float | None = None


def child_env() -> dict[str, str]:
    """This process's environment with the repository root first on PYTHONPATH, for `python -m` children."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_cli(module: str, args: list, log=print) -> float:
    """`python -m MODULE ARGS` from the repository root (so a fresh checkout works uninstalled); returns seconds."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    log(f"  $ {shlex.join(cmd)}")
    env = child_env()
    if CHILD_THREADS is not None:
        env["OMP_NUM_THREADS"] = str(CHILD_THREADS)
    start = time.perf_counter()
    timeout = None
    if DEADLINE is not None:
        timeout = DEADLINE - time.monotonic()
        if timeout <= 0:
            raise StagePaused(f"deadline reached before {module} could start")
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StagePaused(
            f"{module} stopped at the deadline; its finished work is kept and the next run resumes it"
        ) from None
    if proc.returncode != 0:
        raise CCFastError(f"{module} failed with exit code {proc.returncode}; the command was:\n  {shlex.join(cmd)}")
    return time.perf_counter() - start


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".stage.json")


def claim(path: Path, config_key: str) -> bool:
    """Record that work toward `path` is being done for `config_key`; True if earlier work there had the same key
    (so it may be resumed), False if there was none or it was for another config (so it must be discarded)."""
    marker = _marker(path)
    same = False
    if marker.exists():
        try:
            same = json.loads(marker.read_text()).get("key") == config_key
        except (OSError, ValueError):
            same = False
    write_json_atomic(marker, {"key": config_key})
    return same


def release(path: Path) -> None:
    _marker(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- ccfast.train


def train_classifier(run_dir: Path, real: list[Path], fake: list[Path], arch: str, init: Path | None, iters: int,
                     batch_size: int, flags: list[str], ckpt_every: int, device: str, config_key: str,
                     quiet: bool, log=print, num_classes: int = 10) -> dict:
    """One `ccfast.train` run to completion (resuming a run started with the same config); returns its facts."""
    resumable = claim(run_dir, config_key) and (run_dir / "state.pt").exists()
    args = [
        "--real",
        *real,
        *(["--fake", *fake] if fake else []),
        "--arch",
        arch,
        "--num-classes",
        num_classes,
        "--out",
        run_dir,
        "--iters",
        iters,
        "--batch-size",
        batch_size,
        "--ckpt-every",
        ckpt_every,
        "--device",
        device,
        *flags,
    ]
    if init is not None:
        args += ["--init", init]
    if quiet:
        args.append("--quiet")
    args.append("--resume" if resumable else "--overwrite")
    seconds = run_cli("ccfast.train", args, log)
    release(run_dir)
    return {"last_call_seconds": seconds, "resumed": resumable, **training_facts(run_dir)}


def training_facts(run_dir: Path) -> dict:
    """From RUN_DIR/metrics.jsonl: GPU-minutes of the training iterations (Σ window·sec_per_iter, which survives
    resumption because the trainer truncates the log to the resumed iteration) and the last evaluation."""
    seconds, last_eval, last_train = 0.0, None, None
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("kind") == "train":
                seconds += rec.get("window", 0) * rec.get("sec_per_iter", 0.0)
                last_train = rec
            elif rec.get("kind") == "eval":
                last_eval = rec
    return {"gpu_minutes": seconds / 60.0, "last_eval": last_eval, "last_train": last_train}


# ---------------------------------------------------------------------------------------------- ccfast.refine


def refine(checkpoint: Path, inp: Path, out: Path, preset: str, overrides: dict, batch_size: int, device: str,
           config_key: str, quiet: bool, log=print, engine: str = "torch") -> dict:
    """One `ccfast.refine` call; returns its OUT.npz.json (timings, mean steps)."""
    if not claim(out, config_key):
        partial = out.with_name(out.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)  # chunks of another configuration
    for stale in (out, Path(str(out) + ".json")):
        stale.unlink(missing_ok=True)  # a finished output of an older config
    args = ["--checkpoint", checkpoint, "--input", inp, "--output", out, "--preset", preset,
            "--batch-size", batch_size, "--device", device, "--engine", engine]
    for key, value in overrides.items():
        args += [f"--{key.replace('_', '-')}", value]
    if quiet:
        args.append("--quiet")
    seconds = run_cli("ccfast.refine", args, log)
    release(out)
    meta = json.loads(Path(str(out) + ".json").read_text())
    meta["call_seconds"] = seconds
    return meta


# ---------------------------------------------------------------------------------------------- ccfast.evaluate


def evaluate(ref: Path, samples: list[Path], out_json: Path, device: str, batch_size: int, inception: str | None,
             allow_unverified: bool, cache_dir: Path, quiet: bool, log=print) -> dict[str, dict]:
    """One `ccfast.evaluate` call over several sample files; returns {resolved sample path: its result row}."""
    args = ["--ref", ref, "--samples", *samples, "--out", out_json, "--overwrite", "--device", device,
            "--batch-size", batch_size, "--cache-dir", cache_dir]  # out_json is rewritten by every call
    if inception:
        args += ["--inception", inception]
    if allow_unverified:
        args.append("--allow-unverified-inception")
    if quiet:
        args.append("--no-progress")
    seconds = run_cli("ccfast.evaluate", args, log)
    result = json.loads(Path(out_json).read_text())
    rows = {}
    for row in result["results"]:
        row = dict(row, network=result.get("network"), reference=result.get("reference"), call_seconds=seconds)
        rows[str(Path(row["samples"]).resolve())] = row
    missing = [str(p) for p in samples if str(Path(p).resolve()) not in rows]
    if missing:
        raise CCFastError(f"ccfast.evaluate returned no row for {', '.join(missing)}")
    return rows
