"""`python -m ccfast.export` without TensorRT: writing and verifying graphs, and its error messages.
(The `--trt` half of the command line is tested in test_trt_build.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'ccfast[onnx]')")

from export_cases import DGRADS, checkpoint  # noqa: E402


def test_export_cli_without_tensorrt_work(tmp_path, capsys):
    """--onnx alone (with --verify) needs no TensorRT; bad invocations fail with a clear message, exit 2."""
    from ccfast.export import main

    out = tmp_path / "s.onnx"
    assert main(["--checkpoint", str(checkpoint("cifar_resnet20")), "--onnx", str(out), "--verify"]) == 0
    assert "active masks equal -> ok" in capsys.readouterr().err
    assert main(["--onnx", str(tmp_path / "none.onnx"), "--trt", str(tmp_path / "p.plan")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert main([]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_export_cli_help_teaches(capsys):
    from ccfast.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--checkpoint", "--trt", "--batch-buckets", "examples:", "params (10,)", "--engine-option plan=",
                   "--dgrad"):
        assert needle in text


@pytest.mark.parametrize("dgrad", DGRADS)
def test_export_cli_fp16_graph_verifies(tmp_path, capsys, dgrad):
    from ccfast.export import main
    from ccfast.onnx_export.build import read_graph_metadata

    out = tmp_path / "s16.onnx"
    assert main(["--checkpoint", str(checkpoint("tiny")), "--onnx", str(out), "--dtype", "fp16", "--dgrad", dgrad,
                 "--verify"]) == 0
    err = capsys.readouterr().err
    assert "verify (fp16" in err and "-> ok" in err
    assert read_graph_metadata(out)["dgrad"] == dgrad
