"""Issue #14: no command destroys an input, writes garbage with exit 0, or answers a typo with a traceback.

Every bad case must give exit code 2, exactly one line on stderr naming the option or file, and leave the
folder as it was: every input and every existing output byte for byte, and no new file (no temp file, no
`.partial`, no half-written graph). The commands run in-process through their `main(argv)` on tiny files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfast.convert import main as convert_main
from ccfast.evaluate import main as evaluate_main
from ccfast.export import main as export_main
from ccfast.refine.__main__ import main as refine_main
from ccfast.train import main as train_main
from ccfast.viz import main as viz_main
from factories import make_samples, make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MAINS = {"refine": refine_main, "train": train_main, "convert": convert_main, "export": export_main,
         "evaluate": evaluate_main, "viz": viz_main}
PROGS = {name: f"python -m ccfast.{name}" for name in MAINS}
TRAIN_FAST = ["--arch", "tiny", "--batch-size", "4", "--real-steps", "1", "--fake-steps-start", "1",
              "--fake-steps-max", "1", "--ell0-holdout", "4", "--quiet", "--device", "cpu"]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Tiny inputs of every kind in one folder (the current directory); paths relative to it."""
    monkeypatch.chdir(tmp_path)
    images, labels = make_samples(12)
    np.savez("samples.npz", arr_0=images, arr_1=labels)
    np.savez("refined.npz", arr_0=255 - images, arr_1=labels)
    np.savez("small.npz", arr_0=images[:, :8, :8], arr_1=labels)
    np.savez("nolabels.npz", arr_0=images)
    make_tiny_checkpoint(tmp_path / "ck.pt")
    torch.save(torch.load("ck.pt", weights_only=True)["state_dict"], "weights.pt")
    Path("step.onnx").write_bytes(b"not really a graph, but an input all the same")
    rng = np.random.default_rng(0)
    np.savez("real.npz", images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), labels=rng.integers(0, 3, 12))
    np.savez("fake.npz", arr_0=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), arr_1=rng.integers(0, 3, 8))
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def refused(capsys, folder: Path, command: str, argv: list, *needles: str) -> str:
    """Run `command` with `argv`; assert exit 2, one stderr line holding every needle, and nothing changed."""
    before = snapshot(folder)
    code = MAINS[command]([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (command, argv, err)
    assert len(lines) == 1, (command, argv, err)
    assert lines[0].startswith(f"{PROGS[command]}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(folder) == before, (command, argv, "files changed")
    return lines[0]


def refine_args(*extra, output="out.npz"):
    return ["--checkpoint", "ck.pt", "--input", "samples.npz", "--output", output, "--device", "cpu", "--quiet",
            "--steps", "2", *extra]


def train_args(*extra, out="run"):
    return ["--real", "real.npz", "--fake", "fake.npz", "--out", out, "--iters", "1", *TRAIN_FAST, *extra]


# ------------------------------------------------------------------ rules shared by the six commands

# (command, argv) whose output is one of its inputs; --overwrite is given, and must not make it acceptable.
SAME_AS_INPUT = {
    "refine": refine_args("--overwrite", output="samples.npz"),
    "train": train_args(out="real.npz"),
    "convert": ["--arch", "tiny", "--weights", "weights.pt", "--out", "weights.pt", "--overwrite"],
    "export": ["--onnx", "step.onnx", "--trt", "step.onnx", "--overwrite"],
    "evaluate": ["--ref", "samples.npz", "--samples", "refined.npz", "--out", "samples.npz", "--overwrite"],
    "viz": ["--before", "samples.npz", "--after", "refined.npz", "--out", "refined.npz", "--overwrite"],
}


@pytest.mark.parametrize("command", sorted(MAINS))
def test_output_that_is_an_input_is_refused_even_with_overwrite(command, world, capsys):
    refused(capsys, world, command, SAME_AS_INPUT[command], "is also the input")


def _existing_output(command: str) -> tuple[list, str]:
    """Argv of a run whose output exists (made here), and the output's option."""
    if command == "train":
        from ccfast.training.config import TrainConfig

        Path("run").mkdir()
        cfg = TrainConfig(real=["real.npz"], fake=["fake.npz"], out="run")
        Path("run/config.json").write_text(json.dumps({"config": cfg.to_dict()}))
        return train_args(), "--resume"
    out = {"refine": "out.npz", "convert": "out.pt", "export": "new.onnx", "evaluate": "m.json", "viz": "g.png"}[
        command
    ]
    Path(out).write_bytes(b"an earlier result, to keep")
    argv = {
        "refine": refine_args(output=out),
        "convert": ["--arch", "tiny", "--out", out],
        "export": ["--checkpoint", "ck.pt", "--onnx", out],
        "evaluate": ["--ref", "samples.npz", "--samples", "refined.npz", "--out", out],
        "viz": ["--before", "samples.npz", "--after", "refined.npz", "--out", out],
    }[command]
    return argv, "--overwrite"


@pytest.mark.parametrize("command", sorted(MAINS))
def test_existing_output_without_overwrite_is_refused(command, world, capsys):
    argv, needle = _existing_output(command)
    refused(capsys, world, command, argv, needle)


FOLDER_AS_FILE_OUTPUT = {
    "refine": refine_args("--overwrite", output="adir.npz"),
    "convert": ["--arch", "tiny", "--out", "adir.npz", "--overwrite"],
    "export": ["--checkpoint", "ck.pt", "--onnx", "adir.npz", "--overwrite"],
    "evaluate": ["--ref", "samples.npz", "--samples", "refined.npz", "--out", "adir.npz", "--overwrite"],
    "viz": ["--before", "samples.npz", "--after", "refined.npz", "--out", "adir.npz", "--overwrite"],
}


@pytest.mark.parametrize("command", sorted(FOLDER_AS_FILE_OUTPUT))
def test_folder_where_a_file_is_written_is_refused_before_any_work(command, world, capsys):
    Path("adir.npz").mkdir()
    if command == "viz":  # viz writes PNGs: the name is refused first, then the folder
        FOLDER_AS_FILE_OUTPUT["viz"][5] = "adir.png"
        Path("adir.png").mkdir()
    refused(capsys, world, command, FOLDER_AS_FILE_OUTPUT[command], "folder")


def test_train_out_that_is_a_file_is_refused(world, capsys):
    Path("notes.txt").write_text("keep")
    refused(capsys, world, "train", train_args(out="notes.txt"), "--out", "not a run directory")


# ------------------------------------------------------------------ refine: options

REFINE_BAD = [
    (["--eps", "-1"], "--eps"), (["--eps", "0"], "--eps"), (["--eps", "nan"], "--eps"),
    (["--steps", "-3"], "--steps"), (["--alpha", "-0.1"], "--alpha"), (["--alpha", "0"], "--alpha"),
    (["--preset", "bigroc", "--alpha", "inf"], "--alpha"), (["--sigma", "-1"], "--sigma"),
    (["--preset", "sgld", "--sigma", "nan"], "--sigma"), (["--w-ce", "nan"], "--w-ce"), (["--w-d", "inf"], "--w-d"),
    (["--tau", "nan"], "--tau"), (["--ell0", "nan"], "--ell0"), (["--batch-size", "0"], "--batch-size"),
    (["--device", "bogus"], "--device"), (["--engine-option", "foo=bar"], "foo"),
]


@pytest.mark.parametrize("extra,needle", REFINE_BAD, ids=[" ".join(e) for e, _ in REFINE_BAD])
def test_refine_bad_options_one_line(extra, needle, world, capsys):
    refused(capsys, world, "refine", refine_args(*extra), needle)


def test_refine_output_must_be_npz(world, capsys):
    refused(capsys, world, "refine", refine_args(output="out.txt"), "--output", ".npz")


def _write_checkpoint_payload(path, **changes):
    payload = torch.load("ck.pt", weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


def test_refine_refuses_non_finite_results_and_checkpoints(world, capsys):
    payload = torch.load("ck.pt", weights_only=True)
    sd = dict(payload["state_dict"])
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 4)
    sd[name] = torch.full_like(sd[name], float("nan"))
    _write_checkpoint_payload("nan_weights.pt", state_dict=sd)
    # Nothing is written, not even a .partial with a manifest: a NaN result is found in the first chunk...
    before = snapshot(world)
    assert refine_main(refine_args(output="o.npz")[:1] + ["nan_weights.pt"] + refine_args(output="o.npz")[2:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "nothing was written" in err, err
    assert not Path("o.npz").exists() and not Path("o.npz.json").exists()
    assert set(snapshot(world)) - set(before) <= {"o.npz.partial", "o.npz.partial/manifest.json"}
    # ... and that .partial (manifest, no chunks) does not block the corrected rerun.
    assert refine_main(refine_args(output="o.npz")) == 0
    capsys.readouterr()
    # Impossible normalisers are refused when the checkpoint is read.
    for field, value in (("std", [0.0, 0.0, 0.0]), ("mean", [math.nan] * 3), ("ell0", math.inf)):
        _write_checkpoint_payload("bad.pt", **{field: value})
        argv = refine_args(output="p.npz")
        argv[1] = "bad.pt"
        refused(capsys, world, "refine", argv, "bad.pt", "impossible numbers")


def test_run_record_is_strict_json(world, capsys):
    assert refine_main(refine_args("--tau=-1e9", output="o.npz")) == 0  # tau below every realness: no step
    text = Path("o.npz.json").read_text()

    def no_constants(name):
        raise AssertionError(f"bare {name} in the run record")

    json.loads(text, parse_constant=no_constants)
    from ccfast.io_utils import write_json_atomic

    write_json_atomic("x.json", {"a": math.nan, "b": [math.inf, 1.5]})
    assert json.loads(Path("x.json").read_text(), parse_constant=no_constants) == {"a": None, "b": [None, 1.5]}


def test_manifest_without_chunks_never_blocks_but_chunks_of_another_run_do(world, capsys):
    Path("o.npz.partial").mkdir()
    Path("o.npz.partial/manifest.json").write_text('{"another": "run"}')
    assert refine_main(refine_args(output="o.npz")) == 0
    assert Path("o.npz").exists() and not Path("o.npz.partial").exists()
    Path("q.npz.partial").mkdir()
    Path("q.npz.partial/manifest.json").write_text('{"another": "run"}')
    Path("q.npz.partial/chunk_000000.npz").write_bytes(Path("o.npz").read_bytes())
    capsys.readouterr()
    refused(capsys, world, "refine", refine_args(output="q.npz"), "--overwrite")


def test_refine_interrupt_message_on_its_own_line(world, capsys, monkeypatch):
    from ccfast.refine import Refiner

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Refiner, "refine", interrupted)
    argv = [a for a in refine_args(output="o.npz") if a != "--quiet"]  # with the progress bar
    assert refine_main(argv) == 130
    err = capsys.readouterr().err
    assert any(line.startswith("python -m ccfast.refine: interrupted;") for line in err.split("\n")), repr(err)


# ------------------------------------------------------------------ convert, export, viz, train: options

CONVERT_BAD = [
    (["--num-classes", "-1"], "--num-classes"), (["--num-classes", "0"], "--num-classes"),
    (["--image-size", "0"], "--image-size"), (["--ell0-max", "-1"], "--ell0-max"),
    (["--std", "0", "0", "0"], "--std"), (["--mean", "nan", "nan", "nan"], "--mean"),
    (["--weights", "missing.pt"], "missing.pt"), (["--ell0-data", "nolabels.npz"], "nolabels.npz"),
]


@pytest.mark.parametrize("extra,needle", CONVERT_BAD, ids=[" ".join(e) for e, _ in CONVERT_BAD])
def test_convert_bad_options_one_line(extra, needle, world, capsys):
    line = refused(capsys, world, "convert", ["--arch", "tiny", "--image-size", "16", "--out", "c.pt", *extra], needle)
    assert "--labels argmax" not in line  # only refine has that option


EXPORT_BAD = [
    (["--trt-opt-level", "9"], "--trt-opt-level"), (["--batch-buckets", "1,x"], "--batch-buckets"),
    (["--batch-buckets", "0"], "--batch-buckets"), (["--workspace-mib", "0"], "--workspace-mib"),
]


@pytest.mark.parametrize("extra,needle", EXPORT_BAD, ids=[" ".join(e) for e, _ in EXPORT_BAD])
def test_export_bad_options_before_the_graph_is_written(extra, needle, world, capsys):
    refused(capsys, world, "export", ["--checkpoint", "ck.pt", "--onnx", "g.onnx", "--trt", "g.plan", *extra], needle)


VIZ_BAD = [
    (["--n", "0"], "--n"), (["--n", "-3"], "--n"), (["--scale", "0"], "--scale"), (["--start", "12"], "--start"),
    (["--start", "-1"], "--start"), (["--diff-gain", "nan"], "--diff-gain"), (["--after", "small.npz"], "small.npz"),
]


@pytest.mark.parametrize("extra,needle", VIZ_BAD, ids=[" ".join(e) for e, _ in VIZ_BAD])
def test_viz_bad_options_one_line(extra, needle, world, capsys):
    refused(capsys, world, "viz", ["--before", "samples.npz", "--after", "refined.npz", "--out", "g.png", *extra],
            needle)


def _corrupt_copy(src: str, dst: str) -> None:
    """A stored (uncompressed) .npz with one byte of array data flipped: it opens, but fails its CRC check."""
    data = bytearray(Path(src).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(dst).write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["corrupt samples", "corrupt ref", "batch size"])
def test_evaluate_bad_input_refused_before_any_feature(case, world, capsys):
    _corrupt_copy("refined.npz", "crc.npz")
    argv = {"corrupt samples": ["--ref", "samples.npz", "--samples", "refined.npz", "crc.npz"],
            "corrupt ref": ["--ref", "crc.npz", "--samples", "refined.npz"],
            "batch size": ["--ref", "samples.npz", "--samples", "refined.npz", "--batch-size", "0"]}[case]
    needle = "--batch-size" if case == "batch size" else "crc.npz"
    # No network is given: the check must come before the feature network is even looked for.
    refused(capsys, world, "evaluate", [*argv, "--out", "m.json", "--cache-dir", "cache"], needle)


@pytest.mark.parametrize("extra,needle", [(["--lr", "nan"], "lr"), (["--w-real", "nan"], "w_real"),
                                          (["--real", "missing.npz"], "missing.npz")])
def test_train_bad_options_one_line(extra, needle, world, capsys):
    argv = train_args(*extra)
    if extra[0] == "--real":
        argv[1] = extra[1]
        argv = argv[:-2]
    refused(capsys, world, "train", argv, needle)


def test_train_resume_from_another_directory_and_without_state(world, capsys, monkeypatch):
    assert train_main(train_args()) == 0
    record = json.loads(Path("run/config.json").read_text())
    assert all(os.path.isabs(p) for p in record["config"]["real"] + record["config"]["fake"])
    elsewhere = world / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train_main(["--out", str(world / "run"), "--resume", "--iters", "2"]) == 0
    assert torch.load(world / "run" / "state.pt", weights_only=True)["iteration"] == 2
    monkeypatch.chdir(world)
    Path("run/state.pt").unlink()
    capsys.readouterr()
    refused(capsys, world, "train", ["--out", "run", "--resume", "--iters", "3"], "state.pt", "--overwrite")


# ------------------------------------------------------------------ words

def test_text_file_as_checkpoint_says_so(world, capsys):
    Path("notes.txt").write_text("this is not a model\n")
    argv = refine_args()
    argv[1] = "notes.txt"
    refused(capsys, world, "refine", argv, "notes.txt", "not a PyTorch file")


def test_text_file_as_weights_says_so(world, capsys):
    Path("notes.txt").write_text("this is not a model\n")
    refused(capsys, world, "convert", ["--arch", "tiny", "--weights", "notes.txt", "--out", "c.pt"], "notes.txt",
            "not a PyTorch file")


def test_viz_help_names_its_three_rows(capsys):
    with pytest.raises(SystemExit):
        viz_main(["--help"])
    text = capsys.readouterr().out
    assert "row 1" in text and "row 2" in text and "row 3" in text and "--diff-gain" in text


def test_readme_quick_start_matches_what_train_writes():
    readme = (ROOT / "README.md").read_text()
    assert "inference.pt" not in readme  # train writes RUN_DIR/model.pt
    assert "--device cuda" in readme and "45 min" in readme


# ------------------------------------------------------------------ property: random options

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

NUMBER_TEXT = st.sampled_from(["-1", "0", "1e-3", "0.05", "0.5", "1.5", "3", "nan", "inf", "-inf", "1e30", "-0"])
# Values of a 3-number option (no KEY=VALUE form there): "-inf" would read as an unknown option to argparse.
NARGS_NUMBER_TEXT = st.sampled_from(["-1", "0", "1e-3", "0.5", "3", "nan", "inf", "1e30", "-0"])


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(preset=st.sampled_from(["paper", "bigroc", "bigroc-pl", "sgld"]),
                  options=st.dictionaries(st.sampled_from(["--alpha", "--eps", "--tau", "--ell0", "--w-ce", "--w-d",
                                                           "--sigma"]), NUMBER_TEXT, max_size=4),
                  steps=st.sampled_from(["-2", "0", "1", "3"]), batch=st.sampled_from(["-1", "0", "5", "64"]))
def test_random_refine_options_run_finite_or_fail_cleanly(world, capsys, preset, options, steps, batch):
    for stale in ("o.npz", "o.npz.json"):
        Path(stale).unlink(missing_ok=True)
    extra = ["--preset", preset, f"--steps={steps}", f"--batch-size={batch}"]
    extra += [f"{k}={v}" for k, v in options.items()]  # KEY=VALUE: argparse reads a bare "-inf" as an option
    before = snapshot(world)
    code = refine_main(refine_args(*extra, output="o.npz"))
    err = capsys.readouterr().err
    if code == 0:
        with np.load("o.npz") as z:
            for k in z.files:
                assert z[k].dtype.kind not in "fc" or np.isfinite(z[k]).all(), (extra, k)
        json.loads(Path("o.npz.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    else:
        assert code == 2, (extra, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("python -m ccfast.refine: error: "), (extra, err)
        assert snapshot(world) == before, extra


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(n=st.integers(-3, 40), start=st.integers(-2, 14), scale=st.integers(-1, 4),
                  gain=NUMBER_TEXT, after=st.sampled_from(["refined.npz", "small.npz", "samples.npz"]))
def test_random_viz_options_write_a_png_or_fail_cleanly(world, capsys, n, start, scale, gain, after):
    Path("g.png").unlink(missing_ok=True)
    before = snapshot(world)
    code = viz_main(["--before", "samples.npz", "--after", after, "--out", "g.png", f"--n={n}",
                     f"--start={start}", f"--scale={scale}", f"--diff-gain={gain}"])
    err = capsys.readouterr().err
    if code == 0:
        assert Path("g.png").read_bytes().startswith(b"\x89PNG")
    else:
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "error:" in err, err
        assert snapshot(world) == before


@hypothesis.settings(max_examples=20, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    classes=st.sampled_from(["-1", "0", "3", "10"]),
    size=st.sampled_from(["0", "8", "16"]),
    mean=NARGS_NUMBER_TEXT,
    std=NARGS_NUMBER_TEXT,
    ell0_max=st.sampled_from(["-1", "0", "1", "5", "1000"]),
    ell0=st.booleans(),
)
def test_random_convert_options_write_a_finite_checkpoint_or_fail_cleanly(world, capsys, classes, size, mean, std,
                                                                         ell0_max, ell0):
    from ccfast.checkpoint import load_checkpoint

    Path("c.pt").unlink(missing_ok=True)
    argv = ["--arch", "tiny", "--out", "c.pt", f"--num-classes={classes}", f"--image-size={size}",
            "--mean", "0.5", "0.5", mean, "--std", std, "0.25", "0.25", f"--ell0-max={ell0_max}"]
    if ell0:
        argv += ["--ell0-data", "samples.npz"]
    before = snapshot(world)
    code = convert_main(argv)
    err = capsys.readouterr().err
    if code == 0:
        model, info = load_checkpoint("c.pt")
        assert info.ell0 is None or math.isfinite(info.ell0)
        out = model(torch.rand(2, 3, *info.image_size))
        assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
    else:
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "error:" in err, err
        assert snapshot(world) == before
