"""`python -m ccfast.train` end to end on CPU: exact resume, 2-process DDP (gloo) = 1 process, ℓ0 in the
checkpoint, initialisation, gradients through every term inside the loop, and bad input refused before any
training step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfast.checkpoint import estimate_ell0, load_checkpoint
from ccfast.data import uint8_to_float
from ccfast.errors import CCFastError
from ccfast.train import main
from ccfast.training.config import TrainConfig
from ccfast.training.loop import METRIC_KEYS, Trainer
from ccfast.training.model_init import build_initial_model

# A tiny net on 8×8 images with short attacks; the attack schedule grows every 2 iterations up to 3 steps.
FAST = [
    "--arch",
    "tiny",
    "--batch-size",
    "4",
    "--real-steps",
    "2",
    "--fake-steps-start",
    "2",
    "--fake-steps-every",
    "2",
    "--fake-steps-max",
    "3",
    "--lr",
    "1e-3",
    "--log-every",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
TIMING = ("sec_per_iter", "images_per_s")


def _write(path, images, labels, layout):
    keys = ("arr_0", "arr_1") if layout == "arr" else ("images", "labels")
    np.savez(path, **{keys[0]: images, keys[1]: np.asarray(labels, dtype=np.int64)})
    return str(path)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda n, s=8: rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)  # noqa: E731
    return {
        "real": _write(tmp_path / "real.npz", img(20), rng.integers(0, 4, 20), "images"),
        "fake": _write(tmp_path / "fake.npz", img(14), rng.integers(0, 4, 14), "arr"),
        "held": _write(tmp_path / "held.npz", img(6), rng.integers(0, 4, 6), "images"),
        "tmp": tmp_path, "img": img,
    }


def _args(data, out, *extra):
    return [
        "--real",
        data["real"],
        "--fake",
        data["fake"],
        "--ell0-data",
        data["held"],
        "--out",
        str(out),
        *FAST,
        *extra,
    ]


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _state(run):
    return torch.load(Path(run) / "state.pt", weights_only=True)


def test_resume_continues_exactly(data):
    extra = [
        "--augment",
        "crop-flip",
        "--real-random-start",
        "--ckpt-every",
        "3",
        "--lr-milestones",
        "4",
        "--lr-gamma",
        "0.5",
    ]
    straight, split = data["tmp"] / "straight", data["tmp"] / "split"
    assert main(_args(data, straight, "--iters", "6", *extra)) == 0
    assert main(_args(data, split, "--iters", "3", *extra)) == 0
    assert main(["--out", str(split), "--resume", "--iters", "6"]) == 0  # the saved config supplies the rest

    a, b = _state(straight), _state(split)
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    assert a["scheduler"] == b["scheduler"]
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(straight)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(split)]

    train = [r for r in _metrics(straight) if r["kind"] == "train"]
    assert [r["fake_steps"] for r in train] == [2, 2, 3, 3, 3, 3]  # min(3, 2 + ⌊t/2⌋) for updates t = 0..5
    assert [r["lr"] for r in train] == pytest.approx([1e-3] * 4 + [5e-4] * 2)
    for r in train:
        assert set(METRIC_KEYS) <= set(r) and all(np.isfinite(r[k]) for k in METRIC_KEYS)
        assert 0 <= r["fake_early_stopped"] <= 1 and 0 <= r["fake_steps_taken"] <= r["fake_steps"]
    evals = [r["iter"] for r in _metrics(straight) if r["kind"] == "eval"]
    assert evals == [0, 3, 6]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(data):
    """torchrun --nproc-per-node 2 (gloo on CPU), global batch 4 = 2 per rank, against one process with batch 4.
    BatchNorm frozen: without SyncBatchNorm (CUDA only) per-rank batch statistics would differ by design."""
    extra = ["--iters", "3", "--batchnorm", "frozen", "--augment", "flip", "--real-random-start", "--ckpt-every", "3"]
    one, two = data["tmp"] / "one", data["tmp"] / "two"
    assert main(_args(data, one, *extra)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ccfast.train",
           *_args(data, two, *extra)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _state(one), _state(two)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    torch.manual_seed(0)  # the trainer seeds the initialisation with --seed (default 0)
    initial = build_initial_model("tiny", 4, None, False)
    assert any(not torch.equal(v, initial.model.state_dict()[k]) for k, v in b["model"].items())  # it trained
    for ra, rb in zip(_metrics(one), _metrics(two), strict=True):
        for k, v in ra.items():
            if isinstance(v, float) and k not in TIMING:
                assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


def test_ell0_is_estimated_stored_and_reloaded(data, tmp_path):
    from factories import make_tiny_checkpoint

    init = make_tiny_checkpoint(tmp_path / "init.pt", num_classes=4, image_size=8, width=8)
    run = tmp_path / "run"
    assert main(_args(data, run, "--iters", "2", "--init", str(init), "--realness", "logsumexp")) == 0
    model, info = load_checkpoint(run / "model.pt")
    with np.load(data["held"]) as z:
        x, c = uint8_to_float(z["images"]), torch.as_tensor(z["labels"])
    assert info.ell0 == pytest.approx(estimate_ell0(model, x, c, "logsumexp"), rel=1e-6)
    assert info.realness == "logsumexp" and info.image_size == (8, 8) and info.num_classes == 4
    assert info.arch_kwargs == {"width": 8} and info.meta["iteration"] == 2
    evals = [r for r in _metrics(run) if r["kind"] == "eval"]
    assert evals[-1]["ell0"] == pytest.approx(info.ell0, rel=1e-9)

    from ccfast.config import RefineConfig
    from ccfast.refine import Refiner

    with np.load(data["fake"]) as z:  # the checkpoint feeds refinement as is: τ = ℓ0 comes from it
        images, labels = z["arr_0"][:3], z["arr_1"][:3]
    refiner = Refiner(str(run / "model.pt"), config=RefineConfig(realness="logsumexp", steps=2), device="cpu")
    assert refiner.tau == pytest.approx(info.ell0) and len(refiner.refine(images, labels)) == 3


def test_initialisation_from_ccfast_and_third_party_weights(tmp_path):
    from factories import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "c.pt", num_classes=10, width=8)
    ref, _ = load_checkpoint(ckpt)
    ref_sd = ref.backbone.state_dict()

    same = build_initial_model("tiny", 10, str(ckpt), fresh_head=False).model.backbone.state_dict()
    assert all(torch.equal(same[k], ref_sd[k]) for k in ref_sd)
    for classes, fresh in ((4, False), (10, True)):  # class count differs, or asked: head new, body loaded
        sd = build_initial_model("tiny", classes, str(ckpt), fresh_head=fresh).model.backbone.state_dict()
        assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd if not k.startswith("fc."))
        assert not torch.equal(sd["fc.weight"][:4], ref_sd["fc.weight"][:4])
    with pytest.raises(CCFastError, match="cifar_resnet20"):
        build_initial_model("cifar_resnet20", 10, str(ckpt), fresh_head=False)

    third = tmp_path / "third.pth"  # a DataParallel-style file: keys under "module."
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref_sd.items()}}, third)
    loaded = build_initial_model("tiny", 10, str(third), fresh_head=False)
    assert all(torch.equal(loaded.model.backbone.state_dict()[k], ref_sd[k]) for k in ref_sd)
    assert "head loaded" in loaded.description
    fresh = build_initial_model("tiny", 4, str(third), fresh_head=False)
    assert "fresh head" in fresh.description and fresh.model.backbone.fc.weight.shape[0] == 4


def _trainer(data, out, **weights):
    cfg = TrainConfig(real=[data["real"]], fake=[data["fake"]], ell0_data=[data["held"]], out=str(out), arch="tiny",
                      batch_size=4, real_steps=1, fake_steps_start=1, lr=1e-3, quiet=True, device="cpu", **weights)
    return Trainer(cfg)


@pytest.mark.parametrize("term", ["w_real", "w_fake", "none"])
def test_bce_terms_alone_train_the_model_inside_the_loop(data, term):
    """Regression test for the official code's defect (detached BCE: only CE on real images trained)."""
    weights = {k: 0.0 for k in ("w_ce_real", "w_ce_fake", "w_real", "w_fake")}
    if term != "none":
        weights[term] = 1.0
    trainer = _trainer(data, data["tmp"] / term, **weights)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.train_step(0)
    moved = [k for k, v in trainer.net.named_parameters() if not torch.equal(v, before[k])]
    if term == "none":
        assert moved == []  # zero loss, zero update: the check below can fail
    else:
        assert len(moved) == len(list(trainer.net.parameters())), f"{term} left parameters untouched"


def test_bf16_autocast_step_on_cpu(data):
    cfg = TrainConfig(real=[data["real"]], fake=[data["fake"]], ell0_data=[data["held"]], out=str(data["tmp"] / "bf16"),
                      arch="tiny", batch_size=4, real_steps=1, fake_steps_start=1, amp="bf16", quiet=True, device="cpu")
    sums = Trainer(cfg).train_step(0)
    assert torch.isfinite(sums).all()


def _bad_inputs(data):
    img, tmp = data["img"], data["tmp"]
    empty = _write(tmp / "empty.npz", np.zeros((0, 8, 8, 3), np.uint8), [], "images")
    small = _write(tmp / "small_fake.npz", img(5, 6), [0, 1, 2, 3, 0], "arr")
    wide = _write(tmp / "wide_fake.npz", img(5), [0, 1, 2, 3, 9], "arr")
    return {
        "empty real set": (["--real", empty], "holds no images"),
        "labels beyond --num-classes": (["--num-classes", "3"], "out of range for a model with 3 classes"),
        "generated labels beyond the real classes": (["--fake", wide], "pass --num-classes"),
        "real and generated sizes differ": (["--fake", small], "must have one size"),
        "invalid attack setting": (["--real-eps", "0"], "real_eps must be > 0"),
    }


def test_bad_input_is_refused_before_any_training_step(data, capsys):
    for name, (override, message) in _bad_inputs(data).items():
        out = data["tmp"] / name.replace(" ", "_")
        args = _args(data, out, "--iters", "1")
        for flag, value in zip(
            override[::2], override[1::2], strict=True
        ):  # later flags win, except list flags: replace them
            if flag in ("--real", "--fake"):
                i = args.index(flag)
                args[i + 1] = value
            else:
                args += [flag, value]
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert not (out / "state.pt").exists() and not (out / "metrics.jsonl").exists(), name


def test_resume_refuses_another_config_and_an_existing_run_needs_resume(data, capsys):
    run = data["tmp"] / "run"
    assert main(_args(data, run, "--iters", "1")) == 0
    before = _state(run)
    capsys.readouterr()
    assert main(_args(data, run, "--iters", "2", "--lr", "2e-3", "--resume")) == 2
    assert "another configuration (lr: run has 0.001, now 0.002)" in capsys.readouterr().err
    assert main(_args(data, run, "--iters", "2")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert _state(run)["iteration"] == before["iteration"] == 1
    assert main(_args(data, run, "--iters", "1", "--overwrite")) == 0  # --overwrite starts afresh


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--resume", "torchrun", "ℓ_real", "D(x̂_g,i) > D(x̂_r,i)", "model.pt", "--init"):
        assert needle in text, needle
