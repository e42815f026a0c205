"""The run directory and the training-state checkpoint.

    RUN_DIR/config.json    {"config": resolved TrainConfig, "data": what was read, "ccfast_version", ...}
    RUN_DIR/metrics.jsonl  one JSON object per log window ("kind": "train") and per checkpoint ("kind": "eval")
    RUN_DIR/state.pt       the latest training state: model, optimiser, LR scheduler, gradient scaler, RNG,
                           iteration, attack schedule (atomic; `--resume` continues from it exactly)
    RUN_DIR/model.pt       the latest inference checkpoint, with ℓ0 (for refine / export)

Every file is written atomically, so an interrupted run leaves the previous complete version in place.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CCFastError
from ..io_utils import atomic_path, write_json_atomic
from .config import RUN_CONTROL_FIELDS, TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, STATE_FILE, MODEL_FILE)

STATE_FORMAT = "ccfast-train-state"
STATE_VERSION = 1


def read_run_record(run_dir: str | Path) -> dict | None:
    """config.json of an existing run, or None when the directory holds no run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        TrainConfig.from_dict(record["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CCFastError(
            f"{path}: unreadable run record ({exc}); pass --overwrite to start this run directory afresh"
        ) from exc
    return record


def check_resume_matches(saved: TrainConfig, given: TrainConfig, run_dir) -> None:
    """A resumed run must compute what the stopped one computed: only RUN_CONTROL_FIELDS may change."""
    diff = saved.differences(given)
    if diff:
        lines = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CCFastError(
            f"{run_dir} was started with another configuration ({lines}). Resume with the original arguments "
            f"(only {', '.join(sorted(RUN_CONTROL_FIELDS - {'out'}))} may change), or start a new run with another "
            "--out"
        )


def check_data_matches(saved: dict, now: dict, run_dir) -> None:
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now) if saved.get(k) != now.get(k)}
    if diff:
        lines = "; ".join(f"{k}: run had {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CCFastError(
            f"{run_dir}: the training data changed since the run started ({lines}); cannot resume exactly"
        )


def write_run_record(run_dir: str | Path, cfg: TrainConfig, data: dict, extra: dict) -> None:
    from .. import __version__

    write_json_atomic(
        Path(run_dir) / CONFIG_FILE,
        {
            "config": cfg.to_dict(),
            "data": data,
            "ccfast_version": __version__,
            "torch_version": torch.__version__,
            **extra,
        },
    )


def save_training_state(path: str | Path, state: dict) -> None:
    payload = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **state}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated files
        raise CCFastError(f"{path}: unreadable training state ({exc}); pass --overwrite to restart the run") from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CCFastError(f"{path}: not a ccfast training state")
    if payload.get("format_version", 0) > STATE_VERSION:
        raise CCFastError(f"{path}: training state version {payload['format_version']} is newer than this ccfast reads")
    return payload


def truncate_metrics(path: str | Path, iteration: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (they will be written again)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("iter", 0) <= iteration:
                kept.append(line)
        except ValueError:  # a line cut short by a crash
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in kept))


def clear_run_dir(run_dir: str | Path) -> None:
    """--overwrite: remove this module's files (and nothing else) from the run directory."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
