"""benchmarks/quality/paper_repro.py end to end on a CPU, with tiny stand-ins in exactly the paper's file formats:
ImageNet-64-shaped real images, consistency-models sampler output (`arr_0`/`arr_1`), a MadryLab `robustness`
checkpoint (`model` with `module.model.*`, the attacker's copy and the normaliser) and an OpenAI reference
batch (`arr_0` images + precomputed `mu`/`sigma`)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package

from benchmarks.quality.smoke import FEATURE_DIM, write_standin_feature_network  # noqa: E402

CLASSES, SIZE = 4, 64


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return images, (np.arange(n) % CLASSES).astype(np.int64)


def _robustness_checkpoint(path: Path) -> Path:
    """The layout of MadryLab's `robustness` ImageNet checkpoints, around a tiny backbone."""
    from ccfast.models import build_backbone

    torch.manual_seed(0)
    sd = build_backbone("tiny", CLASSES, width=8).state_dict()
    model = {f"module.model.{k}": v for k, v in sd.items()}
    model.update({f"module.attacker.model.{k}": v.clone() for k, v in sd.items()})
    model["module.normalizer.new_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    model["module.normalizer.new_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model["module.attacker.normalize.new_mean"] = model["module.normalizer.new_mean"].clone()
    torch.save({"model": model, "epoch": 90}, path)
    return path


@pytest.fixture
def paper_files(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    real, labels = _images(96, 0)
    np.savez(d / "imagenet64_train.npz", images=real, labels=labels)
    for name, n, seed in (("cm_1step", 24, 1), ("cm_2step", 24, 2), ("cm_train_fakes", 32, 3)):
        np.savez(d / f"{name}.npz", arr_0=_images(n, seed)[0], arr_1=_images(n, seed)[1])
    ell0, ell0_labels = _images(16, 4)
    np.savez(d / "heldout.npz", images=ell0, labels=ell0_labels)
    ref, _ = _images(40, 5)
    rng = np.random.default_rng(6)
    a = rng.normal(size=(FEATURE_DIM, 64)) / 8
    np.savez(d / "VIRTUAL_imagenet64_labeled.npz", arr_0=ref, mu=rng.normal(size=FEATURE_DIM) * 0.01,
             sigma=a @ a.T + 0.01 * np.eye(FEATURE_DIM))
    _robustness_checkpoint(d / "imagenet_l2_3_0.pt")
    write_standin_feature_network(d / "features.pt")
    return d


def test_paper_repro_trains_refines_evaluates_and_reports(paper_files, tmp_path):
    from benchmarks.quality.paper_repro import main

    torch.set_num_threads(1)
    d, out = paper_files, tmp_path / "run"
    argv = ["--real", str(d / "imagenet64_train.npz"), "--samples-1step", str(d / "cm_1step.npz"),
            "--samples-2step", str(d / "cm_2step.npz"), "--train-fakes", str(d / "cm_train_fakes.npz"),
            "--robust-checkpoint", str(d / "imagenet_l2_3_0.pt"), "--ref", str(d / "VIRTUAL_imagenet64_labeled.npz"),
            "--ell0-data", str(d / "heldout.npz"), "--out-dir", str(out), "--arch", "tiny",
            "--num-classes", str(CLASSES), "--joint-iters", "2", "--joint-batch-size", "8",
            "--train-args", "--ell0-holdout 16 --log-every 1", "--budgets", "3", "--alpha-scales", "2",
            "--inception", str(d / "features.pt"), "--allow-unverified-inception", "--device", "cpu",
            "--refine-batch-size", "24", "--eval-batch-size", "24", "--methods", "paper",
            "--budget-methods", "scaled,joint_ce,robust_eq12", "--quiet"]  # bigroc/paper budgets: the CIFAR smoke
    assert main(argv) == 0
    # the joint model is trained from the robustness checkpoint (SPEC §3), on real + the given generated images
    cfg = json.loads((out / "clf_joint" / "config.json").read_text())["config"]
    assert cfg["init"].endswith("imagenet_l2_3_0.pt") and cfg["fresh_head"] is True and cfg["arch"] == "tiny"
    # FID against the reference batch's own mu/sigma, as OpenAI's evaluator computes it
    metrics = json.loads((out / "metrics" / "ct_1step_paper.json").read_text())
    assert metrics["reference"]["fid_statistics"] == "precomputed" and math.isfinite(metrics["fid"])
    with open(out / "results" / "quality.csv") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert {"CM 1-step", "CM 2-step", "CM 1-step + joint PGD (paper)", "CM 2-step + joint PGD (paper)"} <= set(rows)
    with open(out / "results" / "quality_budget.csv") as fh:
        budget = {(r["method"], r["budget"]) for r in csv.DictReader(fh)}
    assert {("scaled", "3"), ("joint_ce", "3"), ("robust_eq12", "3")} <= budget
    md = (out / "results" / "quality.md").read_text()
    assert "ImageNet 64×64" in md and "CIFAR-10 training set" not in md
    assert "reported here on CM 2-step samples, which played no part in choosing it" in md
    # A second call finds every stage up to date.
    records = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert main(argv) == 0
    assert records == {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}


def test_paper_repro_names_a_missing_file(tmp_path, capsys):
    from benchmarks.quality.paper_repro import main

    rc = main(["--real", "r", "--samples-1step", str(tmp_path / "none.npz"), "--train-fakes", "f",
               "--robust-checkpoint", str(tmp_path), "--ref", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "none.npz: no such file" in capsys.readouterr().err
