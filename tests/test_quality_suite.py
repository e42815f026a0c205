"""benchmarks/quality: iCT/ACT pieces, the sampler, exact resumption of generator training, the stage runner's
skip/rerun rules, and the whole suite end to end on a CPU (`--smoke`), including its resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package

from benchmarks.quality.act import ACTConfig  # noqa: E402
from benchmarks.quality.consistency import (  # noqa: E402
    ConsistencyModel,
    ICTConfig,
    NoiseSchedule,
    ict_num_scales,
    karras_sigmas,
    lognormal_index_probs,
    pseudo_huber,
)
from benchmarks.quality.sample import generate  # noqa: E402
from benchmarks.quality.stages import Stage, StagePaused, StageRunner  # noqa: E402
from benchmarks.quality.trainer import GENERATOR_FILE, STATE_FILE, GeneratorRun, train_generator  # noqa: E402
from benchmarks.quality.unet import UNetConfig  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402

TINY_UNET = UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), head_channels=16)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: one thread is as fast, and much faster when the cores are shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- iCT pieces


def test_karras_levels_and_ict_curriculum():
    sched = NoiseSchedule()
    s = karras_sigmas(11, sched).double()
    assert math.isclose(float(s[0]), sched.sigma_min, rel_tol=1e-6) and math.isclose(
        float(s[-1]), sched.sigma_max, rel_tol=1e-6
    )
    assert bool((s[1:] > s[:-1]).all())
    # iCT: s0=10, s1=1280 -> 8 doubling stages; K=8000 gives K'=1000.
    assert [ict_num_scales(k, 8000, 10, 1280) for k in (0, 999, 1000, 2999, 3000, 6999, 7000, 7999)] == \
        [11, 11, 21, 41, 81, 641, 1281, 1281]


def test_lognormal_index_probs_match_scipy():
    from scipy.stats import norm

    sigmas = karras_sigmas(21, NoiseSchedule())
    p = lognormal_index_probs(sigmas, -1.1, 2.0).double().numpy()
    logs = np.log(sigmas.double().numpy())
    expected = norm.cdf((logs[1:] + 1.1) / 2.0) - norm.cdf((logs[:-1] + 1.1) / 2.0)
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-5, atol=1e-7)


def test_pseudo_huber():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    b[1, 0, 0, 0] = 3.0
    d = pseudo_huber(a, b, 0.5)
    torch.testing.assert_close(d, torch.tensor([0.0, math.sqrt(9.0 + 0.25) - 0.5]), rtol=1e-6, atol=1e-7)


def test_consistency_boundary_condition():
    torch.manual_seed(0)
    model = ConsistencyModel(TINY_UNET).eval()
    with torch.no_grad():  # the output layer starts at zero; make the network non-trivial
        model.net.conv_out.weight.normal_()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 5, 9])
    sched = model.sched
    with torch.no_grad():
        assert torch.equal(model(x, torch.full((3,), sched.sigma_min), y), x)  # f(x, σ_min) = x exactly
        assert not torch.allclose(model(x, torch.full((3,), 10.0), y), x, atol=1e-3)


def test_sampler_seeds_do_not_depend_on_batch_size():
    torch.manual_seed(0)
    model = ConsistencyModel(TINY_UNET).eval()
    with torch.no_grad():
        model.net.conv_out.weight.normal_(std=0.1)
    a, la = generate(model, 20, 2, seed=3, batch_size=7)
    b, lb = generate(model, 20, 2, seed=3, batch_size=20)
    one, l1 = generate(model, 20, 1, seed=3, batch_size=20)
    assert a.dtype == np.uint8 and a.shape == (20, 32, 32, 3)
    # The noise is the same; the network's float sums are not bit-equal across batch sizes (oneDNN blocks them
    # differently), so a value at a rounding boundary may land one uint8 level apart: allow that, rarely.
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert np.array_equal(la, lb) and np.array_equal(la, l1)
    assert np.bincount(la, minlength=10).tolist() == [2] * 10  # balanced classes
    assert not np.array_equal(one, a)
    c, _ = generate(model, 20, 2, seed=4, batch_size=20)
    assert (c != a).mean() > 0.5  # another seed: other noise, most values differ


def test_settings_round_trip_through_json_with_their_tuples():
    """The stage records and generator files store these settings as JSON (lists); reading them back must give
    equal (hashable, tuple-valued) settings, and an unknown key is an error rather than silently dropped."""
    from ccfast.errors import CCFastError

    act = ACTConfig(d_channels=8, d_channel_mult=(1, 2))
    for cfg in (TINY_UNET, act, ICTConfig(batch_size=4), NoiseSchedule(sigma_max=40.0)):
        back = type(cfg).from_json(cfg.to_json())
        assert back == cfg and hash(back) == hash(cfg)
    assert UNetConfig.from_dict(json.loads(TINY_UNET.to_json())).channel_mult == (1, 2)
    with pytest.raises(CCFastError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**TINY_UNET.to_dict(), "width": 3})


# ------------------------------------------------------------------------------------------- generator training


def _tiny_run(name="ct", act=None, iters=4):
    return GeneratorRun(name=name, unet=TINY_UNET, ict=ICTConfig(batch_size=4, s0=2, s1=8, warmup_iters=2), act=act,
                        iters=iters)


def _images(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize(
    "act", [None, ACTConfig(d_channels=8, d_channel_mult=(1, 2), r1_interval=2)], ids=["ct", "act"]
)
def test_generator_training_resumes_exactly(tmp_path, act):
    images, labels = _images()
    run = _tiny_run("act" if act else "ct", act)
    meta = train_generator(run, images, labels, tmp_path / "straight", progress=False)
    assert meta["iterations"] == 4 and all(math.isfinite(v) for v in meta["history"][0].values())
    with pytest.raises(StagePaused):  # a deadline already past: one iteration, state saved, paused
        train_generator(run, images, labels, tmp_path / "paused", progress=False, deadline=time.monotonic() - 1)
    assert (tmp_path / "paused" / STATE_FILE).exists() and not (tmp_path / "paused" / GENERATOR_FILE).exists()
    train_generator(run, images, labels, tmp_path / "paused", progress=False)
    assert not (tmp_path / "paused" / STATE_FILE).exists()
    a = torch.load(tmp_path / "straight" / GENERATOR_FILE, weights_only=True)
    b = torch.load(tmp_path / "paused" / GENERATOR_FILE, weights_only=True)
    assert a["meta"]["history"] == b["meta"]["history"]
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_generator_state_of_another_config_is_not_resumed(tmp_path):
    images, labels = _images()
    with pytest.raises(StagePaused):
        train_generator(_tiny_run(iters=4), images, labels, tmp_path, progress=False, deadline=time.monotonic() - 1)
    meta = train_generator(_tiny_run(iters=3), images, labels, tmp_path, progress=False)
    assert meta["iterations"] == 3 and len(meta["history"]) == 1  # restarted at 0, not continued from 1


# ------------------------------------------------------------------------------------------- stage runner


def _writer(path: Path, text: str, calls: list):
    def run():
        calls.append(path.name)
        path.write_text(text)
        return {"wrote": text}
    return run


def test_stage_runner_skips_only_fresh_stages(tmp_path):
    runner = StageRunner(tmp_path, log=lambda *_: None)
    out, calls = tmp_path / "a.txt", []
    rec = runner.run(Stage("a", {"x": 1}, [out], _writer(out, "one", calls)))
    assert calls == ["a.txt"] and rec["info"] == {"wrote": "one"} and rec["config"] == {"x": 1}
    runner.run(Stage("a", {"x": 1}, [out], _writer(out, "one", calls)))
    assert calls == ["a.txt"]  # up to date: not run again
    runner.run(Stage("a", {"x": 2}, [out], _writer(out, "two", calls)))
    assert len(calls) == 2  # config changed
    out.write_text("tampered")
    assert "changed" in runner.why_stale(Stage("a", {"x": 2}, [out], None))
    runner.run(Stage("a", {"x": 2}, [out], _writer(out, "two", calls)))
    assert len(calls) == 3 and out.read_text() == "two"
    out.unlink()
    assert "missing" in runner.why_stale(Stage("a", {"x": 2}, [out], None))
    forced = StageRunner(tmp_path, force={"a"}, log=lambda *_: None)
    forced.run(Stage("a", {"x": 2}, [out], _writer(out, "two", calls)))
    assert len(calls) == 4
    # A fresh runner (a new process) reads the records from disk.
    assert StageRunner(tmp_path, log=lambda *_: None).why_stale(Stage("a", {"x": 2}, [out], None)) is None


def test_stage_runner_keeps_no_record_of_a_failed_stage(tmp_path):
    runner = StageRunner(tmp_path, log=lambda *_: None)
    out, calls = tmp_path / "b.txt", []
    runner.run(Stage("b", {"x": 1}, [out], _writer(out, "one", calls)))

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runner.run(Stage("b", {"x": 2}, [out], fails))
    assert runner.read_record("b") is None  # the old record is gone: the redo did not finish
    assert runner.why_stale(Stage("b", {"x": 1}, [out], None)) == "not run yet"
    with pytest.raises(Exception, match="without writing"):
        runner.run(Stage("c", {}, [tmp_path / "never.txt"], lambda: {}))
    assert runner.read_record("c") is None


def test_downstream_config_holds_upstream_hashes(tmp_path):
    runner = StageRunner(tmp_path, log=lambda *_: None)
    up, down, calls = tmp_path / "up.txt", tmp_path / "down.txt", []
    runner.run(Stage("up", {"v": 1}, [up], _writer(up, "1", calls)))
    down_stage = lambda: Stage("down", {"up": runner.sha256(up)}, [down], _writer(down, "d", calls))  # noqa: E731
    runner.run(down_stage())
    runner.run(Stage("up", {"v": 2}, [up], _writer(up, "2", calls)))
    assert runner.why_stale(down_stage()) == "its config changed"


# ------------------------------------------------------------------------------------------- end to end


def test_classifier_flags_are_what_ccfast_train_accepts():
    from benchmarks.quality.suite_config import joint_flags, robust_flags
    from ccfast.train import build_parser, config_from_args

    def parse(flags, fake=("--fake", "f.npz")):
        args = build_parser().parse_args(["--real", "r.npz", *fake, "--out", "o", *flags])
        return config_from_args(args)

    # BIGROC's classifier: Madry L2 adversarial training (CE attack, CE loss) on real images, no generated images
    robust = parse(robust_flags(2000), fake=())
    assert robust.mode == "robust-classifier" and robust.classifier_only and robust.real_attack == "ce"
    assert (robust.w_ce_real, robust.w_real, robust.w_fake, robust.w_ce_fake) == (1, 0, 0, 0)
    assert robust.lr_milestones == [1500] and robust.real_eps == 0.5 and robust.real_random_start
    joint = parse(joint_flags(2000))  # all four terms of SPEC §3.3
    assert (joint.w_ce_real, joint.w_real, joint.w_fake, joint.w_ce_fake) == (1, 1, 1, 1)
    assert joint.mode == "joint" and joint.real_attack == "realness"
    assert joint.fake_early_stop and joint.augment == "flip" and joint.lr_milestones == [1500]


def _suite_args(out: Path, *extra) -> list[str]:
    return ["--data-dir", str(SHARED_DATA), "--out-dir", str(out), "--smoke", "--quiet", *extra]


def test_refine_plan_covers_every_group_once():
    from benchmarks.quality.plan import budget_point_name
    from benchmarks.quality.run import refine_jobs
    from benchmarks.quality.suite_config import default_config

    cfg = default_config()
    cfg.fast_engines = ("triton",)
    jobs = {j.name: j for j in refine_jobs(cfg, alpha_scale=2.0)}
    assert len(jobs) == len(refine_jobs(cfg, alpha_scale=2.0))  # names are unique
    for k, suffix in enumerate(("", "_s1", "_s2")):
        for steps in (1, 2):
            for method in ("bigroc", "paper", "sgld"):
                job = jobs[f"ct_{steps}step{suffix}_{method}"]  # the presets exactly as ccfast defines them
                assert job.group == "main" and job.seed_index == k and job.engine == "torch"
                # only SGLD draws noise: its seed follows the sample seed, so each seed is an independent repeat
                assert job.overrides == ({"seed": cfg.sample_seed(k)} if method == "sgld" and k else {})
    assert cfg.sample_seed(1) not in (cfg.seed + 1, cfg.seed + 2)  # not the joint model's training fakes
    assert {j.name for j in jobs.values() if j.group == "engine"} == {
        "ct_1step_bigroc_triton", "ct_1step_paper_triton", "ct_2step_bigroc_triton", "ct_2step_paper_triton"}
    assert {j.name for j in jobs.values() if j.timed} == {n for n, j in jobs.items() if j.group == "engine"} | {
        f"ct_{s}step_{m}" for s in (1, 2) for m in ("bigroc", "paper", "sgld")}
    # equal budget: BIGROC's α = 1.5·ε/T follows T; the paper keeps α = 0.1; scaled takes α = c·ε/T
    big = jobs["ct_2step_T3_bigroc"]
    assert big.classifier == "robust" and big.overrides["steps"] == 3 and math.isclose(big.overrides["alpha"], 0.75)
    assert jobs["ct_2step_s2_T10_paper"].overrides == {"steps": 10}
    assert math.isclose(jobs["ct_2step_s1_T5_scaled"].overrides["alpha"], 2.0 * 1.5 / 5)
    ce, eq12 = jobs["ct_2step_T5_joint_ce"], jobs["ct_2step_T5_robust_eq12"]
    assert (ce.classifier, ce.preset, eq12.classifier, eq12.preset) == ("joint", "bigroc", "robust", "paper")
    assert "ct_2step_s1_T5_joint_ce" not in jobs  # ablations: first seed only
    # the presets' own budgets are the main rows, not repeated
    assert "ct_2step_T7_bigroc" not in jobs and "ct_2step_T25_paper" not in jobs
    assert budget_point_name(cfg, "ct_2step", "bigroc", 7) == "ct_2step_bigroc"
    assert budget_point_name(cfg, "ct_2step_s1", "paper", 25) == "ct_2step_s1_paper"
    # c is chosen on 1-step samples only, for every grid value and calibration budget
    calib = [j for j in jobs.values() if j.group == "calibrate"]
    assert {j.input for j in calib} == {"ct_1step"}
    assert {(j.alpha_scale, j.budget) for j in calib} == {
        (c, t) for c in cfg.alpha_scales for t in cfg.calibrate_budgets
    }
    # before calibration the scaled jobs are planned without α (the suite holds them back)
    assert all("alpha" not in j.overrides for j in refine_jobs(cfg) if j.method == "scaled" and j.group == "budget")


def test_concurrent_jobs_all_run_and_the_first_failure_is_raised():
    from benchmarks.quality.run import run_concurrently

    done = []

    def fails():
        raise ValueError("broken")

    def pauses():
        raise StagePaused("deadline")

    tasks = [lambda i=i: done.append(i) for i in range(5)]
    run_concurrently(tasks, 3)
    assert sorted(done) == [0, 1, 2, 3, 4]
    with pytest.raises(StagePaused):  # a deadline pause wins over another failure: the rerun resumes both
        run_concurrently([fails, *tasks, pauses], 3)
    assert len(done) == 10  # the others still finished
    with pytest.raises(ValueError, match="broken"):
        run_concurrently([fails, *tasks], 1)


def test_plan_lists_every_refinement_and_an_estimate(capsys):
    from benchmarks.quality.run import main, refine_jobs
    from benchmarks.quality.suite_config import default_config

    assert main(["--data-dir", "d", "--out-dir", "o", "--plan", "--device", "cpu", "--no-act"]) == 0
    out = capsys.readouterr().out
    jobs = refine_jobs(default_config())
    assert f"refinements: {len(jobs)} " in out and all(j.name in out for j in jobs)
    assert "generators      6.0" in out and "total" in out  # CT only (--no-act): 6 minutes


def test_budget_minutes_list_makes_smaller_generators_and_their_rows(tmp_path):
    from benchmarks.quality.plan import raw_samples
    from benchmarks.quality.run import build_parser, config_from_args, refine_jobs

    cfg = config_from_args(build_parser().parse_args(["--data-dir", "d", "--out-dir", "o", "--budget-minutes", "2,5",
                                                      "--device", "cpu", "--no-act", "--seeds", "2"]))
    assert cfg.gen_minutes == 5 and cfg.extra_gen_minutes() == (2.0,) and not cfg.train_act and cfg.n_seeds == 2
    assert cfg.fast_engines == ()  # on a CPU the default engine is the reference alone
    assert raw_samples(cfg) == ["ct_1step", "ct_2step", "ct_1step_s1", "ct_2step_s1", "ct_m2_1step", "ct_m2_2step"]
    minutes = {j.name for j in refine_jobs(cfg) if j.group == "minutes"}
    assert minutes == {f"ct_m2_{s}step_{m}" for s in (1, 2) for m in ("bigroc", "paper")}


def _fake_result(out: Path, name: str, fid: float, steps: float = 0.0, loop_s: float = 1.0, timings: dict | None = None,
                 config: dict | None = None) -> None:
    """What the eval (and, with steps, refine) stages leave behind for NAME, as report.py reads it."""
    for stage in [f"eval_{name}"] + ([f"refine_{name}"] if steps else []):
        (out / "stages").mkdir(parents=True, exist_ok=True)
        (out / "stages" / f"{stage}.json").write_text(json.dumps({"name": stage, "info": {}, "env": {}}))
    (out / "metrics").mkdir(exist_ok=True)
    (out / "metrics" / f"{name}.json").write_text(json.dumps({"fid": fid, "precision": 0.5, "recall": 0.1,
                                                              "num_samples": 10000}))
    if steps:
        (out / "refined").mkdir(exist_ok=True)
        meta = {"summary": {"mean_steps": steps, "n": 10000, "unchanged_fraction": 0.0, "stopped_fraction": 0.0,
                            "mean_realness_init": 0.0, "mean_realness_final": 1.0},
                "timings": {"refine_s_rank0": loop_s, **(timings or {})},
                "config": {"alpha": 0.1, "early_stop": "realness", **(config or {})}}
        (out / "refined" / f"{name}.npz.json").write_text(json.dumps(meta))


def test_report_aggregates_seeds_and_says_which_differences_exceed_the_spread(tmp_path):
    from benchmarks.quality import report
    from benchmarks.quality.run import refine_jobs
    from benchmarks.quality.suite_config import default_config

    cfg = default_config()
    cfg.fast_engines, cfg.train_act, cfg.methods = ("triton",), False, ("bigroc", "paper")
    for k, suffix in enumerate(("", "_s1", "_s2")):
        _fake_result(tmp_path, f"ct_2step{suffix}", 100.0 + k)
        _fake_result(tmp_path, f"ct_2step{suffix}_bigroc", 90.0 + k, steps=7)     # 90, 91, 92: std 1
        _fake_result(tmp_path, f"ct_2step{suffix}_paper", 80.0 + 0.5 * k, steps=20)  # 10 below: > 2 std
        _fake_result(tmp_path, f"ct_2step{suffix}_T3_bigroc", 95.0 + 2 * k, steps=3)
        _fake_result(tmp_path, f"ct_2step{suffix}_T3_paper", 95.5 + 2 * k, steps=3)  # 0.5 above: within
    _fake_result(tmp_path, "ct_2step_paper_triton", 80.4, steps=20, loop_s=0.5, timings={"compile_s": 20.0})
    run = report.RunData(tmp_path)
    rows = {r["samples"]: r for r in report.main_rows(run, cfg)}
    big, pgd = rows["ct_2step_bigroc"], rows["ct_2step_paper"]
    assert (big["fid"], big["fid_std"], big["n_seeds"]) == (91.0, 1.0, 3) and big[
        "fid_per_seed"
    ] == "90.000;91.000;92.000"
    assert math.isclose(big["fid_change_vs_unrefined_pct"], -10.0 / 101.0 * 100)
    assert report.exceeds_spread(pgd, big) is True
    points = {(p["method"], p["budget"]): p for p in report.budget_points(run, cfg)}
    assert points[("bigroc", 7)]["samples"] == "ct_2step_bigroc"  # the preset's own budget is its main row
    assert report.exceeds_spread(points[("paper", 3)], points[("bigroc", 3)]) is False
    assert points[("paper", 3)]["early_stopping"] and points[("unrefined", 0)]["fid"] == 101.0
    text = " ".join(report.budget_findings(list(points.values()), cfg, None))
    assert "T = 3:" in text and "within the seed spread" in text
    (eng,) = report.engine_rows(run, refine_jobs(cfg, alpha_scale=1.0))
    assert eng["samples"] == "ct_2step" and math.isclose(eng["fid_change_pct"], 0.5) and eng["within_1pct"]
    assert eng["engine_setup_seconds"] == 20.0 and eng["refine_seconds_per_10k_engine"] == 0.5
    lines, _ = report.findings(run, list(rows.values()), cfg)
    assert any("joint PGD's FID is lower than BIGROC's" in x and "exceeds the seed spread" in x for x in lines)
    goals = report.targets(list(rows.values()), list(points.values()), [eng], cfg)
    assert "T=3 +0.5% (paper) — not met at any budget" in goals[0]  # 95.5+ vs 95+: joint is worse at T=3
    assert goals[1].endswith("2-step samples: -20.3% — not met")  # (80.5 − 101) / 101: short of −25%
    assert "largest |Δ| 0.50%" in goals[2] and goals[2].endswith("met")


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "test.npz").exists(), reason="shared CIFAR-10 data not present")
def test_smoke_suite_end_to_end_pauses_and_resumes(tmp_path, capsys):
    from benchmarks.quality.run import EXIT_PAUSED, main

    out = tmp_path / "run"
    assert main(_suite_args(out, "--deadline-minutes", "0")) == EXIT_PAUSED
    assert (out / "gen_ct" / STATE_FILE).exists() and not (out / "stages" / "gen_ct.json").exists()
    capsys.readouterr()

    assert main(_suite_args(out)) == 0
    log = capsys.readouterr().err
    assert "resuming at iteration 1" in log
    for name in ("ct_1step", "ct_2step", "act_1step", "act_2step", "ct_train_fakes"):
        with np.load(out / "samples" / f"{name}.npz") as z:
            assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape[1:] == (32, 32, 3) and z["arr_1"].dtype == np.int64
    with np.load(out / "samples" / "ct_1step.npz") as raw, np.load(out / "refined" / "ct_1step_bigroc.npz") as ref:
        assert np.array_equal(raw["arr_1"], ref["arr_1"]) and not np.array_equal(raw["arr_0"], ref["arr_0"])
        assert (ref["steps"] == 7).all()  # BIGROC: no early stopping, T = 7

    results = out / "results"
    with open(results / "quality.csv") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert {"CT 1-step", "CT 2-step", "ACT 1-step", "ACT 2-step", "CT 1-step + BIGROC", "CT 1-step + joint PGD (paper)",
            "CT 1-step + joint SGLD"} <= set(rows)
    assert all(math.isfinite(float(r["fid"])) for r in rows.values())
    assert float(rows["CT 1-step + BIGROC"]["grad_steps_per_image"]) == 7.0
    assert float(rows["CT 1-step + joint SGLD"]["grad_steps_per_image"]) == 15.0
    assert float(rows["CT 1-step"]["grad_steps_per_image"]) == 0.0
    md = (results / "quality.md").read_text()
    assert "SMOKE RUN" in md and "published, not measured here" in md
    assert "13.0 / 11.1" in md and "Consistency Distillation" not in (results / "quality.csv").read_text()  # kept apart
    for name in ("grid.png", "quality_budget.csv", "published_imagenet64.csv"):
        assert (results / name).stat().st_size > 0, name
    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs matplotlib; without it the report says so
        assert (results / "fid_vs_steps.png").stat().st_size > 0
    else:
        assert not (results / "fid_vs_steps.png").exists() and "matplotlib is not installed" in log
    records = {p.name: json.loads(p.read_text())["finished_at"] for p in (out / "stages").glob("*.json")}

    # The script entry point, in a fresh process: every stage is up to date, no CLI is called.
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality" / "run.py"), *_suite_args(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ran 0 stage(s)" in again.stderr and "$ " not in again.stderr
    assert records == {p.name: json.loads(p.read_text())["finished_at"] for p in (out / "stages").glob("*.json")}


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "test.npz").exists(), reason="shared CIFAR-10 data not present")
def test_smoke_suite_in_two_lanes_gives_the_one_lane_stages(tmp_path):
    """`--lanes 2` splits the stages over two processes (here both on the CPU); every stage still runs exactly once
    and the report lists every row. A rerun finds everything up to date. With --share-gpu the lanes leave the
    timed refinements to the final step, which runs them alone."""
    from benchmarks.quality.run import main, refine_jobs
    from benchmarks.quality.suite_config import smoke_config

    out = tmp_path / "lanes"
    lanes = ["--lanes", "2", "--share-gpu", "--gen-iters", "4"]
    assert main(_suite_args(out, *lanes)) == 0
    logs = (out / "logs" / "lane0.log").read_text() + (out / "logs" / "lane1.log").read_text()
    records = {p.stem for p in (out / "stages").glob("*.json")}
    jobs = [j.name for j in refine_jobs(smoke_config(), alpha_scale=json.loads(
        (out / "stages" / "calibrate.json").read_text())["info"]["alpha_scale"])]
    assert {"data", "gen_ct", "samples_ct", "gen_act", "samples_act", "clf_robust", "clf_joint"} <= records
    assert {f"refine_{j}" for j in jobs} <= records and {f"eval_{j}" for j in jobs} <= records
    assert "--refine-methods bigroc" in logs and "--refine-methods paper,sgld" in logs
    refined_by = {j.name: json.loads((out / "stages" / f"refine_{j.name}.json").read_text())["argv"] for j in
                  refine_jobs(smoke_config(), alpha_scale=1.0) if j.alpha_scale is None or j.group == "calibrate"}
    timed = {j.name for j in refine_jobs(smoke_config()) if j.timed}
    assert timed and all("--defer-timed" not in refined_by[n] and "--refine-methods" not in refined_by[n]
                         for n in timed)
    assert any("--defer-timed" in argv for name, argv in refined_by.items() if name not in timed)
    with open(out / "results" / "quality.csv") as fh:
        assert {"CT 1-step + BIGROC", "CT 1-step + joint PGD (paper)", "ACT 1-step"} <= {
            r["row"] for r in csv.DictReader(fh)
        }
    finished = {p.name: json.loads(p.read_text())["finished_at"] for p in (out / "stages").glob("*.json")}
    assert main(_suite_args(out, *lanes)) == 0
    assert finished == {p.name: json.loads(p.read_text())["finished_at"] for p in (out / "stages").glob("*.json")}


def test_lane_children_get_their_own_stages_device_and_deadline(monkeypatch):
    from benchmarks.quality.lanes import child_argv, visible_gpus

    argv = ["--data-dir", "d", "--lanes", "2", "--stages=all", "--device", "cuda", "--deadline-minutes", "9",
            "--refine-methods", "bigroc", "--share-gpu", "--out-dir", "o", "--budget-minutes", "6"]
    assert child_argv(argv) == ["--data-dir", "d", "--out-dir", "o", "--budget-minutes", "6"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert visible_gpus(2, share=True) == ["3", "3"]
    with pytest.raises(SystemExit, match="--share-gpu"):
        visible_gpus(2)


def test_share_gpu_needs_two_lanes_and_fixed_generator_iterations(tmp_path, capsys):
    from benchmarks.quality.run import main

    base = ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert main([*base, "--share-gpu", "--gen-iters", "100"]) == 2
    assert "needs --lanes 2" in capsys.readouterr().err
    assert main([*base, "--lanes", "2", "--share-gpu"]) == 2
    assert "--gen-iters" in capsys.readouterr().err


def test_refine_methods_must_be_known(tmp_path):
    from benchmarks.quality.run import main

    assert main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--stages", "refine",
                 "--refine-methods", "bigroc,pgd"]) != 0


def test_pack_and_unpack_restore_files_exactly_part_by_part(tmp_path):
    from benchmarks.quality.pack_data import main as pack_main
    from benchmarks.quality.pack_data import unpack_dir

    rng = np.random.default_rng(0)
    images = np.cumsum(rng.integers(0, 3, size=(40, 32, 32, 3)), axis=2).astype(np.uint8)  # smooth, compressible
    labels = rng.integers(0, 10, size=40)
    src = tmp_path / "src"
    src.mkdir()
    np.savez_compressed(src / "train_x.npz", images=images, labels=labels)
    (src / "weights.pt").write_bytes(rng.bytes(5000))
    packed, stage, data = tmp_path / "packed", tmp_path / "stage", tmp_path / "data"
    assert pack_main(["pack", "--out", str(packed), "--part-mb", "0.002", f"{src / 'train_x.npz'}=cifar10/",
                      f"{src / 'weights.pt'}=models/w.pt"]) == 0
    weight_parts = sorted(packed.glob("w.pt.part*"))
    assert len(weight_parts) == 3  # 5000 bytes in parts of 2000
    stage.mkdir()
    for f in packed.glob("*.manifest.json"):
        (stage / f.name).write_bytes(f.read_bytes())
    for f in packed.glob("train_x.npz.part*"):
        (stage / f.name).write_bytes(f.read_bytes())
    (stage / weight_parts[0].name).write_bytes(weight_parts[0].read_bytes())
    ready, waiting = unpack_dir(stage, data, log=lambda *_: None)  # the weights are still partly in transit
    assert ready == ["cifar10/train_x.npz"] and len(waiting) == 1 and "w.pt" in waiting[0]
    with np.load(data / "cifar10" / "train_x.npz") as z:
        assert np.array_equal(z["images"], images) and np.array_equal(z["labels"], labels)
    for f in weight_parts[1:]:
        (stage / f.name).write_bytes(f.read_bytes())
    assert pack_main(["unpack", str(stage), "--out", str(data), "--require", "models/w.pt"]) == 0
    assert (data / "models" / "w.pt").read_bytes() == (src / "weights.pt").read_bytes()
    (stage / weight_parts[1].name).write_bytes(b"damaged")
    (data / "models" / "w.pt").unlink()
    assert pack_main(["unpack", str(stage), "--out", str(data)]) != 0  # sha256 mismatch is an error, not a file
    assert not (data / "models" / "w.pt").exists()


def test_generator_stages_start_before_the_test_set_has_arrived(tmp_path):
    """The data reaches a device in parts: the suite must start on the training shards alone, and a stage that reads
    the test set (classifier accuracy, FID) must then say which file is missing."""
    from benchmarks.quality.run import Suite, build_parser, config_from_args
    from ccfast.errors import CCFastError

    cifar = tmp_path / "data" / "cifar10"
    cifar.mkdir(parents=True)
    images, labels = _images(8)
    np.savez(cifar / "train_jpeg75_part0.npz", arr_0=images, arr_1=labels)
    args = build_parser().parse_args(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"),
                                      "--device", "cpu", "--quiet"])
    suite = Suite(args, config_from_args(args))
    assert suite.shards == [cifar / "train_jpeg75_part0.npz"]
    with pytest.raises(CCFastError, match="test.npz.*missing"):
        _ = suite.ref_file
    np.savez(cifar / "test.npz", arr_0=images, arr_1=labels)
    assert suite.ref_file == cifar / "test.npz"


def test_a_follow_step_reruns_until_the_other_lane_has_finished_then_once_more(tmp_path, monkeypatch):
    """Lane 1's eval follows lane 0's refine: it scores what exists, again while lane 0 refines, and once after."""
    import threading

    from benchmarks.quality import lanes

    monkeypatch.setattr(lanes, "FOLLOW_PAUSE_S", 0.01)
    runner = lanes.LaneRunner([], tmp_path, "cpu", None, lambda *a: None)
    calls, refine_may_finish = [], threading.Event()

    def run_step(lane, gpu, step):
        calls.append((lane, step.stages))
        if lane == 0:
            refine_may_finish.wait(5)
        elif len([c for c in calls if c[1] == "eval"]) == 3:
            refine_may_finish.set()  # lane 0 finishes while lane 1 is on its third pass
        return 0

    monkeypatch.setattr(runner, "run_step", run_step)
    other = threading.Thread(target=runner.lane, args=(0, None, (lanes.Step("refine"),)))
    other.start()
    runner.lane(1, None, (lanes.Step("refine", refine_methods="bigroc"), lanes.Step("eval", until=(0, "refine"))))
    other.join()
    evals = [c for c in calls if c == (1, "eval")]
    # Lane 1's own refine does not count as lane 0's; the pass during which lane 0 finished is followed by one more.
    assert len(evals) in (4, 5) and calls.index((1, "eval")) > calls.index((1, "refine"))
    assert runner.done_in_lane == {0: {"refine"}, 1: {"refine", "eval"}}


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "test.npz").exists(), reason="shared CIFAR-10 data not present")
def test_the_lease_driver_runs_the_suite_and_writes_the_report_under_its_out_dir(tmp_path):
    """benchmarks/quality/lease_driver.sh is what a lent GPU machine runs; here in smoke mode on the CPU."""
    out = tmp_path / "runs" / "quality"
    env = dict(os.environ, QUALITY_DATA=str(SHARED_DATA), QUALITY_OUT=str(out), QUALITY_TREE=str(tmp_path / "tree"),
               AFTER_SUITE='echo "$AFTER_BUDGET_S" > "$AFTER_DIR/budget.txt"; test -f "$AFTER_DIR/../suite.rc"')
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "quality" / "lease_driver.sh"), "abc1234",
                           str(int(time.time()) - 60), "0", "--smoke", "--device", "cpu", "--gen-iters", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "suite.rc").read_text().strip() == "0"
    import re

    deadline = float(re.search(r"deadline ([\d.]+) min", proc.stdout).group(1))
    assert 25.5 < deadline <= 26.0 and "--lanes 2 --share-gpu" in proc.stdout  # the lease began a minute ago
    md = (out / "results" / "quality.md").read_text()
    assert "SMOKE RUN" in md and "abc1234" in md
    assert not (out / "gpu_tests.rc").exists()
    # AFTER_SUITE ran once the suite had ended, in its folder, with the lease's remaining seconds as its budget.
    assert "after the suite: exit 0" in proc.stdout, proc.stdout[-2000:]
    assert 1000 < int((out / "after" / "budget.txt").read_text()) < 28 * 60
    # It ran from its private copy of the tree, which the device's calls do not overwrite.
    assert f"tree {tmp_path / 'tree'}" in proc.stdout and (tmp_path / "tree" / "ccfast" / "__init__.py").exists()
    # And a wait call's snapshot holds the records and the report, without the image files.
    dest = tmp_path / "dest"
    dest.mkdir()
    snap = subprocess.run(["bash", str(ROOT / "benchmarks" / "quality" / "lease_snapshot.sh"), str(tmp_path / "runs"),
                           str(dest)], capture_output=True, text=True, timeout=60)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    import tarfile

    with tarfile.open(dest / "quality_snapshot.tgz") as tar:
        names = tar.getnames()
    assert "quality/results/quality.md" in names and "quality/suite.rc" in names and "quality/after/budget.txt" in names
    assert any(n.startswith("quality/stages/") for n in names) and not any(n.endswith(".npz") for n in names)
