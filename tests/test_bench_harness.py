"""The runtime benchmarks' harness on CPU: report writing, ratios, input rotation, timing loop and memory growth,
option parsing (--ort-variant), BN folding's one home, the roofline's analytic count and ncu CSV parsing, and a
tiny end-to-end run of bench_refine.py."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package

from benchmarks import bench_refine, roofline  # noqa: E402
from benchmarks.harness import InputPool, Report, parse_engine_options, parse_variant, parse_variants, time_calls  # noqa: E402
from ccfast.bn_fold import fold_batchnorm  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.models import build_model  # noqa: E402

CPU = torch.device("cpu")


def _random_bn(model):
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


# ---------------------------------------------------------------- BN folding


def test_fold_batchnorm_computes_the_same_function_without_batchnorms():
    model = _random_bn(build_model("tiny", 10))
    folded, status = fold_batchnorm(model)
    assert status == "on"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the input is left as it was
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_keeps_an_untraceable_network_and_says_why():
    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # control flow on data: fx cannot trace it

    net = DataDependent().eval()
    out, status = fold_batchnorm(net)
    assert out is net and status.startswith("skipped:")


# ---------------------------------------------------------------- report


def _report(tmp_path, echo=False):
    fields = ["section", "method", "batch", "image_steps_per_s", "x_vs_base", "notes"]
    return Report(tmp_path / "out", "bench_x", fields, {"card": "test card", "commit": "abc123"},
                  ratios={"x_vs_base": "base"}, short=["method", "batch", "image_steps_per_s", "x_vs_base"],
                  echo=echo)


def test_report_writes_csv_and_markdown_with_ratios_per_group(tmp_path):
    r = _report(tmp_path)
    r.add(section="a", method="base", batch=1, image_steps_per_s=100.0)
    r.add(section="a", method="fast", batch=1, image_steps_per_s=250.0, notes="x|y")
    r.add(section="a", method="fast", batch=16, image_steps_per_s=999.0)  # no baseline at this batch
    r.add(section="b", method="base", batch=1, image_steps_per_s=50.0)
    r.add(section="b", method="fast", batch=1, image_steps_per_s=75.0)
    r.add(section="b", method="broken", batch=1, notes="FAILED: x")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "bench_x.csv").read_text())))
    assert [row["x_vs_base"] for row in rows] == ["1.0", "2.5", "", "1.0", "1.5", ""]
    md = (tmp_path / "out" / "bench_x.md").read_text()
    assert "- card: test card" in md and "- commit: abc123" in md
    assert "| a | fast | 1 | 250 | 2.5 | x/y |" in md  # a '|' inside a cell cannot break the table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench_x.csv", "bench_x.md"]  # no temp files
    short = r.short_table().splitlines()
    assert short[0].split() == ["method", "batch", "image_steps_per_s", "x_vs_base"]
    assert len(short) == 7 and short[2].split() == ["fast", "1", "250", "2.5"]


def test_a_ratio_against_several_baselines_takes_the_fastest_in_each_group(tmp_path):
    fields = ["section", "method", "batch", "image_steps_per_s", "x_vs_best", "notes"]
    r = Report(tmp_path / "out", "bench_y", fields, {}, ratios={"x_vs_best": ("recipe a", "recipe b")}, echo=False)
    r.add(section="s", method="recipe a", batch=1, image_steps_per_s=100.0)
    r.add(section="s", method="recipe b", batch=1, image_steps_per_s=200.0)
    r.add(section="s", method="fast", batch=1, image_steps_per_s=300.0)
    r.add(section="s", method="recipe a", batch=2, image_steps_per_s=80.0)  # recipe b did not run here
    r.add(section="s", method="fast", batch=2, image_steps_per_s=120.0)
    assert [row["x_vs_best"] for row in r.rows] == [0.5, 1.0, 1.5, 1.0, 1.5]


def test_report_refuses_an_unknown_column(tmp_path):
    with pytest.raises(ValueError, match="no column"):
        _report(tmp_path).add(method="m", colour="red")


# ---------------------------------------------------------------- inputs and timing


def test_input_pool_rotates_distinct_sets_and_set_zero_is_reproducible():
    pool = InputPool(4, 16, 10, CPU, n_sets=3, seed=5)
    assert pool.get(3) is pool.get(0) and pool.get(4) is pool.get(1)
    assert not torch.equal(pool.get(0)[0], pool.get(1)[0]) and not torch.equal(pool.get(1)[0], pool.get(2)[0])
    again = InputPool(4, 16, 10, CPU, n_sets=3, seed=5)
    assert torch.equal(again.get(0)[0], pool.get(0)[0]) and torch.equal(again.get(0)[1], pool.get(0)[1])
    x, labels = pool.get(0)
    assert x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1 and labels.max() < 10
    with pytest.raises(CCFastError):
        InputPool(4, 16, 10, CPU, n_sets=0)


def test_time_calls_loads_before_every_call_times_only_the_reps_and_sees_growth():
    loaded, calls, memory = [], [], [100]

    def call():
        calls.append(loaded[-1])
        memory[0] += 8 if len(calls) > 3 else 0  # grows from call 4 on

    t = time_calls(call, CPU, warmup=2, reps=8, before=loaded.append, probe=lambda: memory[0])
    assert loaded == list(range(10)) and calls == list(range(10))
    assert len(t.seconds) == 8 and t.median_s >= 0
    assert len(t.memory_after) == 10 and t.growth_bytes(2) == 7 * 8  # after call 10 minus after call 2
    steady = time_calls(lambda: None, CPU, warmup=1, reps=3, probe=lambda: 42)
    assert steady.growth_bytes(2) == 0
    assert time_calls(lambda: None, CPU, warmup=0, reps=2).growth_bytes() is None
    with pytest.raises(ValueError):
        time_calls(lambda: None, CPU, clock="sundial")


# ---------------------------------------------------------------- options


def test_engine_options_keep_commas_inside_values():
    assert parse_engine_options("precision=fp16,buckets=1,16,256,prefer_nhwc=1") == {
        "precision": "fp16", "buckets": "1,16,256", "prefer_nhwc": "1"}
    assert parse_engine_options("") == {}
    for bad in ("fp16", "=3", "a=1,a=2"):
        with pytest.raises(CCFastError):
            parse_engine_options(bad)


def test_ort_variants_parse_and_refuse_bad_ones():
    assert parse_variant("fp32") == ("fp32", {})
    assert parse_variant("fast:precision=fp16,cuda_graph=1") == ("fast", {"precision": "fp16", "cuda_graph": "1"})
    for bad in (":dtype=fp16", "x:dtype"):
        with pytest.raises(CCFastError):
            parse_variant(bad)
    with pytest.raises(CCFastError, match="more than once"):
        parse_variants(["a:dtype=fp16", "a"])


def test_ort_variants_refuses_an_unknown_profile_in_one_line(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from benchmarks import ort_variants

    assert ort_variants.main(["--out", str(tmp_path), "--device", "cpu", "--profiles", "fp16-dgc,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ort_variants: --profiles: unknown bogus; choose from fp32-dgc, fp16-dgc, fp32, fp16"]


def test_bench_refine_forwards_variants_and_exits_2_on_bad_input(capsys):
    args = bench_refine.parse_args(["--ort-variant", "fp32", "--ort-variant", "nhwc:prefer_nhwc=1,buckets=1,16",
                                    "--arch", "resnet50,wide_resnet50_2", "--batches", "1,16,256"])
    assert args.ort_variant_list == [("fp32", {}), ("nhwc", {"prefer_nhwc": "1", "buckets": "1,16"})]
    assert args.arch_list == ["resnet50", "wide_resnet50_2"] and args.batch_list == [1, 16, 256]
    prof = bench_refine.parse_args(["--triton-options", "compile=0",
                                    "--profile-options", "fused_net=1,fused_ops=cudnn"])
    assert prof.topts | prof.profile_opts == {"compile": "0", "fused_net": "1", "fused_ops": "cudnn"}
    keys = [k for k, _, _ in bench_refine.contender_list(bench_refine.parse_args(["--methods", "reference,ort"]))]
    assert keys == ["reference", "ort:fp32", "ort:fp16"]  # the default variants
    for argv in (["--ort-variant", ":x=1"], ["--batches", "0"], ["--methods", "reference,bogus"],
                 ["--triton-options", "compile"], ["--profile-options", "fused_net"]):
        assert bench_refine.main(argv + ["--device", "cpu", "--early-stop", "0"]) == 2
        assert "bench_refine:" in capsys.readouterr().err


# ---------------------------------------------------------------- roofline


def test_minimal_bytes_of_the_tiny_net_by_hand():
    """TinyNet at 16×16, per image: conv1 8·16·16 = 2048, max-pool 8·8·8 = 512, conv2 512, conv3 (stride 2)
    16·4·4 = 256, global pool 16, fc 10 → 3354 layer-output elements; ReLUs after conv1 (2048), after the
    residual add (512) and after conv3 (256) → 2816 mask bits each way. Weights after folding: conv1 216 + 8
    (bias from BN), conv2 576 + 8, conv3 1152 + 16, fc 160 + 10 = 2146 parameters."""
    mb = roofline.minimal_bytes(build_model("tiny", 10), (3, 16, 16), batch=4, act_bytes=2, weight_bytes=2)
    assert (mb.layers, mb.relus) == (6, 3)
    assert mb.activations == mb.gradients == 2 * 3354 * 2
    assert mb.relu_masks == 2 * 2816 / 8
    assert mb.image_io == 6 * 4 * 3 * 16 * 16
    assert mb.weights_per_batch == 2146 * 2
    assert mb.per_image_step == pytest.approx(2146 * 2 / 4 + 4 * 3354 * 2 + 704 + 18432)


NCU_HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
              '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _ncu_line(result: int, metric: str, unit: str, value: str) -> str:
    fields = [str(result), "123", "python3", "127.0.0.1", "graph_1", "1", "7", "", "", "0", "9.0",
              "Command line profiler metrics", metric, unit, value]
    return ",".join(f'"{f}"' for f in fields)


NCU_CSV = "\n".join([
    "==PROF== Connected to process 123 (/usr/bin/python3)",
    '==PROF== Profiling "graph": 0%....50%....100% - 1 pass',
    NCU_HEADER,
    _ncu_line(0, "dram__bytes_read.sum", "byte", "1,500,000"),  # thousands separators, as ncu prints them
    _ncu_line(0, "dram__bytes_write.sum", "Kbyte", "500"),
    _ncu_line(0, "gpu__time_duration.sum", "nsecond", "2,000"),
    _ncu_line(1, "dram__bytes_read.sum", "byte", "500,000"),
    _ncu_line(1, "dram__bytes_write.sum", "byte", "0"),
    _ncu_line(1, "gpu__time_duration.sum", "usecond", "3"),
    "==PROF== Disconnected from process 123", ""])


def test_ncu_csv_is_summed_over_results_with_units():
    sums = roofline.parse_ncu_csv(NCU_CSV)
    assert sums == {"results": 2, "dram_read_bytes": 2_000_000, "dram_write_bytes": 500_000,
                    "gpu_time_s": pytest.approx(5e-6)}
    with pytest.raises(CCFastError, match="no ncu CSV"):
        roofline.parse_ncu_csv("==PROF== ERR_NVGPUCTRPERM - no permission\n")
    with pytest.raises(CCFastError, match="unknown unit"):
        roofline.parse_ncu_csv(NCU_CSV.replace('"Kbyte"', '"furlong"'))


def test_ncu_command_and_missing_ncu(tmp_path):
    cmd = roofline.ncu_command("ncu", "graph", tmp_path / "log.csv", ["--worker", "profile"])
    assert cmd[:3] == ["ncu", "--clock-control", "none"] and "--csv" in cmd
    assert cmd[cmd.index("--metrics") + 1] == "dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum"
    assert cmd[cmd.index("--graph-profiling") + 1] == "graph"
    assert cmd[-2:] == ["--worker", "profile"]
    assert "--graph-profiling" not in roofline.ncu_command("ncu", "kernels", tmp_path / "l", [])
    assert roofline.find_ncu("none") is None and roofline.find_ncu(str(tmp_path / "no-ncu")) is None

    class Args:
        ncu, batch = str(tmp_path / "no-ncu"), 4

    assert "not measured: Nsight Compute (ncu) not found" in roofline.measure_bytes(Args, "tiny")["status"]


# ---------------------------------------------------------------- end to end


def test_bench_refine_smoke_run_on_cpu(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "res"
    rc = bench_refine.main(["--device", "cpu", "--arch", "tiny", "--num-classes", "10", "--size", "16",
                            "--batches", "1,2", "--methods", "reference,compile-graph,ort", "--ort-variant", "fp32",
                            "--recipe-compile", "0", "--steps", "2", "--warmup", "1", "--reps", "2",
                            "--early-stop", "0", "--out", str(out), "--commit", "test"])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO((out / "bench_refine.csv").read_text())))
    assert [(r["method"], r["batch"]) for r in rows] == [
        (m, b) for b in ("1", "2") for m in ("reference engine", bench_refine.BASELINE, "ort engine, fp32")]
    for r in rows:
        assert float(r["ms_per_step"]) > 0 and r["x_vs_recipe"] and float(r["growth_mib"]) == 0  # CPU: no counter
    assert all(float(r["x_vs_recipe"]) == 1.0 for r in rows if r["method"] == bench_refine.BASELINE)
    assert all(float(r["max_abs_dx"]) < 1e-4 for r in rows if r["method"] == "ort engine, fp32")
    md = (out / "bench_refine.md").read_text()
    assert "- commit: test" in md and "versions: torch" in md
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1].split()[:3] == ["tiny", "ort", "engine,"]


def test_a_contender_with_two_rows_writes_both(tmp_path, monkeypatch):
    # The triton contender adds a "graph replay only" row on a GPU; its second row once failed on the set-up time.
    def two_rows(b, pool):
        first = bench_refine.setup_reference(b, pool)[0]
        second = bench_refine.Timed("reference engine, again", "fp32", first.call, first.load, first.steps)
        return [first, second]

    monkeypatch.setitem(bench_refine.SETUPS, "reference", two_rows)
    out = tmp_path / "res"
    rc = bench_refine.main(["--device", "cpu", "--arch", "tiny", "--num-classes", "10", "--size", "16",
                            "--batches", "1", "--methods", "reference", "--steps", "1", "--warmup", "1",
                            "--reps", "1", "--early-stop", "0", "--out", str(out), "--commit", "test"])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO((out / "bench_refine.csv").read_text())))
    assert [r["method"] for r in rows] == ["reference engine", "reference engine, again"]
    assert all(float(r["ms_per_step"]) > 0 for r in rows)
    assert float(rows[0]["setup_s"]) >= 0 and rows[1]["setup_s"] == ""
