"""`--engine triton` against the reference engine (`torch_engine.py`, the spec of record).

On a CUDA GPU: the compiled network and the step loop in CUDA graphs, fp32 (TF32 off) within 1e-4 of the
reference after T steps with identical stop masks and step counts, with and without compaction; bf16
within a tolerance set by plain PyTorch's own bf16 error (the reference loop under bf16 autocast).
Without a GPU those tests skip; the loop logic (buckets, compaction, statistics, bit-exact stopped images)
still runs on CPU with graphs and compile off and the kernels under Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from factories import randomize_batchnorm, small_bottleneck_resnet, triton_kernels_or_skip

CUDA = triton_kernels_or_skip("the triton engine needs `pip install 'ccfast[triton]'`")

from ccfast.config import RefineConfig  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.models import build_model  # noqa: E402
from ccfast.objectives import HeadParams, objective_ref  # noqa: E402
from ccfast.refine.base import ResolvedScalars  # noqa: E402
from ccfast.refine.torch_engine import TorchEngine  # noqa: E402
from ccfast.refine.triton_engine import TritonEngine, TritonOptions  # noqa: E402

needs_gpu = pytest.mark.skipif(
    not CUDA, reason="CUDA graphs and the compiled engine need a CUDA GPU (the loop logic is tested on CPU)"
)

DEVICE = torch.device("cuda" if CUDA else "cpu")
# The loop without graphs or compile: runs on CPU (interpreted kernels) and on a GPU alike.
LOOP_OPTS = {"graphs": 0, "compile": 0, "dtype": "fp32"}


def _model(arch="tiny", num_classes=10, seed=0):
    torch.manual_seed(seed)
    # Non-trivial BatchNorm statistics, so folding them is exercised.
    model = randomize_batchnorm(build_model(arch, num_classes, **({"width": 8} if arch == "tiny" else {})))
    return model.eval().requires_grad_(False).to(DEVICE)


def _batch(B, size, num_classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (B,), generator=g)
    return x0.to(DEVICE), labels.to(DEVICE), torch.arange(B)


def _splitting_tau(model, x0, labels):
    """τ = ℓ0 a little above the median initial realness: some images stop at t=0, some mid-way, some never."""
    with torch.no_grad():
        _, r = objective_ref(model(x0), labels, HeadParams())
    return float(r.median()) + 0.02


def _scalars(tau, objective="eq12", realness="logit", ell0=None):
    return ResolvedScalars(tau=tau, head=HeadParams(objective=objective, realness=realness,
                                                    ell0=ell0 if ell0 is not None else (tau or 0.0)))


def _compare_exact(out, ref, x0, atol, kinks=0.0):
    """fp32 engine vs reference: images within atol, identical step counts and stop masks.

    `kinks` > 0 allows that fraction of pixels past atol (never past 50·atol): in a deep ReLU network, a
    pre-activation within rounding of 0 (~1e-7 relative: folded BatchNorm, another cuDNN algorithm) can
    switch a unit's gradient path on or off, which moves the pixels under that unit's receptive field by a
    fraction of one step. Seen on an H200 with ResNet-20: 0.2% of pixels, at most 6.6e-4, after 8 steps of
    α=0.3 (one step moves a pixel by ~5e-3), while the step counts and stop masks stayed identical.
    """
    assert torch.equal(out.steps, ref.steps), (out.steps.tolist(), ref.steps.tolist())
    assert torch.equal(out.stopped, ref.stopped)
    if kinks:
        diff = (out.images - ref.images).abs()
        assert float((diff > atol).float().mean()) <= kinks and float(diff.max()) <= 50 * atol, (
            float((diff > atol).float().mean()), float(diff.max()))
    else:
        torch.testing.assert_close(out.images, ref.images, rtol=0, atol=atol)
    for name in ("realness_init", "realness_final", "objective_init", "objective_final"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-4 if not kinks else 1e-3,
                                   atol=atol if not kinks else 1e-3, msg=name)
    untouched = ref.steps == 0
    assert torch.equal(out.images[untouched], x0[untouched]), "images stopped at t=0 must come back bit for bit"
    assert torch.equal(out.labels.cpu(), ref.labels.cpu())


def _run_both(model, config, scalars, x0, labels, idx, **opts):
    ref = TorchEngine(model, config, scalars, DEVICE).refine_batch(x0, labels, idx)
    eng = TritonEngine(model, config, scalars, DEVICE, **opts)
    return eng, eng.refine_batch(x0, labels, idx), ref


# ---------------------------------------------------------------- loop logic (CPU too: no graphs, no compile)


@pytest.mark.parametrize("compact_every", [1, 3, 100])
def test_loop_matches_reference_with_compaction(fp32_without_tf32, compact_every):
    model = _model()
    x0, labels, idx = _batch(17, 16)
    tau = _splitting_tau(model, x0, labels)
    config = RefineConfig(steps=7, alpha=0.3, eps=1.0)
    eng, out, ref = _run_both(model, config, _scalars(tau), x0, labels, idx, compact_every=compact_every, **LOOP_OPTS)
    assert 0 < int((ref.steps == 0).sum()) < 17 and int((ref.steps == 7).sum()) > 0, "τ should split the batch"
    _compare_exact(out, ref, x0, atol=1e-5)
    buckets = sorted(eng.timings()["capture_s"])
    if compact_every < 7:
        assert len(buckets) > 1, "stopped images should have been compacted into a smaller bucket"


def test_no_early_stop_zero_steps_and_other_objectives(fp32_without_tf32):
    model = _model()
    x0, labels, idx = _batch(5, 16, seed=3)
    for config, scalars in [
        (RefineConfig(steps=4, alpha=0.2, eps=None, early_stop="none"), _scalars(None, "ce", ell0=0.0)),
        (RefineConfig(steps=3, alpha=0.2, eps=0.5, early_stop="none"), _scalars(None, "jem", "logsumexp", ell0=0.0)),
        (RefineConfig(steps=0, alpha=0.2, eps=0.5), _scalars(0.5)),
    ]:
        _, out, ref = _run_both(model, config, scalars, x0, labels, idx, **LOOP_OPTS)
        _compare_exact(out, ref, x0, atol=1e-5)


def test_batch_smaller_than_min_bucket_and_reuse(fp32_without_tf32):
    model = _model()
    config = RefineConfig(steps=3, alpha=0.3, eps=1.0, early_stop="none")
    eng = TritonEngine(model, config, _scalars(None, ell0=1.0), DEVICE, min_bucket=4, **LOOP_OPTS)
    ref_eng = TorchEngine(model, config, _scalars(None, ell0=1.0), DEVICE)
    for B, seed in ((1, 4), (3, 5), (1, 6)):
        x0, labels, idx = _batch(B, 16, seed=seed)
        _compare_exact(eng.refine_batch(x0, labels, idx), ref_eng.refine_batch(x0, labels, idx), x0, atol=1e-5)
    assert sorted(eng.timings()["capture_s"]) == [4], "batches of 1 and 3 both run in the one bucket of 4"


def test_refiner_runs_the_triton_engine(tiny_ckpt, fp32_without_tf32):
    """Through the public API, with engine options as the CLI passes them (strings)."""
    import ccfast
    from factories import make_samples

    images, labels = make_samples(n=6)
    config = RefineConfig(steps=3, alpha=0.2, tau=1.0, ell0=1.0)
    options = {"dtype": "fp32", "compile": "0", "graphs": "1" if CUDA else "0"}
    ref = ccfast.Refiner(tiny_ckpt, engine="torch", config=config, device=DEVICE, batch_size=4).refine(images, labels)
    out = ccfast.Refiner(tiny_ckpt, engine="triton", config=config, device=DEVICE, batch_size=4, **options).refine(
        images, labels
    )
    assert torch.equal(out.steps, ref.steps) and torch.equal(out.stopped, ref.stopped)
    torch.testing.assert_close(out.images, ref.images, rtol=0, atol=1e-4)


def test_options_are_parsed_and_checked():
    model = _model()
    config, scalars = RefineConfig(steps=2), _scalars(1.0)
    with pytest.raises(CCFastError, match="no option"):
        TritonEngine(model, config, scalars, DEVICE, warp_speed="9")
    with pytest.raises(CCFastError, match="bf16, fp16 or fp32"):
        TritonEngine(model, config, scalars, DEVICE, dtype="int8", graphs="0")
    with pytest.raises(CCFastError, match="0/1"):
        TritonEngine(model, config, scalars, DEVICE, compile="maybe", graphs="0")
    with pytest.raises(CCFastError, match="positive integer"):
        TritonEngine(model, config, scalars, DEVICE, compact_every="0", graphs="0")
    eng = TritonEngine(model, config, scalars, DEVICE, buckets="64,8,16", compact_every="3", graphs="0", compile="0")
    assert eng.opts.buckets == (8, 16, 64) and eng.opts.compact_every == 3
    assert eng._bucket_size(9, initial=True) == 16 and eng._bucket_size(100, initial=True) == 100
    if not CUDA:
        with pytest.raises(CCFastError, match="CUDA"):
            TritonEngine(model, config, scalars, DEVICE, graphs="1")
        assert "CUDA" in TritonEngine.availability()
    else:
        assert TritonEngine.availability() == "ok"


# ---------------------------------------------------------------- fused_net=1: the network without autograd


@pytest.mark.parametrize("B,H,W,steps,early_stop", [(1, 21, 19, 2, False), (3, 17, 15, 3, True)],
                         ids=["B1-no-stop", "B3-early-stop"])
def test_fused_net_refines_like_the_reference(fp32_without_tf32, B, H, W, steps, early_stop):
    """fused_net=1 on a small bottleneck ResNet (fp32, loop on CPU): images, step counts, stop masks and
    statistics as the reference engine's. With early stopping τ splits the batch (one image stops at t=0) and
    compact_every=1 moves the others through smaller buckets."""
    model = small_bottleneck_resnet(seed=B).to(DEVICE)
    g = torch.Generator().manual_seed(B + H)
    x0 = torch.rand(B, 3, H, W, generator=g).to(DEVICE)
    labels = torch.randint(0, 10, (B,), generator=g).to(DEVICE)
    idx = torch.arange(B)
    if early_stop:
        tau = _splitting_tau(model, x0, labels)
        config, scalars = RefineConfig(steps=steps, alpha=0.3, eps=1.0), _scalars(tau)
    else:
        config, scalars = RefineConfig(steps=steps, alpha=0.3, eps=1.0, early_stop="none"), _scalars(None, ell0=1.0)
    eng, out, ref = _run_both(model, config, scalars, x0, labels, idx, fused_net=1, compact_every=1, **LOOP_OPTS)
    assert eng.net is None and eng.timings()["options"]["fused_net"] is True, "the fused network, not autograd"
    if early_stop:
        assert int((ref.steps == 0).sum()) >= 1 and len(set(ref.steps.tolist())) > 1, "τ should split the batch"
        assert len(eng.timings()["capture_s"]) > 1, "stopped images should have been compacted"
    else:
        assert ref.steps.tolist() == [steps] * B
    assert float((ref.images - x0).abs().max()) > 0.01, "the images should have moved"
    _compare_exact(out, ref, x0, atol=1e-5)


def test_fused_net_refuses_other_networks_and_fold_bn_0():
    config, scalars = RefineConfig(steps=2), _scalars(1.0)
    with pytest.raises(CCFastError, match="fused_net=1: fused network: TinyNet is not supported") as err:
        TritonEngine(_model(), config, scalars, DEVICE, fused_net=1, **LOOP_OPTS)
    assert "\n" not in str(err.value)
    with pytest.raises(CCFastError, match="fold_bn=0"):
        TritonEngine(small_bottleneck_resnet(), config, scalars, DEVICE, fused_net=1, fold_bn=0, **LOOP_OPTS)
    with pytest.raises(CCFastError, match="0/1"):
        TritonEngine(small_bottleneck_resnet(), config, scalars, DEVICE, fused_net="maybe", **LOOP_OPTS)


def test_fused_ops_cudnn_needs_fused_net_and_a_gpu():
    """fused_ops=cudnn (the cuDNN-graph blocks) is an option of fused_net=1 only, and of a CUDA device."""
    with pytest.raises(CCFastError, match="fused_ops=cudnn needs fused_net=1") as err:
        TritonOptions.parse({"fused_ops": "cudnn"}, torch.device("cuda"))
    assert "\n" not in str(err.value)
    with pytest.raises(CCFastError, match="fused_ops=cudnn needs a CUDA device"):
        TritonOptions.parse({"fused_net": "1", "fused_ops": "cudnn", "graphs": "0"}, torch.device("cpu"))
    assert TritonOptions.parse({"fused_net": "1"}, torch.device("cpu")).fused_ops == "triton"
    with pytest.raises(CCFastError, match="fused_ops"):
        TritonOptions.parse({"fused_net": "1", "fused_ops": "cutlass"}, torch.device("cuda"))


def test_fused_net_is_never_compiled():
    """fused_net=1 defaults to compile=0 on CUDA too (the default path still compiles), and compile=1 is refused:
    on the H200 Inductor failed on the fused network's max-pool backward with a symbolic batch (stop 20)."""
    cuda = torch.device("cuda")  # parse only reads the device's type: no GPU needed
    assert TritonOptions.parse({"fused_net": "1"}, cuda).compile is False
    assert TritonOptions.parse({}, cuda).compile is True
    assert TritonOptions.parse({"fused_net": "1"}, cuda).min_bucket == 1, "no compiled graph to share across sizes"
    with pytest.raises(CCFastError, match="fused_net=1 runs without torch.compile: drop compile=1") as err:
        TritonEngine(small_bottleneck_resnet(), RefineConfig(steps=2), _scalars(1.0), DEVICE, fused_net=1,
                     graphs=0, dtype="fp32", compile=1)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the real thing (GPU)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("arch,size,compile_", [("tiny", 32, "0"), ("cifar_resnet20", 32, "0"), ("tiny", 32, "1")])
@pytest.mark.parametrize("compact_every", [2, 100])
def test_fp32_graphs_match_reference(fp32_without_tf32, arch, size, compile_, compact_every):
    model = _model(arch)
    x0, labels, idx = _batch(37, size, seed=7)
    tau = _splitting_tau(model, x0, labels)
    config = RefineConfig(steps=8, alpha=0.3, eps=1.0)
    eng, out, ref = _run_both(model, config, _scalars(tau), x0, labels, idx, dtype="fp32", tf32="0",
                              compile=compile_, graphs="1", compact_every=compact_every)
    assert 0 < int((ref.steps == 0).sum()) < 37, "τ should split the batch"
    kinks = 0.01 if arch != "tiny" else 0.0
    _compare_exact(out, ref, x0, atol=1e-4, kinks=kinks)
    # Replaying the captured graphs answers again, within the same tolerance: not bit for bit, since some
    # backward kernels (max-pool, a few cuDNN algorithms) accumulate with atomics in a varying order.
    _compare_exact(eng.refine_batch(x0, labels, idx), ref, x0, atol=1e-4, kinks=kinks)
    if compact_every == 2:
        assert len(eng.timings()["capture_s"]) > 1, "stopped images should have been compacted"


@needs_gpu
@pytest.mark.gpu
def test_fp32_graphs_odd_batches_and_objectives(fp32_without_tf32):
    model = _model()
    for B, objective, realness, eps in (
        (1, "eq12", "logit", 1.0),
        (3, "ce", "logsumexp", None),
        (17, "ce-bce", "logit", 0.5),
    ):
        x0, labels, idx = _batch(B, 32, seed=B)
        config = RefineConfig(steps=5, alpha=0.2, eps=eps, early_stop="none")
        _, out, ref = _run_both(model, config, _scalars(None, objective, realness, ell0=1.5), x0, labels, idx,
                                dtype="fp32", tf32="0", compile="0", graphs="1")
        _compare_exact(out, ref, x0, atol=1e-4)


class _Bf16Autocast(torch.nn.Module):
    """Plain PyTorch's bf16: the reference network under autocast, logits back to fp32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


BF16_CASES = (
    [
        ("cifar_resnet20", 32, 64, {"compile": "0", "graphs": "1"}),
        ("cifar_resnet20", 32, 64, {"compile": "1", "graphs": "1"}),
    ]
    if CUDA
    else [("tiny", 16, 8, {"compile": "0", "graphs": "0"})]
)


@pytest.mark.parametrize("arch,size,B,opts", BF16_CASES, ids=lambda v: str(v))
def test_bf16_error_is_within_plain_pytorch_bf16_error(fp32_without_tf32, arch, size, B, opts):
    """‖x_engine − x_fp32‖ ≤ 3·‖x_torch_bf16 − x_fp32‖ (+ a floor): two bf16 computations of the same
    steps round differently, so their errors are of one size but not equal; 3× leaves room for that.
    The engine's defaults are on (bf16 weights, first convolution padded to 8 channels, BN folded);
    seen on an H200 with ResNet-20: engine 0.41 against plain bf16 0.39."""
    eng, out, ref = _bf16_within_plain_bf16(_model(arch), *_batch(B, size, seed=9), **opts)
    assert eng.timings().get("padded_convs"), "the 3-channel first convolution should have been padded"
    torch.testing.assert_close(out.realness_final, ref.realness_final, rtol=0.05, atol=0.05)


def _bf16_within_plain_bf16(model, x0, labels, idx, **opts):
    """8 steps of the engine in bf16 (options `opts`), the fp32 reference and plain PyTorch bf16 on the same
    batch: asserts ‖x_engine − x_fp32‖ ≤ 3·‖x_torch_bf16 − x_fp32‖ + 1e-3·‖x_fp32 − x0‖ and equal step counts;
    returns (engine, its result, the reference's)."""
    config = RefineConfig(steps=8, alpha=0.3, eps=1.0, early_stop="none")
    scalars = _scalars(None, ell0=1.5)
    ref = TorchEngine(model, config, scalars, DEVICE).refine_batch(x0, labels, idx)
    plain_bf16 = TorchEngine(_Bf16Autocast(model), config, scalars, DEVICE).refine_batch(x0, labels, idx)
    eng = TritonEngine(model, config, scalars, DEVICE, dtype="bf16", **opts)
    out = eng.refine_batch(x0, labels, idx)
    err_engine = float((out.images - ref.images).norm())
    err_plain = float((plain_bf16.images - ref.images).norm())
    moved = float((ref.images - x0).norm())
    print(f"bf16 error: engine {err_engine:.4g}, plain PyTorch bf16 {err_plain:.4g}, step length total {moved:.4g}")
    assert err_engine <= 3.0 * err_plain + 1e-3 * moved
    assert torch.equal(out.steps, ref.steps)
    return eng, out, ref


@needs_gpu
@pytest.mark.gpu
def test_fused_net_fp32_graphs_match_reference(fp32_without_tf32):
    """fused_net=1 in CUDA graphs (fp32, TF32 off; never compiled), with compaction: as the reference engine."""
    model = small_bottleneck_resnet(seed=3).to(DEVICE)
    x0, labels, idx = _batch(37, 33, seed=7)
    tau = _splitting_tau(model, x0, labels)
    config = RefineConfig(steps=8, alpha=0.3, eps=1.0)
    eng, out, ref = _run_both(model, config, _scalars(tau), x0, labels, idx, dtype="fp32", tf32="0", graphs="1",
                              compact_every=2, fused_net="1")
    assert eng.net is None and 0 < int((ref.steps == 0).sum()) < 37, "the fused network, and τ splitting the batch"
    assert len(eng.timings()["capture_s"]) > 1, "stopped images should have been compacted"
    _compare_exact(out, ref, x0, atol=1e-4, kinks=0.01)
    _compare_exact(eng.refine_batch(x0, labels, idx), ref, x0, atol=1e-4, kinks=0.01)  # replay answers again


@needs_gpu
@pytest.mark.gpu
def test_fused_net_bf16_error_is_within_plain_pytorch_bf16_error(fp32_without_tf32):
    """As test_bf16_error_is_within_plain_pytorch_bf16_error, for fused_net=1 (bf16 weights, stem padded to 8)."""
    _bf16_within_plain_bf16(small_bottleneck_resnet(seed=4).to(DEVICE), *_batch(64, 33, seed=9), graphs="1",
                            fused_net="1")


@needs_gpu
@pytest.mark.gpu
def test_fused_net_cudnn_bf16_error_is_within_plain_pytorch_bf16_error(fp32_without_tf32):
    """fused_net=1 fused_ops=cudnn (every convolution one cuDNN graph with its epilogue), in CUDA graphs: as the
    Triton blocks, within plain PyTorch bf16's error, with equal step counts; and it answers again on replay."""
    pytest.importorskip("cudnn", reason="needs nvidia-cudnn-frontend (pip install 'ccfast[cudnn]')")
    model = small_bottleneck_resnet(seed=4).to(DEVICE)
    batch = _batch(64, 33, seed=9)
    eng, out, _ = _bf16_within_plain_bf16(model, *batch, graphs="1", fused_net="1", fused_ops="cudnn")
    assert eng.net is None and eng.timings()["options"]["fused_ops"] == "cudnn"
    again = eng.refine_batch(*batch)
    assert torch.equal(again.images, out.images) and torch.equal(again.steps, out.steps)
