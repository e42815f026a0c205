"""`python -m ccfast.train --mode robust-classifier`: BIGROC's robust classifier (SPEC §4), i.e. L2 adversarial
training (Madry et al. 2018) on real images alone. The CE attack against the `pgd_l2` reference, the update
against a hand-built CE-only gradient, the checkpoint feeding `--preset bigroc`, exact resume, mode defaults and
their overrides, old run records, and bad input refused before any step."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfast.checkpoint import estimate_ell0, load_checkpoint
from ccfast.data import uint8_to_float
from ccfast.errors import CCFastError
from ccfast.models import build_model
from ccfast.objectives import cross_entropy_ref, loss_real_ref, realness_score_ref
from ccfast.pgd import pgd_l2
from ccfast.train import build_parser, config_from_args, main
from ccfast.training.attacks import attack_real, random_start
from ccfast.training.config import MODE_DEFAULTS, TrainConfig
from ccfast.training.loop import GENERATED_EVAL_KEYS, GENERATED_METRIC_KEYS, METRIC_KEYS, Trainer
from factories import random_batch
from factories import tiny_eval_model as _tiny_eval_model

ATOL = 1e-6  # attack: same ops in the same order as the reference loop on CPU
FAST = ["--arch", "tiny", "--batch-size", "4", "--real-steps", "2", "--lr", "1e-3", "--log-every", "1", "--quiet",
        "--device", "cpu"]
TIMING = ("sec_per_iter", "images_per_s")


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)

    def write(name, n, keys=("images", "labels")):
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        np.savez(tmp_path / name, **{keys[0]: images, keys[1]: rng.integers(0, 4, n).astype(np.int64)})
        return str(tmp_path / name)

    return {
        "real": write("real.npz", 20),
        "held": write("held.npz", 6),
        "fake": write("fake.npz", 8, ("arr_0", "arr_1")),
        "tmp": tmp_path,
    }


def _robust_args(data, out, *extra):
    return ["--mode", "robust-classifier", "--real", data["real"], "--ell0-data", data["held"], "--out", str(out),
            *FAST, *extra]


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _state(run):
    return torch.load(Path(run) / "state.pt", weights_only=True)


# ------------------------------------------------------------------------------------------ the CE attack


def _batch(n=8, **kw):
    return random_batch(n, **kw)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.for_mode("robust-classifier", real=["r"], out="o", **kw)


def test_ce_attack_raises_cross_entropy_within_eps():
    model, (x, c) = _tiny_eval_model(), _batch()
    ce = lambda xx: cross_entropy_ref(model(xx), c).detach()  # noqa: E731
    # Small steps (first-order regime): every single example's ℓ_CE must rise.
    small = attack_real(model, x, c, _cfg(real_eps=1.0, real_step=0.02, real_steps=3)).images
    assert (ce(small) > ce(x)).all()
    # SPEC-sized steps with a binding ε: on or inside the ball, inside [0, 1], and ℓ_CE up on average.
    result = attack_real(model, x, c, _cfg(real_eps=0.3, real_step=0.25, real_steps=4))
    dist = (result.images - x).flatten(1).norm(dim=1)
    assert float(dist.max()) <= 0.3 * (1 + 1e-5) and float(dist.max()) >= 0.99 * 0.3  # the projection was active
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1
    assert float(ce(result.images).mean()) > float(ce(x).mean())
    assert result.steps_taken.tolist() == [4] * len(x)


@pytest.mark.parametrize("with_random_start", [False, True])
def test_ce_attack_equals_pgd_l2_reference_and_differs_from_the_realness_attack(with_random_start):
    model, (x, c) = _tiny_eval_model(), _batch()
    cfg = _cfg(real_eps=0.5, real_step=0.2, real_steps=3)
    start, generator = None, None
    if with_random_start:
        g = torch.Generator().manual_seed(5)
        start = random_start(x, 0.5, torch.randn(x.shape, generator=g), torch.rand(len(x), generator=g))
        generator = torch.Generator().manual_seed(5)
    ours = attack_real(model, x, c, cfg, start=start)
    ref, ref_steps = pgd_l2(lambda xx: cross_entropy_ref(model(xx), c), x, 3, 0.2, 0.5, ascend=True,
                            random_start=with_random_start, generator=generator)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=ATOL)
    assert ours.steps_taken.tolist() == ref_steps.tolist()
    # The option has an effect: ascending ℓ_real (lower the class logit only) lands elsewhere.
    other = attack_real(model, x, c, cfg.replace(real_attack="realness"), start=start).images
    ref_real, _ = pgd_l2(lambda xx: loss_real_ref(realness_score_ref(model(xx), c)), x, 3, 0.2, 0.5, ascend=True,
                         random_start=with_random_start, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(other, ref_real, rtol=0, atol=ATOL)
    assert float((other - ours.images).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------ mode and config


def test_mode_defaults_and_explicit_flags_win(data):
    def parse(*flags):
        return config_from_args(build_parser().parse_args(["--out", str(data["tmp"] / "o"), "--real", "r.npz", *flags]))

    robust = parse("--mode", "robust-classifier")
    assert robust.mode == "robust-classifier" and robust.classifier_only
    assert (robust.real_attack, robust.w_ce_real, robust.w_real, robust.w_fake, robust.w_ce_fake) == ("ce", 1, 0, 0, 0)
    assert {k: getattr(robust, k) for k in MODE_DEFAULTS["robust-classifier"]} == MODE_DEFAULTS["robust-classifier"]
    with_bce = parse("--mode", "robust-classifier", "--w-real", "0.5", "--real-attack", "realness")
    assert (with_bce.w_real, with_bce.real_attack, with_bce.w_fake) == (0.5, "realness", 0)
    joint = parse("--fake", "f.npz")  # no --mode: the joint model of SPEC §3, unchanged
    assert (joint.mode, joint.real_attack, joint.w_real, joint.w_fake, joint.w_ce_fake) == (
        "joint",
        "realness",
        1,
        1,
        1,
    )
    assert parse("--fake", "f.npz", "--real-attack", "ce").real_attack == "ce"  # joint model, Madry-style real attack


def test_bad_input_is_refused_before_any_step(data, capsys):
    cases = {
        "joint without generated images": (["--real", data["real"], "--iters", "1"],
                                           "no generated images given (--fake)"),
        "robust classifier given generated images": (["--mode", "robust-classifier", "--real", data["real"], "--fake",
                                                      data["fake"]], "trains on real images only"),
        "robust classifier with a generated-image weight": (["--mode", "robust-classifier", "--real", data["real"],
                                                             "--w-fake", "1"], "w_fake = 1.0 weighs a generated-image"),
        "unknown real attack": (["--mode", "robust-classifier", "--real", data["real"], "--real-attack", "bce"], None),
    }
    for name, (args, message) in cases.items():
        out = data["tmp"] / name.replace(" ", "_")
        if message is None:  # argparse refuses it (exit 2 from SystemExit)
            with pytest.raises(SystemExit) as exc:
                main(["--out", str(out), *FAST, *args])
            assert exc.value.code == 2
            assert "invalid choice: 'bce'" in capsys.readouterr().err
        else:
            assert main(["--out", str(out), *FAST, *args]) == 2, name
            err = capsys.readouterr().err
            assert message in err, (name, err)
        assert not out.exists(), name  # refused before the run directory was touched
    with pytest.raises(CCFastError, match="pass --mode robust-classifier"):
        Trainer(TrainConfig(real=[data["real"]], out=str(data["tmp"] / "api"), arch="tiny", device="cpu"))


# ------------------------------------------------------------------------------------------ training


def test_update_is_the_gradient_of_ce_on_ce_attacked_reals_alone(data):
    """One step of the trainer against a hand-built gradient: attack the batch by ascending ℓ_CE (eval mode), then
    mean ℓ_CE of the attacked images in train mode. Nothing else (no ℓ_real, no generated images) may contribute."""
    cfg = TrainConfig.for_mode("robust-classifier", real=[data["real"]], ell0_data=[data["held"]],
                               out=str(data["tmp"] / "step"), arch="tiny", batch_size=4, real_steps=2, lr=1e-3,
                               grad_clip=None, quiet=True, device="cpu")
    trainer = Trainer(cfg)
    assert trainer.fake is None and trainer.data_summary["fake"] == 0
    before = copy.deepcopy(trainer.net)
    x, c = trainer._batch(trainer.real, trainer.real_stream, 0)

    before.eval()
    attacked, _ = pgd_l2(lambda xx: cross_entropy_ref(before(xx), c), x, 2, cfg.real_step, cfg.real_eps, ascend=True)
    realness_attacked, _ = pgd_l2(lambda xx: loss_real_ref(realness_score_ref(before(xx), c)), x, 2, cfg.real_step,
                                  cfg.real_eps, ascend=True)
    assert float((attacked - realness_attacked).abs().max()) > 1e-3  # which attack ran is visible in the gradient
    before.train()
    before.zero_grad(set_to_none=True)
    cross_entropy_ref(before(attacked), c).mean().backward()
    expected = {k: p.grad for k, p in before.named_parameters()}

    sums = trainer.train_step(0)
    for k, p in trainer.net.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-4, atol=1e-6, msg=k)
        assert not torch.equal(p.detach(), dict(before.named_parameters())[k].detach()), f"{k} did not move"
    logged = dict(zip(METRIC_KEYS, sums.tolist(), strict=True))
    assert logged["loss"] == pytest.approx(logged["ce_real"], rel=1e-6)  # loss = CE(real); ℓ_real weighted 0
    assert all(logged[k] == 0 for k in GENERATED_METRIC_KEYS)

    frozen = Trainer(cfg.replace(w_ce_real=0.0, out=str(data["tmp"] / "frozen")))  # no CE: nothing else trains
    snapshot = {k: v.clone() for k, v in frozen.net.state_dict().items()}
    frozen.train_step(0)
    assert all(torch.equal(v, snapshot[k]) for k, v in frozen.net.named_parameters())


def test_robust_classifier_run_writes_a_checkpoint_for_bigroc(data):
    from ccfast.config import RefineConfig
    from ccfast.refine import Refiner

    run = data["tmp"] / "run"
    assert main(_robust_args(data, run, "--iters", "2")) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["mode"] == "robust-classifier" and record["config"]["real_attack"] == "ce"
    assert record["config"]["fake"] == [] and record["data"]["fake"] == 0

    torch.manual_seed(0)  # the trainer seeds its initialisation with --seed (default 0)
    initial = build_model("tiny", 4)
    model, info = load_checkpoint(run / "model.pt")
    moved = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, initial.backbone.state_dict()[k])]
    assert moved, "training did not change the weights"
    with np.load(data["held"]) as z:
        x, c = uint8_to_float(z["images"]), torch.as_tensor(z["labels"])
    assert info.ell0 is not None and info.ell0 == pytest.approx(estimate_ell0(model, x, c, "logit"), rel=1e-6)
    assert info.meta["mode"] == "robust-classifier" and info.meta["iteration"] == 2

    metrics = _metrics(run)
    train = [r for r in metrics if r["kind"] == "train"]
    assert len(train) == 2
    for r in train:
        assert all(r[k] is None for k in GENERATED_METRIC_KEYS) and r["realness_gap"] is None
        assert all(np.isfinite(r[k]) for k in set(METRIC_KEYS) - set(GENERATED_METRIC_KEYS))
    evals = [r for r in metrics if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2]
    assert all(r[k] is None for r in evals for k in GENERATED_EVAL_KEYS)
    assert evals[-1]["ell0"] == pytest.approx(info.ell0, rel=1e-9) and evals[-1]["heldout_acc"] is not None

    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), np.array([0, 1, 3])
    refiner = Refiner(str(run / "model.pt"), config=RefineConfig.from_preset("bigroc"), device="cpu")
    result = refiner.refine(images, labels)
    assert len(result) == 3


def test_robust_classifier_resume_continues_exactly(data):
    extra = ["--augment", "crop-flip", "--real-random-start", "--ckpt-every", "2", "--lr-milestones", "3"]
    straight, split = data["tmp"] / "straight", data["tmp"] / "split"
    assert main(_robust_args(data, straight, "--iters", "4", *extra)) == 0
    assert main(_robust_args(data, split, "--iters", "2", *extra)) == 0
    assert main(["--out", str(split), "--resume", "--iters", "4"]) == 0  # the saved config supplies the mode and rest

    a, b = _state(straight), _state(split)
    assert a["iteration"] == b["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(_metrics(straight)) == strip(_metrics(split))
    assert b["config"]["mode"] == "robust-classifier"


def test_old_run_record_without_the_new_fields_resumes_as_joint(data):
    """config.json files written before `mode` and `real_attack` existed resume with their defaults (joint,
    realness attack): what the older code computed."""
    run = data["tmp"] / "old"
    args = ["--real", data["real"], "--fake", data["fake"], "--ell0-data", data["held"], "--out", str(run), *FAST,
            "--fake-steps-start", "1", "--fake-steps-max", "1"]
    assert main([*args, "--iters", "1"]) == 0
    path = run / "config.json"
    record = json.loads(path.read_text())
    for key in ("mode", "real_attack"):
        del record["config"][key]
    path.write_text(json.dumps(record))
    assert main(["--out", str(run), "--resume", "--iters", "2"]) == 0
    resumed = json.loads(path.read_text())["config"]
    assert (resumed["mode"], resumed["real_attack"]) == ("joint", "realness") and _state(run)["iteration"] == 2
    assert main(["--out", str(run), "--resume", "--iters", "3", "--real-attack", "ce"]) == 2  # still compared


def test_help_mentions_the_robust_classifier_mode(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("--mode {joint,robust-classifier}", "--real-attack {realness,ce}", "ℓ_CE(x, c)", "Madry"):
        assert needle in text, needle
