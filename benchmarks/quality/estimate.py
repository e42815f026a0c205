"""`--plan`: the refinements a run would make, and what each stage should cost on one H200.

The rates are fitted to the stage records of the committed run (benchmarks/results/quality/records/, commit
01e872f: one H200 per stage, ResNet-20 classifiers, batch 1000, 10k samples per file), corrected where the
records of a later, unfinished run (commit 56fefaa, one H200, 2026-12-02; its records and their reading are in
benchmarks/results/quality/attempt_56fefaa/) measured otherwise: the fast engine's set-up, the
concurrency gain of untimed refinements, and evaluation, which is GPU-bound (fp32 Inception) and gains nothing
from concurrent calls. They are an estimate for planning a run that must fit a lent machine's time, not a
measurement; the run's own records are the measurement.
"""

from __future__ import annotations

from collections import Counter

from .plan import SCALED, raw_samples, refine_plan

# Seconds, from the committed run's records.
REFINE_CALL_OVERHEAD_S = 5.0       # python -m ccfast.refine start, model and file I/O (call_seconds − loop)
REFINE_LOOP_BASE_S = 1.5           # per 10k images: the loop's fixed part (first batches, statistics)
REFINE_STEP_S = {"pgd": 0.25, "sgld": 0.45}  # per gradient step per 10k images (ResNet-20 at 32×32, fp32)
EARLY_STOP_STEPS = 0.85            # joint PGD took 20.6 of 25 and 9.9 of 10 steps: about this share of T
# ccfast.evaluate per 10k-sample file: 5.5 s of features alone (56fefaa); four concurrent calls of ~17 files
# each had not finished after 264 s, so together they scored fewer than one file per 3.9 s: the GPU is the limit.
EVAL_FILE_S = 5.5
EVAL_CALL_S = 20.0                 # the first call: start, network, the reference's statistics (then cached)
GEN_ITER_S = {"ct": 0.106}         # s per iCT iteration of the 15.6M UNet, batch 256, bf16 (both runs' calibration)
ACT_ITER_FACTOR = 1.26             # ACT's discriminator adds 26% per iteration (README, ACT)
SAMPLE_FILE_S = 2.5                # 10k samples of the 15.6M UNet at 1-2 steps, warm-up included
CLASSIFIER_MIN = {"robust": 1.88 / 2000, "joint": 3.7 / 2000}  # minutes per ccfast.train iteration, ResNet-20
# One torch.compile + CUDA-graph capture per triton refine call: its four calls at 56fefaa took 23-29 s beyond
# their loops; those loops were 2.5x as fast as the reference's on ResNet-20 at 32x32, batch 1000.
FAST_ENGINE_SETUP_S = 27.0
FAST_ENGINE_SPEEDUP = 2.5
ARCH_FACTOR = {"cifar_resnet20": 1.0, "cifar_resnet56": 2.8}
# Refinements run `workers` at a time (run.py --workers) share one GPU: this share of a linear speed-up (process
# start-up overlaps fully, GPU work partly). Measured at 56fefaa: 54 untimed jobs, 480 s alone by this model, took
# 162 s with 4 workers (0.74).
CONCURRENCY_EFFICIENCY = 0.75


def refine_seconds(job, n: int) -> float:
    from ccfast.config import PRESETS

    preset = PRESETS[job.preset]
    steps = job.overrides.get("steps", preset["steps"])
    if preset["early_stop"] != "none":
        steps *= EARLY_STOP_STEPS
    loop = (REFINE_LOOP_BASE_S + REFINE_STEP_S[preset["method"]] * steps) * n / 10000
    if job.engine != "torch":
        return REFINE_CALL_OVERHEAD_S + FAST_ENGINE_SETUP_S + loop / FAST_ENGINE_SPEEDUP
    return REFINE_CALL_OVERHEAD_S + loop


def estimate(cfg, workers: int) -> dict[str, float]:
    """Estimated minutes per stage group on one H200."""
    factor = ARCH_FACTOR.get(cfg.clf_arch, 1.0)
    jobs = refine_plan(cfg, alpha_scale=1.0)  # any c: the cost does not depend on it
    speedup = max(1.0, workers * CONCURRENCY_EFFICIENCY)
    timed = sum(refine_seconds(j, cfg.n_eval) for j in jobs if j.timed)
    untimed = sum(refine_seconds(j, cfg.n_eval) for j in jobs if not j.timed)
    n_raw = len(raw_samples(cfg)) + cfg.n_train_fakes / cfg.n_eval
    minutes = {
        "generators": (cfg.gen_minutes * (2 if cfg.train_act else 1) + sum(cfg.extra_gen_minutes())
                       if cfg.gen_iters is None else
                       cfg.gen_iters * GEN_ITER_S["ct"] * (1 + (ACT_ITER_FACTOR if cfg.train_act else 0)) / 60),
        "samples": n_raw * SAMPLE_FILE_S * cfg.n_eval / 10000 / 60,
        "classifiers": factor * (CLASSIFIER_MIN["robust"] * cfg.robust.iters
                                 + CLASSIFIER_MIN["joint"] * cfg.joint.iters),
        "refine": factor * (timed + untimed / speedup) / 60,
        "eval": (EVAL_CALL_S + (len(jobs) + len(raw_samples(cfg))) * EVAL_FILE_S * cfg.n_eval / 10000) / 60,
    }
    minutes["total"] = sum(minutes.values())
    return minutes


def print_plan(cfg, workers: int) -> None:
    jobs = refine_plan(cfg)
    groups = Counter(j.group for j in jobs)
    print(f"refinements: {len(jobs)} ({', '.join(f'{g} {n}' for g, n in groups.items())}); the {SCALED} budget jobs "
          f"get α = c·ε/T once c is chosen from {list(cfg.alpha_scales)}")
    for job in jobs:
        extra = f" engine={job.engine}" if job.engine != "torch" else ""
        print(f"  {job.group:9s} {job.name:34s} {job.classifier:6s} --preset {job.preset} {job.overrides}{extra}")
    print(f"raw sample files evaluated: {len(raw_samples(cfg))}")
    est = estimate(cfg, workers)
    print(f"estimated H200 minutes with --workers {workers}, every stage in sequence (rates from earlier runs' "
          "records; see benchmarks/quality/estimate.py):")
    for name, value in est.items():
        print(f"  {name:12s} {value:6.1f}")
