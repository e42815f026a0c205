"""Resumable stages: a stage is skipped when its record says it already produced its outputs from the same config.

OUT/stages/NAME.json holds what a finished stage did: its config (everything its outputs depend on, including
the sha256 of the files it read), the sha256 of each output, wall-clock seconds, what the stage reported, and
the machine and versions. A stage reruns when the record is missing, its config differs, or an output is
missing or changed. Upstream changes propagate because a downstream config holds the hashes of its inputs.
Outputs themselves are written atomically by the stage (tmp file + rename), so a killed stage leaves either
nothing or a complete file, and never a record without its outputs: the record is written last.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ccfast.errors import CCFastError
from ccfast.io_utils import file_fingerprint, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]


class StagePaused(Exception):
    """A stage stopped at the orchestrator's deadline with its progress saved; rerunning the command continues it."""


@dataclass
class Stage:
    """One unit of work. `run()` makes every path in `outputs` and returns facts to record (JSON-able)."""

    name: str
    config: dict
    outputs: list[Path]
    run: Callable[[], dict]
    depends: list[str] = field(default_factory=list)  # stage names whose outputs this one reads (for messages)


def environment() -> dict:
    """The machine and versions a stage ran with (cards, torch, CUDA, ccfast, the checkout's commit)."""
    import numpy
    import torch

    import ccfast

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "ccfast": getattr(ccfast, "__version__", "?"), "cuda": torch.version.cuda, "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(), "git": git_commit(),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


# The commit to record when the code runs from a copied working tree without .git (run.py --commit).
COMMIT_OVERRIDE: str | None = None


def git_commit() -> str:
    """HEAD of the checkout, with '+dirty' when tracked files differ from it (read-only git calls)."""
    if COMMIT_OVERRIDE:
        return f"{COMMIT_OVERRIDE} (given with --commit)"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"


class StageRunner:
    """Runs stages in order, skipping the fresh ones; `force` reruns the named stages (or all with '*')."""

    def __init__(self, out_dir: Path, force: set[str] | None = None, log=print):
        self.out_dir = Path(out_dir)
        self.records_dir = self.out_dir / "stages"
        self.force = force or set()
        self.log = log
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._env: dict | None = None
        self.ran: list[str] = []
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ hashing

    def sha256(self, path: Path) -> str:
        """sha256 of a file, memoised on (path, size, mtime) so a file read by many stages is hashed once."""
        path = Path(path)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_fingerprint(path)
        return self._hashes[key]

    @staticmethod
    def sha256_of_config(config: dict) -> str:
        """A short key for a config (to tell whether half-done work in a CLI's output folder is ours)."""
        import hashlib

        return hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()[:16]

    def fingerprints(self, paths) -> dict[str, str]:
        return {self.rel(p): self.sha256(p) for p in paths}

    def rel(self, path: Path) -> str:
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.out_dir.resolve()))
        except ValueError:
            return path.name  # an input outside OUT (data files): its name and hash identify it

    # ------------------------------------------------------------------ records

    def record_path(self, name: str) -> Path:
        return self.records_dir / f"{name}.json"

    def read_record(self, name: str) -> dict | None:
        path = self.record_path(name)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def why_stale(self, stage: Stage) -> str | None:
        """None if the stage may be skipped, else the reason it must run."""
        if stage.name in self.force or "*" in self.force:
            return "forced"
        rec = self.read_record(stage.name)
        if rec is None:
            return "not run yet"
        if rec.get("config") != _jsonable(stage.config):
            return "its config changed"
        for out in stage.outputs:
            if not Path(out).exists():
                return f"output {self.rel(out)} is missing"
            if rec.get("outputs", {}).get(self.rel(out)) != self.sha256(out):
                return f"output {self.rel(out)} changed since it was made"
        return None

    def run(self, stage: Stage) -> dict:
        reason = self.why_stale(stage)
        if reason is None:
            self.skipped.append(stage.name)
            self.log(f"[skip] {stage.name}: up to date")
            return self.read_record(stage.name)
        self.log(f"[run ] {stage.name}: {reason}")
        old = self.record_path(stage.name)
        if old.exists():
            old.unlink()  # a stage being redone has no valid record until it finishes
        start = time.perf_counter()
        info = stage.run() or {}
        seconds = time.perf_counter() - start
        missing = [self.rel(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise CCFastError(f"stage {stage.name} finished without writing {', '.join(missing)}")
        if self._env is None:
            self._env = environment()
        record = {
            "name": stage.name, "config": _jsonable(stage.config),
            "outputs": {self.rel(p): self.sha256(p) for p in stage.outputs},
            "wall_seconds": seconds, "info": _jsonable(info), "env": self._env,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv,
        }
        write_json_atomic(self.record_path(stage.name), record)
        self.ran.append(stage.name)
        self.log(f"[done] {stage.name} in {seconds:.1f} s")
        return record


def _jsonable(obj):
    """The object as JSON would give it back (tuples -> lists, keys -> str), so stored and fresh configs compare
    equal."""
    return json.loads(json.dumps(obj, default=str))
