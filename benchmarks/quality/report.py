"""The benchmark's report: a CSV and a markdown table, a FID-vs-refinement-steps plot and a before/after image grid.

Everything is read back from OUT (stage records OUT/stages/*.json, metrics OUT/metrics/*.json, the refine CLI's
OUT.npz.json, the training CLI's metrics.jsonl), so a report can be rebuilt at any time without a GPU.
Measured numbers and the published ImageNet-64 numbers (SPEC §6) are kept in separate tables and files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ccfast.io_utils import atomic_path, write_text_atomic

from .plan import budget_point_name, minutes_generator, sample_name

METHOD_LABELS = {"bigroc": "BIGROC", "paper": "joint PGD (paper)", "sgld": "joint SGLD"}
BUDGET_LABELS = {"bigroc": "BIGROC (robust clf., ce, α=1.5ε/T)", "paper": "joint PGD, eq12, α=0.1 (paper)",
                 "scaled": "joint PGD, eq12, α=c·ε/T", "joint_ce": "ablation: joint model, ce (BIGROC's recipe)",
                 "robust_eq12": "ablation: robust clf., eq12 (paper's recipe)"}
# Two means differ beyond the seed spread when |Δ| > SPREAD_FACTOR × the larger of their standard deviations.
SPREAD_FACTOR = 2.0

# SPEC §6: published, ImageNet 64×64, 50k samples. Never mixed with the measured rows.
PUBLISHED = [
    ("Consistency Distillation (LPIPS)", "1 / 2", "6.20 / 4.70", "Song et al. 2023, Table 2"),
    ("Consistency Training", "1 / 2", "13.0 / 11.1", "Song et al. 2023, Table 2"),
    ("ACT (adversarial consistency training)", "1", "10.6", "Kong et al. 2023"),
    ("this method on CT / CD", "—", "−27.48% / −20.96% relative, and 11.2% better than BIGROC", "Golan et al. 2024"),
    ("iCT / ECT / sCT, for context", "1", "4.02 / 2.49 / 2.04", "sCM paper table"),
]

CSV_COLUMNS = ["row", "samples", "generator", "sampler_steps", "method", "fid", "fid_std", "n_seeds", "fid_per_seed",
               "fid_change_vs_unrefined_pct", "precision", "recall", "num_samples", "grad_steps_per_image",
               "refine_seconds_per_10k", "sampling_seconds_per_10k", "generator_gpu_minutes", "classifier_gpu_minutes",
               "card", "versions"]
BUDGET_COLUMNS = ["method", "label", "budget", "fid", "fid_std", "n_seeds", "fid_per_seed", "grad_steps_per_image",
                  "early_stopping", "alpha", "precision", "recall", "samples"]
ENGINE_COLUMNS = ["samples", "method", "engine", "fid_reference", "fid_engine", "fid_change_pct", "within_1pct",
                  "refine_seconds_per_10k_reference", "refine_seconds_per_10k_engine", "engine_setup_seconds",
                  "engine_options", "mean_steps_reference", "mean_steps_engine"]
MINUTES_COLUMNS = ["generator", "budget_minutes", "gpu_minutes", "iterations", "samples", "method", "fid", "precision",
                   "recall"]

GRID_ROWS = ["ct_1step", "ct_1step_bigroc", "ct_1step_paper", "ct_1step_sgld", "ct_2step", "ct_2step_bigroc",
             "ct_2step_paper", "ct_2step_sgld", "act_1step", "act_2step"]


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class RunData:
    """Read-only view of a suite's output folder."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def record(self, stage: str) -> dict | None:
        return _read_json(self.out / "stages" / f"{stage}.json")

    def metrics(self, name: str) -> dict | None:
        rec = self.record(f"eval_{name}")
        return _read_json(self.out / "metrics" / f"{name}.json") if rec else None

    def refine_meta(self, name: str) -> dict | None:
        return _read_json(self.out / "refined" / f"{name}.npz.json") if self.record(f"refine_{name}") else None

    def samples_path(self, name: str) -> Path:
        raw = self.out / "samples" / f"{name}.npz"
        return raw if raw.exists() else self.out / "refined" / f"{name}.npz"

    def generator_minutes(self, gen: str) -> float | None:
        rec = self.record(f"gen_{gen}")
        return rec["info"]["gpu_minutes"] if rec else None

    def classifier_minutes(self, kind: str) -> float | None:
        rec = self.record(f"clf_{kind}")
        return rec["info"].get("gpu_minutes") if rec else None  # None also for a given, untrained classifier

    def card(self, stage: str) -> str:
        rec = self.record(stage)
        if not rec:
            return ""
        env, info = rec.get("env", {}), rec.get("info", {})
        device = str(info.get("device") or (info.get("refine") or {}).get("device") or "")
        gpus = env.get("gpus") or []
        return gpus[0] if gpus and device.startswith("cuda") else "CPU"

    def versions(self, stage: str) -> str:
        env = (self.record(stage) or {}).get("env", {})
        if not env:
            return ""
        return (f"torch {env.get('torch')}, CUDA {env.get('cuda')}, ccfast {env.get('ccfast')}, "
                f"commit {env.get('git', '?')[:12]}")


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def exceeds_spread(a: dict, b: dict) -> bool | None:
    """Whether the FID means of two rows differ by more than SPREAD_FACTOR × the larger std (None: unmeasured)."""
    stds = [r.get("fid_std") for r in (a, b)]
    if any(s is None for s in stds):
        return None
    return abs(a["fid"] - b["fid"]) > SPREAD_FACTOR * max(stds)


def _spread_words(a: dict, b: dict) -> str:
    verdict = exceeds_spread(a, b)
    if verdict is None:
        return "spread not measured (one seed)"
    return (f"{'exceeds' if verdict else 'within'} the seed spread (|Δ| {abs(a['fid'] - b['fid']):.2f} vs "
            f"{SPREAD_FACTOR:g}× std {max(a['fid_std'], b['fid_std']):.2f})")


def seed_row(run: RunData, names: list[str]) -> dict | None:
    """FID/precision/recall over the seeds' files that were evaluated, and the refinement facts of each."""
    found = [(n, run.metrics(n)) for n in names]
    found = [(n, m) for n, m in found if m is not None]
    if not found:
        return None
    fid, fid_std = mean_std([m["fid"] for _, m in found])
    metas = [run.refine_meta(n) for n, _ in found]
    steps = [meta["summary"]["mean_steps"] for meta in metas if meta]
    return {"fid": fid, "fid_std": fid_std, "n_seeds": len(found),
            "fid_per_seed": ";".join(f"{m['fid']:.3f}" for _, m in found),
            "precision": mean_std([m.get("precision") for _, m in found])[0],
            "recall": mean_std([m.get("recall") for _, m in found])[0], "num_samples": found[0][1].get("num_samples"),
            "grad_steps_per_image": mean_std(steps)[0] if steps else 0.0, "first": found[0][0]}


def main_rows(run: RunData, cfg) -> list[dict]:
    """The headline table: raw CT at 1/2 steps, ACT, and each preset on CT, as mean ± std over the seeds."""
    rows = []
    lab = cfg.generator_label
    specs = [(f"{lab} {s}-step", "ct", s, None) for s in (1, 2)]
    if cfg.train_act:
        specs += [(f"ACT {s}-step", "act", s, None) for s in (1, 2)]
    specs += [
        (f"{lab} {s}-step + {METHOD_LABELS.get(m, m)}", "ct", s, m) for s in cfg.refine_steps for m in cfg.methods
    ]
    unrefined = {}
    for label, gen, steps, method in specs:
        seeds = range(cfg.n_seeds if gen == "ct" else 1)
        names = [sample_name(gen, steps, k) + (f"_{method}" if method else "") for k in seeds]
        r = seed_row(run, names)
        if r is None:
            continue
        if method is None and gen == "ct":
            unrefined[steps] = r
        base = unrefined.get(steps) if (method or gen != "ct") else None
        meta = run.refine_meta(names[0]) if method else None
        samples_rec = run.record(f"samples_{gen}")
        classifiers = ([] if method is None else ["robust"] if method == "bigroc" else ["robust", "joint"])
        clf_minutes = [run.classifier_minutes(k) for k in classifiers]
        stage_for_card = f"refine_{names[0]}" if method else f"gen_{gen}"
        rows.append(
            {
                **r,
                "row": label,
                "samples": names[0],
                "generator": gen.upper(),
                "sampler_steps": steps,
                "method": method or "none",
                "fid_change_vs_unrefined_pct": 100.0 * (r["fid"] - base["fid"]) / base["fid"] if base else None,
                "refine_seconds_per_10k": (meta["timings"]["refine_s_rank0"] * 10000 / meta["summary"]["n"])
                if meta
                else 0.0,
                "sampling_seconds_per_10k": (samples_rec or {}).get("info", {}).get(f"seconds_per_10k_{steps}step"),
                "generator_gpu_minutes": run.generator_minutes(gen),
                "classifier_gpu_minutes": (sum(clf_minutes) if None not in clf_minutes else None)
                if classifiers
                else 0.0,
                "card": run.card(stage_for_card),
                "versions": run.versions(stage_for_card),
            }
        )
    return rows


def budget_points(run: RunData, cfg) -> list[dict]:
    """The equal-budget comparison on CT `budget_steps`-step samples: one point per (method, T), over the seeds."""
    points = []
    raw = seed_row(run, [sample_name("ct", cfg.budget_steps, k) for k in range(cfg.n_seeds)])
    if raw:
        points.append({**raw, "method": "unrefined", "label": "unrefined", "budget": 0, "grad_steps_per_image": 0.0,
                       "early_stopping": False, "samples": raw["first"]})
    for method in cfg.budget_methods:
        seeds = range(cfg.n_seeds if method in cfg.budget_methods_all_seeds else 1)
        for steps in cfg.budgets:
            names = [budget_point_name(cfg, sample_name("ct", cfg.budget_steps, k), method, steps) for k in seeds]
            r = seed_row(run, names)
            if r is None:
                continue
            meta = run.refine_meta(names[0]) or {}
            conf = meta.get("config", {})
            points.append({**r, "method": method, "label": BUDGET_LABELS.get(method, method), "budget": steps,
                           "early_stopping": conf.get("early_stop", "none") != "none", "alpha": conf.get("alpha"),
                           "samples": names[0]})
    return points


def engine_rows(run: RunData, jobs: list) -> list[dict]:
    """Each fast-engine refinement beside the reference's of the same samples and preset."""
    rows = []
    for job in jobs:
        if job.group != "engine":
            continue
        ref_name = f"{job.input}_{job.method}"
        mr, mf = run.metrics(ref_name), run.metrics(job.name)
        ar, af = run.refine_meta(ref_name), run.refine_meta(job.name)
        if not (mr and mf and ar and af):
            continue
        t = af["timings"]
        setup = sum(v for k, v in t.items() if k in ("compile_s", "prepare_s") and isinstance(v, (int, float)))
        setup += sum((t.get("capture_s") or {}).values()) if isinstance(t.get("capture_s"), dict) else 0.0
        change = 100.0 * (mf["fid"] - mr["fid"]) / mr["fid"]
        rows.append(
            {
                "samples": job.input,
                "method": job.method,
                "engine": job.engine,
                "fid_reference": mr["fid"],
                "fid_engine": mf["fid"],
                "fid_change_pct": change,
                "within_1pct": abs(change) <= 1.0,
                "refine_seconds_per_10k_reference": ar["timings"]["refine_s_rank0"] * 10000 / ar["summary"]["n"],
                "refine_seconds_per_10k_engine": t["refine_s_rank0"] * 10000 / af["summary"]["n"],
                "engine_setup_seconds": setup,
                "engine_options": json.dumps(t.get("options", {})),
                "mean_steps_reference": ar["summary"]["mean_steps"],
                "mean_steps_engine": af["summary"]["mean_steps"],
            }
        )
    return rows


def minutes_rows(run: RunData, cfg) -> list[dict]:
    """FID against generator training minutes: each smaller CT budget and the main one, raw and refined."""
    rows = []
    gens = [(minutes_generator(m), m) for m in cfg.extra_gen_minutes()] + [("ct", cfg.gen_minutes)]
    for gen, minutes in gens:
        rec = run.record(f"gen_{gen}")
        if rec is None:
            continue
        for steps in (1, 2):
            for method in (None, "bigroc", "paper"):
                name = sample_name(gen, steps) + (f"_{method}" if method else "")
                m = run.metrics(name)
                if m is None:
                    continue
                rows.append({"generator": gen, "budget_minutes": minutes, "gpu_minutes": rec["info"].get("gpu_minutes"),
                             "iterations": rec["info"].get("iterations"), "samples": f"{steps}-step",
                             "method": method or "none", "fid": m["fid"], "precision": m.get("precision"),
                             "recall": m.get("recall")})
    return rows


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def findings(run: RunData, rows: list[dict], cfg) -> tuple[list[str], list[str]]:
    """Plain statements of what the measured table shows (with the seed spread), and the diagnostics."""
    by = {r["samples"]: r for r in rows}
    lines = []
    for steps in (1, 2):
        raw, big, pgd, sgld = (by.get(f"ct_{steps}step{s}") for s in ("", "_bigroc", "_paper", "_sgld"))
        if not raw:
            continue
        parts = []
        for r, name in ((big, "BIGROC"), (pgd, "joint PGD"), (sgld, "joint SGLD")):
            if r:
                verdict = "improves on" if r["fid"] < raw["fid"] else "does not improve on"
                parts.append(f"{name} {verdict} the raw samples (FID {r['fid']:.2f} vs {raw['fid']:.2f}, "
                             f"{r['fid_change_vs_unrefined_pct']:+.1f}%; {_spread_words(r, raw)})")
        if big and pgd:
            verdict = "lower" if pgd["fid"] < big["fid"] else "NOT lower"
            rel = 100.0 * (pgd["fid"] - big["fid"]) / big["fid"]
            parts.append(
                f"joint PGD's FID is {verdict} than BIGROC's ({pgd['fid']:.2f} vs {big['fid']:.2f}, {rel:+.1f}%, "
                f"at {pgd['grad_steps_per_image']:.1f} vs {big['grad_steps_per_image']:.1f} gradient steps per "
                f"image; {_spread_words(pgd, big)}; the paper reports 11.2% on ImageNet 64)"
            )
        if parts:
            lines.append(
                f"{cfg.generator_label} {steps}-step, mean of {raw['n_seeds']} seed(s): " + "; ".join(parts) + "."
            )
        act = by.get(f"act_{steps}step")
        if act:
            lines.append(f"ACT {steps}-step: FID {act['fid']:.2f} vs CT {raw['fid']:.2f} at the same training budget "
                         "(one seed of sampling).")
    if sgld := by.get("ct_1step_sgld") or by.get("ct_2step_sgld"):
        meta = run.refine_meta(sgld["samples"])
        if meta:
            lines.append(f"SGLD runs with α = {meta['config']['alpha']:g} per example (the official step: boost.py's "
                         "α = 0.2 on the mean over batches of 100); mean ℓ_fake "
                         f"{meta['summary']['mean_realness_init']:.2f} → {meta['summary']['mean_realness_final']:.2f}.")
    diag = []
    joint = run.record("clf_joint")
    if joint:
        ev = (joint["info"].get("last_eval") or {})
        test = joint["info"].get("test", {})
        if ev:
            diag.append(f"joint model after training: ℓ0 {_fmt(ev.get('ell0'), 4)}, clean D(held-out real) "
                        f"{_fmt(ev.get('heldout_D'), 3)} vs D(CT samples) {_fmt(ev.get('gen_D'), 3)} (gap "
                        f"{_fmt(ev.get('clean_realness_gap'), 3)}; a gap near 0 means it barely tells them apart, "
                        "so Eq. 12 has little realness signal)")
        if test:
            diag.append(f"joint model on the test set: accuracy {_fmt(test.get('test_accuracy'), 4)}, "
                        f"L2-PGD(ε=0.5) accuracy {_fmt(test.get('robust_accuracy_l2_0.5'), 4)}")
    robust = run.record("clf_robust")
    if robust and robust["info"].get("test"):
        test = robust["info"]["test"]
        diag.append(f"BIGROC classifier on the test set: accuracy {_fmt(test.get('test_accuracy'), 4)}, L2-PGD(ε=0.5) "
                    f"accuracy {_fmt(test.get('robust_accuracy_l2_0.5'), 4)} (BIGROC presumes a robust classifier)")
    for steps in (1, 2):
        meta = run.refine_meta(f"ct_{steps}step_paper")
        if meta:
            s = meta["summary"]
            diag.append(
                f"joint PGD on {cfg.generator_label} {steps}-step (first seed): mean {s['mean_steps']:.2f} steps, "
                f"{100 * s['unchanged_fraction']:.1f}% untouched (already at ℓ_fake ≥ τ), "
                f"{100 * s['stopped_fraction']:.1f}% early-stopped, mean ℓ_fake "
                f"{s['mean_realness_init']:.3f} → {s['mean_realness_final']:.3f}, τ = {_fmt(meta.get('tau'), 4)}"
            )
    return lines, diag


def budget_findings(points: list[dict], cfg, calibration: dict | None) -> list[str]:
    """At each budget: the best method, and joint PGD (either step rule) against BIGROC, with the spread."""
    lines = []
    if calibration:
        lines.append(
            f"α = c·ε/T uses c = {calibration['alpha_scale']:g}, chosen on {calibration['calibration_samples']} "
            f"samples (lowest mean FID over T = {', '.join(str(t) for t in cfg.calibrate_budgets)} among c = "
            f"{', '.join(f'{c:g}' for c in cfg.alpha_scales)}) and reported here on {cfg.generator_label} "
            f"{cfg.budget_steps}-step "
            + (
                "samples, which played no part in choosing it."
                if cfg.budget_steps != cfg.calibrate_steps
                else "samples: the SAME samples it was chosen on (these settings do not hold them apart)."
            )
        )
    at = {(p["method"], p["budget"]): p for p in points}
    for steps in cfg.budgets:
        here = [p for p in points if p["budget"] == steps]
        if not here:
            continue
        best = min(here, key=lambda p: p["fid"])
        parts = [f"lowest FID {best['fid']:.2f}: {best['label']}"]
        big = at.get(("bigroc", steps))
        for method in ("paper", "scaled"):
            joint = at.get((method, steps))
            if big and joint:
                rel = 100.0 * (joint["fid"] - big["fid"]) / big["fid"]
                parts.append(f"{BUDGET_LABELS[method]} vs BIGROC {rel:+.1f}% ({joint['grad_steps_per_image']:.1f} vs "
                             f"{big['grad_steps_per_image']:.1f} steps/img; {_spread_words(joint, big)})")
        lines.append(f"T = {steps}: " + "; ".join(parts) + ".")
    for a, b, what in (("joint_ce", "bigroc", "the model (same ce recipe: joint model vs robust classifier)"),
                       ("robust_eq12", "paper", "the objective's partner (same eq12 recipe: robust vs joint model)")):
        pairs = [(at.get((a, t)), at.get((b, t))) for t in cfg.budgets]
        pairs = [(x, y) for x, y in pairs if x and y]
        if pairs:
            diffs = ", ".join(f"T={x['budget']}: {x['fid']:.2f} vs {y['fid']:.2f}" for x, y in pairs)
            lines.append(f"Ablation, what changing {what} does (first seed only): {diffs}.")
    return lines


def targets(rows: list[dict], points: list[dict], engines: list[dict], cfg) -> list[str]:
    """The issue's targets (joint ≥ 15% below BIGROC at equal budget, ≥ 25% below raw; fast engine within 1%),
    each with what this run measured: met, not met, or not measured."""
    out = []
    at = {(p["method"], p["budget"]): p for p in points}
    rels = []
    for steps in cfg.budgets:
        big = at.get(("bigroc", steps))
        joints = [at[(m, steps)] for m in ("paper", "scaled") if (m, steps) in at]
        if big and joints:
            best = min(joints, key=lambda p: p["fid"])
            rels.append((steps, 100.0 * (best["fid"] - big["fid"]) / big["fid"], best["method"]))
    if rels:
        met = [f"T={t}" for t, r, _ in rels if r <= -15.0]
        out.append("joint refinement ≥ 15% lower FID than BIGROC at equal budget: "
                   + ", ".join(f"T={t} {r:+.1f}% ({m})" for t, r, m in rels)
                   + (f" — met at {', '.join(met)}" if met else " — not met at any budget"))
    else:
        out.append("joint vs BIGROC at equal budget: not measured in this run")
    by = {r["samples"]: r for r in rows}
    for steps in cfg.refine_steps:
        pgd = by.get(f"ct_{steps}step_paper")
        if pgd and pgd.get("fid_change_vs_unrefined_pct") is not None:
            change = pgd["fid_change_vs_unrefined_pct"]
            out.append(f"joint PGD ≥ 25% below the raw {cfg.generator_label} {steps}-step samples: {change:+.1f}% — "
                       + ("met" if change <= -25.0 else "not met"))
    if engines:
        worst = max(engines, key=lambda e: abs(e["fid_change_pct"]))
        out.append(f"fast-engine FID within 1% of the reference's: largest |Δ| {abs(worst['fid_change_pct']):.2f}% "
                   f"({worst['samples']} {worst['method']}) — " + ("met" if all(e["within_1pct"] for e in engines)
                                                                   else "not met"))
    else:
        out.append("fast engine vs reference: not measured in this run (no --engine rows)")
    return out


def why_joint_loses(run: RunData, rows: list[dict], cfg) -> list[str]:
    """When joint PGD does not beat BIGROC: the measured facts that could explain it, each checked, not assumed."""
    by = {r["samples"]: r for r in rows}
    losing = [s for s in (1, 2) if by.get(f"ct_{s}step_paper") and by.get(f"ct_{s}step_bigroc")
              and by[f"ct_{s}step_paper"]["fid"] >= by[f"ct_{s}step_bigroc"]["fid"]]
    if not losing:
        return []
    reasons = []
    joint, robust = run.record("clf_joint"), run.record("clf_robust")
    ev = (joint or {}).get("info", {}).get("last_eval") or {}
    gap = ev.get("clean_realness_gap")
    if gap is not None and gap < 0.05:
        reasons.append(
            f"the joint model hardly tells real from generated images (clean D gap {gap:.3f}), so the realness "
            "term of Eq. 12 carries little signal and refinement is driven mostly by its CE term"
        )
    key = "robust_accuracy_l2_0.5"
    j_rob = (joint or {}).get("info", {}).get("test", {}).get(key)
    r_rob = (robust or {}).get("info", {}).get("test", {}).get(key)
    if j_rob is not None and r_rob is not None and j_rob < r_rob:
        reasons.append(
            f"joint training lowered robustness (L2-PGD accuracy {j_rob:.3f} vs BIGROC's classifier {r_rob:.3f}); "
            "BIGROC's premise is that a robust model's input gradients are perceptually aligned"
        )
    for s in losing:
        meta, big = run.refine_meta(f"ct_{s}step_paper"), by[f"ct_{s}step_bigroc"]
        if not meta:
            continue
        summ = meta["summary"]
        if summ["unchanged_fraction"] > 0.3:
            reasons.append(
                f"{cfg.generator_label} {s}-step: {100 * summ['unchanged_fraction']:.0f}% of the samples were "
                "already at "
                f"ℓ_fake ≥ τ = ℓ0 and were left untouched by the early-stop rule"
            )
        if summ["mean_steps"] < big["grad_steps_per_image"]:
            reasons.append(
                f"{cfg.generator_label} {s}-step: joint PGD spent fewer gradient steps per image than BIGROC "
                f"({summ['mean_steps']:.1f} vs {big['grad_steps_per_image']:.1f})"
            )
    if cfg.dataset != "cifar10":
        reasons = reasons or ["none of the recorded diagnostics flags a cause"]
        return [f"joint PGD does not beat BIGROC for {cfg.generator_label} {', '.join(f'{s}-step' for s in losing)}; "
                "measured facts that bear on why:"] + [f"  - {r}" for r in reasons]
    reasons.append(
        "context: both classifiers were trained for minutes (a few thousand iterations of a small CIFAR ResNet) and "
        "the generators are weak; the paper's joint model is a robust ResNet-50 fine-tuned on ImageNet 64 for far "
        "longer"
    )
    reasons.append(
        "context: the training images are JPEG-q75 and the FID reference is lossless: a discriminator can learn JPEG "
        "artefacts as realness, and moving samples toward them costs FID against the lossless test set"
    )
    return [f"joint PGD does not beat BIGROC for CT {', '.join(f'{s}-step' for s in losing)}; measured facts that bear "
            "on why (from this run's records, then context):"] + [f"  - {r}" for r in reasons]


def provenance(run: RunData) -> list[str]:
    commits, cards, versions, lines = {}, set(), set(), []
    for rec_path in sorted((run.out / "stages").glob("*.json")):
        rec = _read_json(rec_path) or {}
        env = rec.get("env", {})
        commits.setdefault(env.get("git", "?"), []).append(rec.get("name", rec_path.stem))
        cards.update(env.get("gpus") or ["CPU only"])
        versions.add(f"Python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
                     f"numpy {env.get('numpy')}, ccfast {env.get('ccfast')}")
    for commit, stages in commits.items():
        lines.append(f"commit {commit}: {len(stages)} stage(s)")
    if cards:
        lines.append("cards: " + ", ".join(sorted(cards)))
    lines += [f"versions: {v}" for v in sorted(versions)]
    return lines


def _fid(r: dict) -> str:
    return _fmt(r["fid"]) + (f" ± {r['fid_std']:.2f}" if r.get("fid_std") is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(run: RunData, cfg, rows, points, engines, minutes, calibration) -> str:
    out = ["# Quality benchmark: refining consistency-model samples on CIFAR-10", ""]
    if cfg.smoke:
        out += ["**SMOKE RUN: tiny models, a few dozen images and a stand-in feature network. These numbers are not "
                "FIDs and mean nothing; they only show that the pipeline runs.**", ""]
    intro = cfg.intro or (
        "Measured here: class-conditional consistency models trained from scratch on the CIFAR-10 training set "
        "(JPEG-q75 shards) with iCT" + (" and with ACT" if cfg.train_act else "") + ", refined by ccfast, scored by "
        f"`ccfast.evaluate` against the lossless CIFAR-10 test set. FID on {cfg.n_eval} samples per file, biased "
        "upward relative to 50k and not comparable with published CIFAR-10 or ImageNet numbers; compare rows with "
        "each other.")
    out += [
        intro
        + f" {cfg.generator_label} rows: mean ± sample std over {cfg.n_seeds} seed(s) of sampling and refinement "
          "(generators "
        "and classifiers trained once); a difference is said to exceed the spread when it is more than "
        f"{SPREAD_FACTOR:g}× the larger std. ΔFID is relative to the unrefined samples of the same step count.",
        "",
    ]
    out += _table(
        [
            "row",
            "FID",
            "ΔFID vs unrefined",
            "precision",
            "recall",
            "N",
            "seeds",
            "grad steps/img",
            "refine s/10k",
            "sampling s/10k",
            "generator GPU-min",
            "classifier GPU-min",
            "card",
        ],
        [
            [
                r["row"],
                _fid(r),
                _fmt(r["fid_change_vs_unrefined_pct"], 1)
                + ("%" if r["fid_change_vs_unrefined_pct"] is not None else ""),
                _fmt(r["precision"], 3),
                _fmt(r["recall"], 3),
                _fmt(r["num_samples"]),
                str(r["n_seeds"]),
                _fmt(r["grad_steps_per_image"]),
                _fmt(r["refine_seconds_per_10k"], 1),
                _fmt(r["sampling_seconds_per_10k"], 1),
                _fmt(r["generator_gpu_minutes"], 1),
                _fmt(r["classifier_gpu_minutes"], 1),
                r["card"],
            ]
            for r in rows
        ],
    )
    out += ["", "Columns: grad steps/img = mean gradient steps per image; refine s/10k = wall-clock seconds of the "
            "refinement loop per 10,000 images on the reference engine (torch, fp32; model loading excluded; first "
            "seed, run alone on the card); sampling s/10k = generator sampling time; GPU-minutes = wall-clock training "
            "time on one card (the joint model's include the robust classifier it starts from).", ""]
    lines, diag = findings(run, rows, cfg)
    out += ["## Findings (generated from the numbers above)", ""] + [f"- {x}" for x in lines] + [""]
    out += ["Targets (the method's reason to exist; whatever was measured):", ""]
    out += [f"- {x}" for x in targets(rows, points, engines, cfg)] + [""]
    if diag:
        out += ["Diagnostics:", ""] + [f"- {x}" for x in diag] + [""]
    why = why_joint_loses(run, rows, cfg)
    if why:
        out += (
            [
                "**Why the joint model may not beat BIGROC here** (checked against this run's records; the committer "
                "adds "
                "anything else they know):",
                "",
            ]
            + [f"- {why[0]}"]
            + why[1:]
            + [""]
        )
    if points:
        out += [
            f"## Equal gradient budget ({cfg.generator_label} {cfg.budget_steps}-step samples)",
            "",
            "![FID vs gradient steps](fid_vs_steps.png)",
            "",
            "Each cell: FID (± std over the seeds where more than one ran) and, for early-stopping methods, the mean "
            "gradient steps actually taken per image (the budget T is the cap).",
            "",
        ]
        methods = [m for m in cfg.budget_methods if any(p["method"] == m for p in points)]
        cell = {(p["method"], p["budget"]): p for p in points}

        def fmt_cell(p):
            if p is None:
                return "—"
            steps = f" ({p['grad_steps_per_image']:.1f} steps)" if p["early_stopping"] else ""
            return _fid(p) + steps

        out += _table(["method"] + [f"T = {t}" for t in cfg.budgets],
                      [[BUDGET_LABELS.get(m, m) + (f" [{cfg.n_seeds} seeds]" if m in cfg.budget_methods_all_seeds
                                                    and cfg.n_seeds > 1 else " [1 seed]")]
                       + [fmt_cell(cell.get((m, t))) for t in cfg.budgets] for m in methods])
        raw = cell.get(("unrefined", 0))
        if raw:
            out += ["", f"Unrefined: FID {_fid(raw)}. Precision/recall of every point: `quality_budget.csv`.", ""]
        out += [f"- {x}" for x in budget_findings(points, cfg, calibration)] + [""]
    if calibration:
        out += ["### Choosing c of α = c·ε/T (calibration samples only)", ""]
        cal = {(p["alpha_scale"], p["budget"]): p["fid"] for p in calibration["points"]}
        out += _table(["c"] + [f"T = {t}" for t in cfg.calibrate_budgets] + ["mean"],
                      [[f"{c:g}" + (" (chosen)" if c == calibration["alpha_scale"] else "")]
                       + [_fmt(cal.get((c, t))) for t in cfg.calibrate_budgets]
                       + [_fmt(calibration["mean_fid"].get(str(c), calibration["mean_fid"].get(c)))]
                       for c in cfg.alpha_scales]) + [""]
    if engines:
        out += ["## Reference engine vs fast engine (same samples, same preset, first seed)", ""]
        out += _table(["samples", "preset", "engine", "FID reference", "FID engine", "ΔFID", "within 1%",
                       "s/10k reference", "s/10k engine", "engine set-up s", "mean steps ref / engine"],
                      [[e["samples"], e["method"], e["engine"], _fmt(e["fid_reference"]), _fmt(e["fid_engine"]),
                        f"{e['fid_change_pct']:+.2f}%", "yes" if e["within_1pct"] else "NO",
                        _fmt(e["refine_seconds_per_10k_reference"], 2), _fmt(e["refine_seconds_per_10k_engine"], 2),
                        _fmt(e["engine_setup_seconds"], 1),
                        f"{e['mean_steps_reference']:.2f} / {e['mean_steps_engine']:.2f}"] for e in engines])
        out += [
            "",
            "s/10k: the refinement loop per 10,000 images; the fast engine's compile and CUDA-graph capture are "
            "in its set-up column, not in its s/10k. Engine options: `quality_engines.csv`.",
            "",
        ]
    if len({m["generator"] for m in minutes}) > 1:
        out += ["## FID against generator minutes (CT; classifiers fixed, first seed)", "",
                "![FID vs minutes](fid_vs_minutes.png)", ""]
        out += _table(["generator", "budget min", "GPU-min", "iterations", "samples", "refinement", "FID"],
                      [[m["generator"], _fmt(m["budget_minutes"], 1), _fmt(m["gpu_minutes"], 1), _fmt(m["iterations"]),
                        m["samples"], m["method"], _fmt(m["fid"])] for m in minutes]) + [""]
        out += ["The classifiers were trained once, on samples of the main generator; smaller generators' samples are "
                "refined with the same ones.", ""]
    out += ["## Samples before and after (same seeds and labels in every row)", "", "![grid](grid.png)", ""]
    out += ["## Published numbers (ImageNet 64×64, FID on 50k samples) — published, not measured here", ""]
    out += _table(["generator", "steps", "FID", "source"], [list(p) for p in PUBLISHED]) + [""]
    out += ["These come from other models, another data set and 50k samples (SPEC.md §6); they are not comparable with "
            "the measured table, only with its relative changes.", ""]
    out += ["## Provenance", ""] + [f"- {x}" for x in provenance(run)]
    budgets = ", ".join(f"{m:g}" for m in (*cfg.extra_gen_minutes(), cfg.gen_minutes))
    out += [f"- settings: see `suite_config.json` in the run folder; generator budgets {budgets} min "
            f"(or {cfg.gen_iters} iterations), robust classifier {cfg.robust.iters} iterations, joint model "
            f"{cfg.joint.iters} iterations, {cfg.n_eval} samples per file, {cfg.n_seeds} seed(s)", ""]
    return "\n".join(out)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_fid_vs_steps(points: list[dict], cfg, path: Path) -> bool:
    """One curve per method: FID against the mean gradient steps per image, error bars = std over the seeds."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    origin = next((p for p in points if p["method"] == "unrefined"), None)
    styles = {"bigroc": "s-", "paper": "o-", "scaled": "D-", "joint_ce": "v--", "robust_eq12": "^--"}
    for method in cfg.budget_methods:
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["grad_steps_per_image"])
        if not pts:
            continue
        pts = ([origin] if origin else []) + pts
        ax.errorbar([p["grad_steps_per_image"] for p in pts], [p["fid"] for p in pts],
                    yerr=[p["fid_std"] or 0.0 for p in pts], fmt=styles.get(method, "o-"), capsize=3,
                    label=BUDGET_LABELS.get(method, method))
    ax.set_xlabel("gradient steps per image (mean taken; budgets " + ", ".join(map(str, cfg.budgets)) + ")")
    ax.set_ylabel(f"FID ({cfg.n_eval} samples per file)")
    ax.set_title(
        f"{cfg.generator_label} {cfg.budget_steps}-step samples at equal gradient budget (error bars: std over seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, plt, path)
    return True


def plot_fid_vs_minutes(minutes: list[dict], path: Path) -> bool:
    plt = _pyplot()
    if plt is None or len({m["generator"] for m in minutes}) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for steps in ("1-step", "2-step"):
        for method, style in (("none", "o-"), ("bigroc", "s--"), ("paper", "D:")):
            pts = sorted((m for m in minutes if m["samples"] == steps and m["method"] == method),
                         key=lambda m: m["budget_minutes"])
            if pts:
                ax.plot([m["gpu_minutes"] or m["budget_minutes"] for m in pts], [m["fid"] for m in pts], style,
                        label=f"{steps}, " + ("raw" if method == "none" else METHOD_LABELS[method]))
    ax.set_xlabel("generator training, GPU-minutes")
    ax.set_ylabel("FID")
    ax.set_title("CT generators: FID against training minutes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, plt, path)
    return True


def image_grid(run: RunData, path: Path, per_row: int = 10, scale: int = 3) -> bool:
    """One row per sample file, the same sample indices in every row (one image per class)."""
    from PIL import Image, ImageDraw

    names = [n for n in GRID_ROWS if run.samples_path(n).exists()]
    if not names:
        return False
    with np.load(run.samples_path(names[0])) as z:
        labels = z["arr_1"]
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(10) if (labels == c).any()][:per_row]
    size = 32 * scale
    label_w = 150
    canvas = Image.new("RGB", (label_w + len(picks) * (size + 2), len(names) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        with np.load(run.samples_path(name)) as z:
            images = z["arr_0"]
        draw.text((4, r * (size + 2) + size // 2 - 6), name, fill="black")
        for c, idx in enumerate(picks):
            tile = Image.fromarray(images[idx]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (size + 2), r * (size + 2)))
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return True


def build_report(out_dir: Path, results_dir: Path, cfg, jobs: list, log=print) -> list[Path]:
    run = RunData(out_dir)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = main_rows(run, cfg)
    points = budget_points(run, cfg)
    engines = engine_rows(run, jobs)
    minutes = minutes_rows(run, cfg)
    calibration = (run.record("calibrate") or {}).get("info")
    written = []

    def write(name, text):
        write_text_atomic(results_dir / name, text)
        written.append(results_dir / name)

    write("quality.csv", _csv_text(rows, CSV_COLUMNS))
    write("quality_budget.csv", _csv_text(points, BUDGET_COLUMNS))
    write("quality_engines.csv", _csv_text(engines, ENGINE_COLUMNS))
    write("quality_minutes.csv", _csv_text(minutes, MINUTES_COLUMNS))
    published = [{"generator": g, "steps": s, "fid": f, "source": src, "label": "published (ImageNet 64x64)"}
                 for g, s, f, src in PUBLISHED]
    write("published_imagenet64.csv", _csv_text(published, ["label", "generator", "steps", "fid", "source"]))
    if plot_fid_vs_steps(points, cfg, results_dir / "fid_vs_steps.png"):
        written.append(results_dir / "fid_vs_steps.png")
    elif _pyplot() is None:
        log("report: matplotlib is not installed; no plots drawn (the CSV files have the numbers)")
    if plot_fid_vs_minutes(minutes, results_dir / "fid_vs_minutes.png"):
        written.append(results_dir / "fid_vs_minutes.png")
    if image_grid(run, results_dir / "grid.png"):
        written.append(results_dir / "grid.png")
    write("quality.md", markdown(run, cfg, rows, points, engines, minutes, calibration))
    return written
