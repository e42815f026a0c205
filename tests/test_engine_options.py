"""Engine options (refine/options.py) and engine choice (refine.make_engine), the same for every fast engine.

Runs on the CPU: the options are checked in `Engine.__init__` before any runtime (CUDA, ONNX Runtime,
TensorRT) is touched, and SGLD never reaches a fast engine.
"""

from __future__ import annotations

import importlib
import logging
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton` of the kernels

from ccfast.config import RefineConfig
from ccfast.errors import CCFastError
from ccfast.objectives import HeadParams
from ccfast.refine import ENGINES, Refiner
from ccfast.refine.base import ResolvedScalars
from ccfast.refine.options import Option, flag, integer, parse_options
from ccfast.refine.torch_engine import TorchEngine
from factories import make_samples, tiny_eval_model

# Per engine: its module's import requirement, then an option of each kind the test feeds a bad value to.
FAST = {
    "triton": ("triton", {"bool": "graphs", "int": "compact_every", "choice": "dtype", "buckets": "buckets"}),
    "ort": ("onnxruntime", {"bool": "cuda_graph", "int": "threads", "choice": "dtype", "buckets": "buckets"}),
    "trt": (None, {"bool": "cuda_graph", "choice": "runtime", "buckets": "buckets"}),
}
BAD = {"bool": "yes2", "int": "x3", "choice": "int8", "buckets": "1,x"}


def engine_class(name):
    needs, _ = FAST[name]
    if needs is not None:
        pytest.importorskip(needs)
    spec = ENGINES[name]
    return getattr(importlib.import_module(spec.module), spec.cls)


def scalars():
    return ResolvedScalars(tau=1.0, head=HeadParams(ell0=1.0))


@pytest.mark.parametrize("engine", list(FAST))
@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_value_is_a_clear_error_in_every_engine(engine, kind):
    cls = engine_class(engine)
    name = FAST[engine][1].get(kind)
    if name is None:
        pytest.skip(f"engine {engine} has no {kind} option")
    assert cls.OPTIONS[name].kind == kind, "the table above names an option of that kind"
    value = BAD[kind]
    with pytest.raises(CCFastError) as err:
        cls(tiny_eval_model(), RefineConfig(steps=2), scalars(), torch.device("cpu"), **{name: value})
    message = str(err.value)
    assert "\n" not in message and f"engine {engine!r}" in message and f"{name}={value!r}" in message
    assert f"expected {cls.OPTIONS[name].accepted()}" in message


@pytest.mark.parametrize("engine", list(FAST))
def test_an_unknown_option_is_an_error_that_lists_the_known_ones(engine):
    cls = engine_class(engine)
    with pytest.raises(CCFastError, match=f"engine {engine!r} has no option foo; options: ") as err:
        cls(tiny_eval_model(), RefineConfig(steps=2), scalars(), torch.device("cpu"), foo="bar")
    assert all(name in str(err.value) for name in cls.OPTIONS)


@pytest.mark.parametrize("engine", ["ort", "trt"])
def test_step_graph_engines_take_the_exporters_dgrad_choice(engine):
    """The engines that export their own graph offer the exporter's `GraphLayout.dgrad`, same values, same default."""
    from ccfast.onnx_export.build import GraphLayout
    from ccfast.onnx_export.layers import ConvBN

    option = engine_class(engine).OPTIONS["dgrad"]
    assert option.kind == "choice" and option.choices == ConvBN.DGRADS and option.default == GraphLayout().dgrad
    with pytest.raises(CCFastError, match=r"option dgrad='fft': expected conv or conv_transpose"):
        parse_options(engine, engine_class(engine).OPTIONS, {"dgrad": "fft"})


def test_the_reference_engine_takes_no_options():
    with pytest.raises(CCFastError, match="engine 'torch' has no option foo; it takes no options"):
        TorchEngine(tiny_eval_model(), RefineConfig(steps=2), scalars(), torch.device("cpu"), foo="bar")


def test_parser_reads_each_kind_strictly():
    spec = {"on": flag(True), "n": integer(5), "m": integer(None, minimum=0),
            "dtype": Option("choice", "fp32", choices=("fp32", "fp16")), "b": Option("buckets", None, auto=True)}
    assert parse_options("e", spec, {}) == {"on": True, "n": 5, "m": None, "dtype": "fp32", "b": None}
    got = parse_options("e", spec, {"on": "OFF", "n": "7", "m": 0, "dtype": "FP16", "b": "64,8,16,8"})
    assert got == {"on": False, "n": 7, "m": 0, "dtype": "fp16", "b": (8, 16, 64)}
    assert parse_options("e", spec, {"on": False, "b": "auto", "n": None}) == {
        **parse_options("e", spec, {}),
        "on": False,
    }
    for bad in ({"on": "yes2"}, {"on": ""}, {"n": "0"}, {"n": "3.5"}, {"n": True}, {"m": "-1"}, {"dtype": "bf16"},
                {"b": "0,4"}, {"b": ""}):
        with pytest.raises(CCFastError, match="^engine 'e' option "):
            parse_options("e", spec, bad)


@pytest.mark.parametrize("engine", list(FAST))
def test_sgld_runs_on_the_reference_engine_with_a_warning(engine, tiny_ckpt, caplog):
    engine_class(engine)
    config = RefineConfig.from_preset("sgld", steps=2)
    images, labels = make_samples(n=3)
    with caplog.at_level(logging.WARNING, logger="ccfast.refine"):
        refiner = Refiner(tiny_ckpt, engine=engine, config=config, device="cpu")
    assert f"engine {engine!r}: SGLD runs with the torch reference engine" in caplog.text
    assert refiner.engine.name == "torch" and refiner.engine_name == engine
    got = refiner.refine(images, labels)
    want = Refiner(tiny_ckpt, engine="torch", config=config, device="cpu").refine(images, labels)
    assert torch.equal(got.images, want.images) and torch.equal(got.objective_final, want.objective_final)
    # Its options are still checked although the engine does not run.
    with pytest.raises(CCFastError, match=f"engine {engine!r} has no option foo"):
        Refiner(tiny_ckpt, engine=engine, config=config, device="cpu", foo="bar")
    bad = FAST[engine][1]["bool"]
    with pytest.raises(CCFastError, match=f"{bad}='yes2'"):
        Refiner(tiny_ckpt, engine=engine, config=config, device="cpu", **{bad: "yes2"})


@pytest.mark.parametrize("engine", list(FAST))
def test_fast_engines_refuse_sgld_when_built_directly(engine):
    cls = engine_class(engine)
    with pytest.raises(CCFastError, match=f"engine {engine!r} runs pgd only"):
        cls(tiny_eval_model(), RefineConfig.from_preset("sgld", steps=2), scalars(), torch.device("cpu"))


@pytest.mark.parametrize("engine,option", [("trt", "foo=bar"), ("trt", "cuda_graph=yes2"), ("torch", "foo=bar")])
def test_cli_bad_engine_option_is_exit_2_and_one_line(engine, option, tiny_ckpt, samples_file, tmp_path, capsys):
    from ccfast.refine.__main__ import main

    out = tmp_path / "r.npz"
    code = main(["--checkpoint", str(tiny_ckpt), "--input", str(samples_file), "--output", str(out), "--engine", engine,
                 "--engine-option", option, "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"engine {engine!r}" in err, err
    assert not out.exists()


def test_a_repeated_option_is_refused_by_the_cli_and_the_benchmarks_alike(tiny_ckpt, samples_file, tmp_path, capsys):
    """One rule (refine/options.parse_key_values): a key given twice is an error, not "the last one wins"."""
    from benchmarks.harness import parse_engine_options as bench_options
    from ccfast.refine.__main__ import main
    from ccfast.refine.options import parse_key_values

    out = tmp_path / "r.npz"
    code = main(["--checkpoint", str(tiny_ckpt), "--input", str(samples_file), "--output", str(out), "--engine",
                 "torch", "--engine-option", "dtype=fp32", "--engine-option", "dtype=bf16", "--device", "cpu",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'dtype' given twice" in err, err
    assert not out.exists()
    with pytest.raises(CCFastError, match="'cuda_graph' given twice"):
        bench_options("cuda-graph=1,cuda_graph=0")  # '-' reads as '_' everywhere, so these are one key
    assert parse_key_values(["buckets=1,16", "compile-mode=max"], "x") == {"buckets": "1,16", "compile_mode": "max"}
