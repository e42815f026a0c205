"""`python -m ccfast.refine` end to end on a tiny model: outputs, resume, bad input, torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfast.refine import Refiner
from ccfast.refine.__main__ import main
from factories import make_samples, make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return main([*map(str, args), "--device", "cpu", "--quiet"])


def test_end_to_end_outputs(tiny_ckpt, samples_file, tmp_path):
    out = tmp_path / "refined.npz"
    assert (
        run("--checkpoint", tiny_ckpt, "--input", samples_file, "--output", out, "--steps", 3, "--batch-size", 5) == 0
    )
    with np.load(out) as z, np.load(samples_file) as s:
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == s["arr_0"].shape
        assert np.array_equal(z["arr_1"], s["arr_1"])
        for k in ("steps", "realness_init", "realness_final", "objective_init", "objective_final", "stopped"):
            assert z[k].shape == (len(s["arr_0"]),)
        # Untouched examples survive the float round trip bit for bit (SPEC §4 quantisation rule).
        untouched = z["steps"] == 0
        assert np.array_equal(z["arr_0"][untouched], s["arr_0"][untouched])
        refined = z["arr_0"]
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["config"]["steps"] == 3 and meta["engine"] == "torch" and meta["tau"] == 2.0
    assert not Path(str(out) + ".partial").exists()
    # The CLI equals the library API.
    with np.load(samples_file) as s:
        api = Refiner(tiny_ckpt, config=meta_config(meta), device="cpu").refine(s["arr_0"], s["arr_1"]).uint8()
    assert np.array_equal(api, refined)


def meta_config(meta):
    from ccfast.config import RefineConfig

    return RefineConfig.from_dict(meta["config"])


def test_images_layout_and_float_output(tiny_ckpt, tmp_path):
    images, labels = make_samples(4)
    inp = tmp_path / "set.npz"
    np.savez(inp, images=images, labels=labels)
    out = tmp_path / "o.npz"
    assert run("--checkpoint", tiny_ckpt, "--input", inp, "--output", out, "--preset", "bigroc", "--save-float") == 0
    with np.load(out) as z:
        assert "images" in z.files and "labels" in z.files and z["float_images"].dtype == np.float32
        assert np.array_equal(np.round(z["float_images"] * 255).astype(np.uint8), z["images"])
        assert (z["steps"] == 7).all()


def test_interrupted_run_resumes_from_last_finished_chunk(tiny_ckpt, samples_file, tmp_path, monkeypatch):
    args = ("--checkpoint", tiny_ckpt, "--input", samples_file, "--steps", 2, "--batch-size", 4, "--tau", 1e9)
    ref = tmp_path / "ref.npz"
    assert run(*args, "--output", ref) == 0

    calls = {"n": 0}
    original = Refiner.refine

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Refiner, "refine", flaky)
    out = tmp_path / "out.npz"
    assert run(*args, "--output", out) == 130
    assert not out.exists() and len(list(Path(str(out) + ".partial").glob("chunk_*.npz"))) == 1
    calls["n"] = -100  # no more interruptions; count the chunks actually refined
    assert run(*args, "--output", out) == 0
    assert calls["n"] == -100 + 2  # 12 images in chunks of 4: one was already done
    with np.load(out) as a, np.load(ref) as b:
        for k in b.files:
            assert np.array_equal(a[k], b[k]), k
    # A changed setting does not silently mix with old chunks.
    Path(str(out) + ".partial").mkdir()
    (Path(str(out) + ".partial") / "manifest.json").write_text("{}")
    shutil.copy(ref, Path(str(out) + ".partial") / "chunk_000000.npz")
    out.unlink()
    assert run(*args, "--output", out) == 2


@pytest.mark.parametrize(
    "case", ["dtype", "shape", "labels_range", "labels_missing", "truncated", "not_npz", "no_images"]
)
def test_bad_input_files(case, tiny_ckpt, tmp_path, capsys):
    images, labels = make_samples(4)
    inp = tmp_path / "bad.npz"
    expect = {
        "dtype": ("arr_0", images.astype(np.float32) / 255, labels, "uint8"),
        "shape": ("arr_0", images[..., :2], labels, "NHWC"),
        "labels_range": ("arr_0", images, labels + 100, "out of range"),
        "labels_missing": ("arr_0", images, None, "no labels"),
        "no_images": ("x", images, labels, "no image array"),
    }
    if case in expect:
        key, im, lb, msg = expect[case]
        arrays = {key: im}
        if lb is not None:
            arrays["arr_1"] = lb
        np.savez(inp, **arrays)
    elif case == "truncated":
        np.savez(inp, arr_0=images, arr_1=labels)
        data = inp.read_bytes()
        inp.write_bytes(data[: len(data) // 2])
        msg = str(inp)
    else:
        inp.write_text("hello")
        msg = "not a readable .npz"
    out = tmp_path / "o.npz"
    assert run("--checkpoint", tiny_ckpt, "--input", inp, "--output", out) == 2
    err = capsys.readouterr().err
    assert msg in err and str(inp) in err, err
    assert not out.exists()


def test_bad_checkpoints(samples_file, tmp_path, capsys):
    out = tmp_path / "o.npz"
    # Missing file.
    assert run("--checkpoint", tmp_path / "nope.pt", "--input", samples_file, "--output", out) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    # Wrong class count for the labels in the file (labels up to 9, model with 3 classes).
    ckpt3 = make_tiny_checkpoint(tmp_path / "c3.pt", num_classes=3)
    assert run("--checkpoint", ckpt3, "--input", samples_file, "--output", out) == 2
    assert "out of range for a model with 3 classes" in capsys.readouterr().err
    # Third-party weights given where a ccfast checkpoint is expected.
    raw = tmp_path / "raw.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, raw)
    assert run("--checkpoint", raw, "--input", samples_file, "--output", out) == 2
    assert "not a ccfast inference checkpoint" in capsys.readouterr().err
    # A checkpoint whose state dict does not match its declared architecture.
    good = make_tiny_checkpoint(tmp_path / "g.pt")
    payload = torch.load(good, weights_only=True)
    payload["arch"] = "cifar_resnet20"
    bad = tmp_path / "b.pt"
    torch.save(payload, bad)
    assert run("--checkpoint", bad, "--input", samples_file, "--output", out) == 2
    assert "does not match architecture" in capsys.readouterr().err
    # Truncated checkpoint.
    trunc = tmp_path / "t.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    assert run("--checkpoint", trunc, "--input", samples_file, "--output", out) == 2
    assert "unreadable or truncated" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_needs_overwrite(tiny_ckpt, samples_file, tmp_path, capsys):
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep me")
    assert run("--checkpoint", tiny_ckpt, "--input", samples_file, "--output", out) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def test_unavailable_engine_says_what_to_install(tiny_ckpt, samples_file, tmp_path, capsys):
    from ccfast.refine import ENGINES, load_engine_class

    for name in ENGINES:
        if name == "torch":
            continue
        try:
            load_engine_class(name)
        except Exception as exc:  # noqa: BLE001 - the message is what is tested
            assert "needs" in str(exc) or "not part of this ccfast build" in str(exc)


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "ccfast.refine", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--engine", "--preset", "bigroc", "sgld", "resume", "torchrun", "α=0.002 per example"):
        assert word in out.stdout


def test_torchrun_two_ranks_write_one_merged_output(tiny_ckpt, samples_file, tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    args = ["--checkpoint", tiny_ckpt, "--input", samples_file, "--steps", 2, "--batch-size", 3, "--tau", 1e9,
            "--device", "cpu", "--quiet"]
    single = tmp_path / "single.npz"
    assert main([*map(str, args), "--output", str(single)]) == 0
    multi = tmp_path / "multi.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "ccfast.refine",
            *map(str, args),
            "--output",
            str(multi),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(single) as a, np.load(multi) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6 if a[k].dtype.kind == "f" else 0)
