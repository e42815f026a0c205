"""`--lanes 2`: the suite on two GPUs, its independent stages running side by side, one process per GPU.

The stage graph (run.py): samples_X reads gen_X; clf_joint reads clf_robust and samples_ct; refine's jobs on the
robust classifier ("bigroc": BIGROC and the robust-classifier ablation) read clf_robust and the CT samples, its
joint-model jobs ("paper,sgld") read clf_joint; the α = c·ε/T jobs also need the evaluated calibration; eval
scores whatever sample files exist; report reads eval. Two lanes cover it with little waiting:

  lane 0 (GPU 0): gen_ct, samples_ct -> [clf_robust done] clf_joint -> refine paper,sgld
  lane 1 (GPU 1): clf_robust -> gen_act, samples_act -> [samples_ct done] refine bigroc -> eval (what exists,
                  again and again until lane 0's refine is done: evaluation is the GPU-bound part)
  then on GPU 0:  refine (the α = c·ε/T jobs, once calibration is evaluated), eval (the rest), report

Each generator trains alone on its own GPU, so CT and ACT still get equal minutes of equal cards. With
`--share-gpu` both lanes use one GPU (a machine lent with one card): the generators then need `--gen-iters`
(equal iterations, since minutes on a shared card are not equal work), and the lanes leave the refinements whose
wall times are reported (`RefineJob.timed`) to the final step, which runs them first and alone. Every step is
`python -m benchmarks.quality.run` with the same arguments, `--stages` for its part and CUDA_VISIBLE_DEVICES for
its GPU, so each one skips what is already done exactly as a one-GPU run does, and rerunning the whole command
continues after a failure or a deadline. Each lane's output goes to OUT/logs/lane<i>.log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .external import child_env
from .stages import REPO_ROOT


@dataclass(frozen=True)
class Step:
    stages: str                      # the --stages of this step's process
    waits: tuple[str, ...] = ()      # stage groups another lane must have finished first
    refine_methods: str | None = None
    # (lane, group): run this step again and again until that lane has finished that group, then once more
    until: tuple[int, str] | None = None


TWO_LANES = (
    (Step("gen_ct,samples_ct"), Step("clf_joint", waits=("clf_robust",)), Step("refine", refine_methods="paper,sgld")),
    (Step("clf_robust"), Step("gen_act,samples_act"), Step("refine", waits=("samples_ct",), refine_methods="bigroc"),
     Step("eval", until=(0, "refine"))),
)
FOLLOW_PAUSE_S = 15.0  # between two `until` runs that found nothing new to score
# The final step refines too: the α = c·ε/T jobs wait for the evaluated calibration, which only exists by then.
FINAL = Step("refine,eval,report")
EXIT_PAUSED = 3

# Options of the parent command that the lanes set themselves (each takes one value).
_OWN_OPTIONS = {"--lanes", "--stages", "--device", "--refine-methods", "--deadline-minutes"}
_OWN_FLAGS = {"--share-gpu", "--defer-timed"}  # options without a value


def child_argv(argv: list[str]) -> list[str]:
    """The parent's arguments without the options each step sets for itself."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN_FLAGS:
            continue
        if name in _OWN_OPTIONS:
            skip = 0 if "=" in arg else 1
            continue
        out.append(arg)
    return out


def visible_gpus(n: int, share: bool = False) -> list[str]:
    """CUDA_VISIBLE_DEVICES values for n lanes, honouring the parent's own CUDA_VISIBLE_DEVICES; with `share`,
    the first GPU for every lane."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent:
        ids = [g.strip() for g in parent.split(",") if g.strip()]
    else:
        import torch  # device_count() reads the driver; it creates no CUDA context

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if share and ids:
        return [ids[0]] * n
    if len(ids) < n:
        raise SystemExit(f"--lanes {n}: only {len(ids)} GPU(s) visible (--share-gpu runs both lanes on one)")
    return ids[:n]


class LaneRunner:
    def __init__(self, argv: list[str], out_dir: Path, device: str, deadline: float | None, log,
                 defer_timed: bool = False):
        self.base = child_argv(argv)
        self.defer_timed = defer_timed
        self.out_dir, self.device, self.deadline, self.log = out_dir, device, deadline, log
        self.done_in_lane: dict[int, set[str]] = {}  # the stage groups each lane has finished
        self.cond = threading.Condition()
        self.failed: str | None = None
        self.paused = False
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)

    def run_step(self, lane: int, gpu: str | None, step: Step) -> int:
        cmd = [sys.executable, "-m", "benchmarks.quality.run", *self.base, "--stages", step.stages]
        env = child_env()
        env["PYTHONUNBUFFERED"] = "1"
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
            cmd += ["--device", "cuda"]
        elif self.device:
            cmd += ["--device", self.device]
        if step.refine_methods:
            cmd += ["--refine-methods", step.refine_methods]
            if self.defer_timed:
                cmd.append("--defer-timed")
        if self.deadline is not None:
            left = (self.deadline - time.monotonic()) / 60.0
            if left <= 0:
                return EXIT_PAUSED
            cmd += ["--deadline-minutes", f"{left:.3f}"]
        log_path = self.out_dir / "logs" / f"lane{lane}.log"
        where = f"GPU {gpu}" if gpu is not None else self.device
        self.log(f"[lane {lane}] {step.stages}{' (' + step.refine_methods + ')' if step.refine_methods else ''} "
                 f"on {where} ...")
        start = time.perf_counter()
        with open(log_path, "a") as fh:
            fh.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        self.log(f"[lane {lane}] {step.stages}: exit {rc} after {(time.perf_counter() - start) / 60:.1f} min")
        return rc

    def wait_for(self, groups: tuple[str, ...]) -> bool:
        with self.cond:
            while not (set(groups) <= self.done) and self.failed is None and not self.paused:
                self.cond.wait()
            return set(groups) <= self.done

    @property
    def done(self) -> set[str]:
        """The stage groups some lane has finished."""
        return set().union(*self.done_in_lane.values())

    def run_until(self, index: int, gpu: str | None, step: Step) -> int:
        """Run `step` again and again while the other lane works toward `step.until`, and once more after it has
        finished (so nothing it made is missed); each run does only what has become stale since the last."""
        while True:
            with self.cond:
                lane, group = step.until
                last = group in self.done_in_lane.get(lane, set()) or self.failed is not None or self.paused
            start = time.monotonic()
            rc = self.run_step(index, gpu, step)
            if rc != 0 or last:
                return rc
            with self.cond:  # wake early when the other lane finishes something
                self.cond.wait(max(0.0, FOLLOW_PAUSE_S - (time.monotonic() - start)))

    def lane(self, index: int, gpu: str | None, steps: tuple[Step, ...]) -> None:
        for step in steps:
            if step.waits and not self.wait_for(step.waits):
                return
            rc = self.run_until(index, gpu, step) if step.until else self.run_step(index, gpu, step)
            with self.cond:
                if rc == 0:
                    self.done_in_lane.setdefault(index, set()).update(s.strip() for s in step.stages.split(","))
                elif rc == EXIT_PAUSED:
                    self.paused = True
                else:
                    self.failed = (
                        f"lane {index} ({step.stages}) failed; see {self.out_dir / 'logs' / f'lane{index}.log'}"
                    )
                self.cond.notify_all()
            if rc != 0:
                return

    def run(self, gpus: list[str | None], smoke: bool = False) -> int:
        if smoke:  # the smoke data subsets come first: every later step reads them
            rc = self.run_step(0, gpus[0], Step("data"))
            if rc != 0:
                return rc
        threads = [threading.Thread(target=self.lane, args=(i, gpus[i], steps), daemon=True)
                   for i, steps in enumerate(TWO_LANES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.failed:
            self.log(self.failed)
            return 1
        if self.paused:
            self.log("paused at the deadline; run the same command again to continue")
            return EXIT_PAUSED
        rc = self.run_step(0, gpus[0], FINAL)
        if rc == 0:
            self.log(f"done: report in the results folder; lane logs in {self.out_dir / 'logs'}")
        return rc


def run_lanes(argv: list[str], n_lanes: int, out_dir: Path, device: str | None, deadline_minutes: float | None,
              log, smoke: bool = False, share_gpu: bool = False) -> int:
    if n_lanes != 2:
        raise SystemExit(f"--lanes {n_lanes}: the suite's stage graph has two independent chains; use 1 or 2")
    on_gpu = device is None or device.startswith("cuda")
    gpus: list[str | None] = visible_gpus(n_lanes, share_gpu) if on_gpu else [None] * n_lanes
    deadline = time.monotonic() + 60 * deadline_minutes if deadline_minutes is not None else None
    return LaneRunner(argv, out_dir, device if not on_gpu else "", deadline, log, share_gpu).run(gpus, smoke)
