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

# label, samples name, generator, classifiers whose training it needs, refinement method (None: raw)
MAIN_ROWS = [
    ("CT 1-step", "ct_1step", "ct", [], None),
    ("CT 2-step", "ct_2step", "ct", [], None),
    ("ACT 1-step", "act_1step", "act", [], None),
    ("ACT 2-step", "act_2step", "act", [], None),
    ("CT 1-step + BIGROC", "ct_1step_bigroc", "ct", ["robust"], "bigroc"),
    ("CT 1-step + joint PGD (paper)", "ct_1step_paper", "ct", ["robust", "joint"], "paper"),
    ("CT 1-step + joint SGLD", "ct_1step_sgld", "ct", ["robust", "joint"], "sgld"),
    ("CT 2-step + BIGROC", "ct_2step_bigroc", "ct", ["robust"], "bigroc"),
    ("CT 2-step + joint PGD (paper)", "ct_2step_paper", "ct", ["robust", "joint"], "paper"),
    ("CT 2-step + joint SGLD", "ct_2step_sgld", "ct", ["robust", "joint"], "sgld"),
]

# SPEC §6: published, ImageNet 64×64, 50k samples. Never mixed with the measured rows.
PUBLISHED = [
    ("Consistency Distillation (LPIPS)", "1 / 2", "6.20 / 4.70", "Song et al. 2023, Table 2"),
    ("Consistency Training", "1 / 2", "13.0 / 11.1", "Song et al. 2023, Table 2"),
    ("ACT (adversarial consistency training)", "1", "10.6", "Kong et al. 2023"),
    ("this method on CT / CD", "—", "−27.48% / −20.96% relative, and 11.2% better than BIGROC", "Golan et al. 2024"),
    ("iCT / ECT / sCT, for context", "1", "4.02 / 2.49 / 2.04", "sCM paper table"),
]

CSV_COLUMNS = ["row", "samples", "generator", "sampler_steps", "method", "fid", "fid_change_vs_unrefined_pct",
               "precision", "recall", "num_samples", "grad_steps_per_image", "refine_seconds_per_10k",
               "sampling_seconds_per_10k", "generator_gpu_minutes", "classifier_gpu_minutes", "card", "versions"]

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
        return rec["info"]["gpu_minutes"] if rec else None

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
        return f"torch {env.get('torch')}, CUDA {env.get('cuda')}, ccfast {env.get('ccfast')}, commit {env.get('git', '?')[:12]}"


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def main_rows(run: RunData) -> list[dict]:
    rows = []
    for label, name, gen, classifiers, method in MAIN_ROWS:
        m = run.metrics(name)
        if m is None:
            continue
        steps = 1 if "1step" in name else 2
        unrefined = run.metrics(f"{gen}_{steps}step" if method else f"ct_{steps}step")
        change = None
        if unrefined and name != f"ct_{steps}step":
            change = 100.0 * (m["fid"] - unrefined["fid"]) / unrefined["fid"]
        meta = run.refine_meta(name) if method else None
        samples_rec = run.record(f"samples_{gen}")
        clf_minutes = [run.classifier_minutes(k) for k in classifiers]
        stage_for_card = f"refine_{name}" if method else f"gen_{gen}"
        rows.append({
            "row": label, "samples": name, "generator": gen.upper(), "sampler_steps": steps, "method": method or "none",
            "fid": m["fid"], "fid_change_vs_unrefined_pct": change, "precision": m.get("precision"),
            "recall": m.get("recall"), "num_samples": m.get("num_samples"),
            "grad_steps_per_image": meta["summary"]["mean_steps"] if meta else 0.0,
            "refine_seconds_per_10k": (meta["timings"]["refine_s_rank0"] * 10000 / meta["summary"]["n"]) if meta else 0.0,
            "sampling_seconds_per_10k": (samples_rec or {}).get("info", {}).get(f"seconds_per_10k_{steps}step"),
            "generator_gpu_minutes": run.generator_minutes(gen),
            "classifier_gpu_minutes": sum(clf_minutes) if classifiers and None not in clf_minutes else (0.0 if not classifiers else None),
            "card": run.card(stage_for_card), "versions": run.versions(stage_for_card),
        })
    return rows


def sweep_points(run: RunData, jobs: list[dict], sweep_input: str) -> list[dict]:
    """(method, T, mean steps, FID) for the FID-vs-steps curve: the sweep plus each method's preset row."""
    points = []
    raw = run.metrics(sweep_input)
    if raw:
        points.append({"method": "unrefined", "budget": 0, "grad_steps_per_image": 0.0, "fid": raw["fid"], "samples": sweep_input})
    for job in jobs:
        if job["input"] != sweep_input:
            continue
        m, meta = run.metrics(job["name"]), run.refine_meta(job["name"])
        if m is None or meta is None:
            continue
        points.append({"method": job["method"], "budget": meta["config"]["steps"],
                       "grad_steps_per_image": meta["summary"]["mean_steps"], "fid": m["fid"], "samples": job["name"]})
    return points


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def findings(run: RunData, rows: list[dict]) -> tuple[list[str], list[str]]:
    """Plain statements of what the measured table shows, and the diagnostics that bear on why."""
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
                             f"{r['fid_change_vs_unrefined_pct']:+.1f}%)")
        if big and pgd:
            verdict = "beats" if pgd["fid"] < big["fid"] else "does NOT beat"
            rel = 100.0 * (pgd["fid"] - big["fid"]) / big["fid"]
            parts.append(f"joint PGD {verdict} BIGROC (FID {pgd['fid']:.2f} vs {big['fid']:.2f}, {rel:+.1f}%; the paper "
                         "reports 11.2% better on ImageNet 64)")
        if parts:
            lines.append(f"CT {steps}-step: " + "; ".join(parts) + ".")
        act = by.get(f"act_{steps}step")
        if act:
            lines.append(f"ACT {steps}-step: FID {act['fid']:.2f} vs CT {raw['fid']:.2f} at the same training budget.")
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
            diag.append(f"joint PGD on CT {steps}-step: mean {s['mean_steps']:.2f} steps, {100 * s['unchanged_fraction']:.1f}% "
                        f"untouched (already at ℓ_fake ≥ τ), {100 * s['stopped_fraction']:.1f}% early-stopped, mean ℓ_fake "
                        f"{s['mean_realness_init']:.3f} → {s['mean_realness_final']:.3f}, τ = {_fmt(meta.get('tau'), 4)}")
    return lines, diag


def why_joint_loses(run: RunData, rows: list[dict]) -> list[str]:
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
        reasons.append(f"the joint model hardly tells real from generated images (clean D gap {gap:.3f}), so the realness "
                       "term of Eq. 12 carries little signal and refinement is driven mostly by its CE term")
    key = "robust_accuracy_l2_0.5"
    j_rob = (joint or {}).get("info", {}).get("test", {}).get(key)
    r_rob = (robust or {}).get("info", {}).get("test", {}).get(key)
    if j_rob is not None and r_rob is not None and j_rob < r_rob:
        reasons.append(f"joint training lowered robustness (L2-PGD accuracy {j_rob:.3f} vs BIGROC's classifier {r_rob:.3f}); "
                       "BIGROC's premise is that a robust model's input gradients are perceptually aligned")
    for s in losing:
        meta, big = run.refine_meta(f"ct_{s}step_paper"), by[f"ct_{s}step_bigroc"]
        if not meta:
            continue
        summ = meta["summary"]
        if summ["unchanged_fraction"] > 0.3:
            reasons.append(f"CT {s}-step: {100 * summ['unchanged_fraction']:.0f}% of the samples were already at "
                           f"ℓ_fake ≥ τ = ℓ0 and were left untouched by the early-stop rule")
        if summ["mean_steps"] < big["grad_steps_per_image"]:
            reasons.append(f"CT {s}-step: joint PGD spent fewer gradient steps per image than BIGROC "
                           f"({summ['mean_steps']:.1f} vs {big['grad_steps_per_image']:.1f})")
    reasons.append("context: both classifiers were trained for minutes (a few thousand iterations of a ResNet-56) and the generators "
                   "are weak; the paper's joint model is a robust ResNet-50 fine-tuned on ImageNet 64 for far longer")
    reasons.append("context: the training images are JPEG-q75 and the FID reference is lossless: a discriminator can learn JPEG "
                   "artefacts as realness, and moving samples toward them costs FID against the lossless test set")
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


def markdown(run: RunData, rows: list[dict], points: list[dict], suite: dict) -> str:
    head = ["| row | FID | ΔFID vs unrefined | precision | recall | N | grad steps/img | refine s/10k | sampling s/10k "
            "| generator GPU-min | classifier GPU-min | card |", "|" + "---|" * 12]
    for r in rows:
        head.append("| " + " | ".join([
            r["row"], _fmt(r["fid"]), _fmt(r["fid_change_vs_unrefined_pct"], 1) + ("%" if r["fid_change_vs_unrefined_pct"] is not None else ""),
            _fmt(r["precision"], 3), _fmt(r["recall"], 3), _fmt(r["num_samples"]), _fmt(r["grad_steps_per_image"]),
            _fmt(r["refine_seconds_per_10k"], 1), _fmt(r["sampling_seconds_per_10k"], 1),
            _fmt(r["generator_gpu_minutes"], 1), _fmt(r["classifier_gpu_minutes"], 1), r["card"]]) + " |")
    smoke = suite.get("smoke")
    out = ["# Quality benchmark: refining consistency-model samples on CIFAR-10", ""]
    if smoke:
        out += ["**SMOKE RUN: tiny models, a few dozen images and a stand-in feature network. These numbers are not "
                "FIDs and mean nothing; they only show that the pipeline runs.**", ""]
    out += ["Measured here: class-conditional consistency models trained from scratch on the CIFAR-10 training set "
            "(JPEG-q75 shards) with iCT and with ACT, refined by ccfast, scored by `ccfast.evaluate` against the lossless "
            "CIFAR-10 test set. FID on 10k samples is biased upward relative to 50k and is not comparable "
            "with published CIFAR-10 or ImageNet numbers; compare rows with each other. ΔFID is relative to the "
            "unrefined samples of the same generator and step count (for ACT: to CT at the same step count).", ""]
    out += head + [""]
    out += ["Columns: grad steps/img = mean gradient steps per image taken by refinement; refine s/10k = wall-clock "
            "seconds of the refinement loop per 10,000 images (model loading excluded); sampling s/10k = generator "
            "sampling time per 10,000 images; GPU-minutes = wall-clock training time on one card (classifier minutes "
            "of the joint model include the robust classifier it starts from).", ""]
    lines, diag = findings(run, rows)
    out += ["## Findings (generated from the numbers above)", ""] + [f"- {x}" for x in lines] + [""]
    if diag:
        out += ["Diagnostics:", ""] + [f"- {x}" for x in diag] + [""]
    why = why_joint_loses(run, rows)
    if why:
        out += ["**Why the joint model may not beat BIGROC here** (checked against this run's records; the committer adds "
                "anything else they know):", ""] + [f"- {why[0]}"] + why[1:] + [""]
    if points:
        out += ["## FID against refinement steps (CT " + ("1" if "1step" in points[0]["samples"] else "2") + "-step input)", "",
                "![FID vs steps](fid_vs_steps.png)", "", "| method | step budget T | mean grad steps/img | FID |", "|---|---|---|---|"]
        out += [f"| {p['method']} | {p['budget']} | {p['grad_steps_per_image']:.2f} | {p['fid']:.2f} |" for p in points] + [""]
    out += ["## Samples before and after (same seeds and labels in every row)", "", "![grid](grid.png)", ""]
    out += ["## Published numbers (ImageNet 64×64, FID on 50k samples) — published, not measured here", "",
            "| generator | steps | FID | source |", "|---|---|---|---|"]
    out += [f"| {g} | {s} | {f} | {src} |" for g, s, f, src in PUBLISHED] + [""]
    out += ["These come from other models, another data set and 50k samples (SPEC.md §6); they are not comparable with "
            "the measured table, only with its relative changes.", ""]
    out += ["## Provenance", ""] + [f"- {x}" for x in provenance(run)]
    out += [f"- settings: see `suite_config.json` in the run folder; budgets: generator {suite.get('gen_minutes')} min "
            f"each (or {suite.get('gen_iters')} iterations), robust classifier {suite['robust']['iters']} iterations, "
            f"joint model {suite['joint']['iters']} iterations, {suite.get('n_eval')} samples per file", ""]
    return "\n".join(out)


def plot_fid_vs_steps(points: list[dict], rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    origin = next((p for p in points if p["method"] == "unrefined"), None)
    styles = {"paper": ("joint PGD (Eq. 12)", "o-"), "bigroc": ("BIGROC (robust CE)", "s-"), "sgld": ("joint SGLD", "^-")}
    for method, (label, style) in styles.items():
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["grad_steps_per_image"])
        if origin:
            pts = [origin] + pts
        if len(pts) > (1 if origin else 0):
            ax.plot([p["grad_steps_per_image"] for p in pts], [p["fid"] for p in pts], style, label=label)
    by = {r["samples"]: r for r in rows}
    for name, label, style in (("ct_2step", "CT 2-step (no refinement)", "--"), ("act_1step", "ACT 1-step", ":")):
        if name in by:
            ax.axhline(by[name]["fid"], linestyle=style, color="gray", label=label)
    ax.set_xlabel("gradient steps per image (mean)")
    n = next((r["num_samples"] for r in rows if r.get("num_samples")), None)
    ax.set_ylabel(f"FID ({n} samples vs CIFAR-10 test)" if n else "FID")
    ax.set_title("CT 1-step samples refined with a growing step budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
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


def build_report(out_dir: Path, results_dir: Path, suite: dict, jobs: list[dict], log=print) -> list[Path]:
    run = RunData(out_dir)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = main_rows(run)
    points = sweep_points(run, jobs, suite.get("sweep_input", "ct_1step"))
    written = []
    write_text_atomic(results_dir / "quality.csv", _csv_text(rows, CSV_COLUMNS))
    written.append(results_dir / "quality.csv")
    write_text_atomic(results_dir / "quality_sweep.csv",
                      _csv_text(points, ["method", "budget", "grad_steps_per_image", "fid", "samples"]))
    written.append(results_dir / "quality_sweep.csv")
    published = [{"generator": g, "steps": s, "fid": f, "source": src, "label": "published (ImageNet 64x64)"}
                 for g, s, f, src in PUBLISHED]
    write_text_atomic(results_dir / "published_imagenet64.csv",
                      _csv_text(published, ["label", "generator", "steps", "fid", "source"]))
    written.append(results_dir / "published_imagenet64.csv")
    if plot_fid_vs_steps(points, rows, results_dir / "fid_vs_steps.png"):
        written.append(results_dir / "fid_vs_steps.png")
    else:
        log("report: matplotlib is not installed; fid_vs_steps.png not drawn (the table in quality_sweep.csv has the numbers)")
    if image_grid(run, results_dir / "grid.png"):
        written.append(results_dir / "grid.png")
    write_text_atomic(results_dir / "quality.md", markdown(run, rows, points, suite))
    written.append(results_dir / "quality.md")
    return written
