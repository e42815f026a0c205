"""The reference engine (`--engine torch`) against SPEC §4's invariants."""

import numpy as np
import pytest
import torch

from ccfast import RefineConfig, Refiner
from ccfast.checkpoint import load_checkpoint
from ccfast.data import uint8_to_float
from ccfast.errors import CCFastError
from ccfast.objectives import HeadParams, objective_ref
from ccfast.pgd import per_example_l2_norm
from factories import make_samples, make_tiny_checkpoint, median_realness


def refiner(ckpt, **cfg):
    batch_size = cfg.pop("batch_size", 256)
    return Refiner(ckpt, engine="torch", config=RefineConfig(**cfg), device="cpu", batch_size=batch_size)


@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_ball_and_range_invariants_after_every_step(tiny_ckpt, eps):
    images, labels = make_samples(8)
    x0 = uint8_to_float(images)
    prev = None
    for T in range(0, 6):
        out = refiner(tiny_ckpt, steps=T, alpha=0.1, eps=eps, early_stop="none").refine(images, labels)
        x = out.images
        assert (per_example_l2_norm(x - x0) <= eps + 1e-5).all()
        assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()
        assert (out.steps == T).all()
        if prev is not None:  # each run of T steps extends the run of T-1 steps
            assert not torch.equal(x, prev)
        prev = x


def test_descends_objective(tiny_ckpt):
    images, labels = make_samples(8)
    out = refiner(tiny_ckpt, objective="ce", steps=5, alpha=0.05, eps=1.0, early_stop="none").refine(images, labels)
    assert (out.objective_final < out.objective_init).float().mean() >= 0.75
    model, _ = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        J, r = objective_ref(model(out.images), out.labels, HeadParams("ce", ell0=2.0))
    torch.testing.assert_close(J, out.objective_final, rtol=1e-5, atol=1e-5)


def test_already_real_and_stopped_examples_unchanged_bit_for_bit(tmp_path):
    images, labels = make_samples(16)
    ckpt = make_tiny_checkpoint(tmp_path / "c.pt")
    tau = median_realness(ckpt, images, labels)
    # α = 0.2 with τ at the median: half the examples start real, and of the rest some cross τ part-way
    # through the 4 steps (after 2 or 3) while others are still below it at the end.
    out = refiner(ckpt, steps=4, alpha=0.2, tau=tau).refine(images, labels)
    already = out.realness_init >= tau
    assert 0 < already.sum() < len(images)
    assert (out.steps[already] == 0).all()
    assert np.array_equal(out.uint8()[already.numpy()], images[already.numpy()])
    torch.testing.assert_close(out.images[already], uint8_to_float(images)[already], rtol=0, atol=0)
    # A stopped example never moves again: refining further (more steps) leaves it where it stopped.
    out_more = refiner(ckpt, steps=12, alpha=0.2, tau=tau).refine(images, labels)
    stopped_early = (out.steps < 4) & ~already
    assert stopped_early.any(), "the inputs must include examples that stop part-way"
    assert torch.equal(out.images[stopped_early], out_more.images[stopped_early])
    assert torch.equal(out.steps[stopped_early], out_more.steps[stopped_early])
    # ... while one still active after 4 steps does move on (so the comparison above can fail).
    moving_on = out_more.steps > 4
    assert moving_on.any() and not torch.equal(out.images[moving_on], out_more.images[moving_on])
    assert torch.equal(out.stopped, out.realness_final >= tau)


def test_results_independent_of_batch_composition_and_chunk_size(tiny_ckpt):
    images, labels = make_samples(11)
    full = refiner(tiny_ckpt, steps=4, alpha=0.05, tau=1e9).refine(images, labels)
    for bs in (1, 3, 5):
        part = refiner(tiny_ckpt, steps=4, alpha=0.05, tau=1e9, batch_size=bs).refine(images, labels)
        torch.testing.assert_close(part.images, full.images, rtol=0, atol=1e-6)
        assert torch.equal(part.steps, full.steps)
    perm = np.random.default_rng(0).permutation(11)
    shuffled = refiner(tiny_ckpt, steps=4, alpha=0.05, tau=1e9).refine(images[perm], labels[perm])
    torch.testing.assert_close(shuffled.images, full.images[perm], rtol=0, atol=1e-6)


def test_sgld_reproducible_by_seed_and_independent_of_chunking(tiny_ckpt):
    images, labels = make_samples(6)
    cfg = dict(method="sgld", objective="logit", alpha=0.2, steps=3, eps=None, early_stop="none", sigma=0.05)
    a = refiner(tiny_ckpt, seed=1, **cfg).refine(images, labels)
    b = refiner(tiny_ckpt, seed=1, batch_size=4, **cfg).refine(images, labels)
    c = refiner(tiny_ckpt, seed=2, **cfg).refine(images, labels)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-6)
    assert not torch.allclose(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    # Refining rows 2..5 alone, with their global indices, reproduces the same rows.
    d = refiner(tiny_ckpt, seed=1, **cfg).refine(images[2:], labels[2:], indices=np.arange(2, 6))
    torch.testing.assert_close(d.images, a.images[2:], rtol=0, atol=1e-6)


def test_sgld_ascends_class_logit(tiny_ckpt):
    images, labels = make_samples(6)
    out = refiner(tiny_ckpt, method="sgld", alpha=0.2, steps=5, eps=None, early_stop="none", sigma=1e-4).refine(
        images, labels
    )
    assert (out.objective_final < out.objective_init).all()  # J = −f_c falls


def test_sgld_preset_takes_the_official_step_per_example(tiny_ckpt):
    """SPEC §4: boost.py steps by α=0.2 along ∇ of the *mean* f_c over a batch of 100, i.e. 0.002·∇f_c per image;
    the preset's per-example α=0.002 must move each image exactly that far (σ=0 to compare without noise)."""
    cfg = RefineConfig.from_preset("sgld", steps=1, sigma=0.0)
    assert cfg.alpha == 0.002
    images, labels = make_samples(100)
    out = Refiner(tiny_ckpt, engine="torch", config=cfg, device="cpu").refine(images, labels)
    model, _ = load_checkpoint(tiny_ckpt)
    x = uint8_to_float(images).requires_grad_(True)
    model(x).gather(1, torch.as_tensor(labels)[:, None]).mean().backward()  # the official objective
    official = (x + 0.2 * x.grad).detach().clamp(0, 1)
    torch.testing.assert_close(out.images, official, rtol=0, atol=2e-7)  # fp32 rounding of x ± 1e-4
    # It did move, by far more than the tolerance (and α=0.2 per example would move it 100× more).
    assert (out.images - uint8_to_float(images)).abs().max() > 5e-5


def test_bigroc_presets_and_pseudo_labels(tiny_ckpt):
    images, labels = make_samples(6)
    gt = Refiner(tiny_ckpt, config=RefineConfig.from_preset("bigroc"), device="cpu").refine(images, labels)
    assert (gt.steps == 7).all() and torch.equal(gt.labels, torch.as_tensor(labels))
    pl = Refiner(tiny_ckpt, config=RefineConfig.from_preset("bigroc-pl"), device="cpu").refine(images, None)
    model, _ = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        assert torch.equal(pl.labels, model(uint8_to_float(images)).argmax(1))


def test_float_tensor_input_and_bad_inputs(tiny_ckpt):
    images, labels = make_samples(4)
    r = refiner(tiny_ckpt, steps=1, early_stop="none")
    x = uint8_to_float(images)
    out = r.refine(x, torch.as_tensor(labels))
    assert out.images.dtype == torch.float32 and out.images.shape == x.shape
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CCFastError, match="NaN"):
        r.refine(bad, labels)
    with pytest.raises(CCFastError, match=r"\[0, 1\]"):
        r.refine(x * 2, labels)
    with pytest.raises(CCFastError, match="out of range"):
        r.refine(images, labels + 10)
    with pytest.raises(CCFastError, match="labels are required"):
        r.refine(images, None)
    with pytest.raises(CCFastError, match="uint8"):
        r.refine(images.astype(np.float32), labels)
    with pytest.raises(CCFastError, match="made for"):
        r.refine(np.zeros((2, 8, 8, 3), np.uint8), labels[:2])


def test_missing_ell0_is_a_clear_error(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c.pt", ell0=None)
    with pytest.raises(CCFastError, match="stores no ℓ0"):
        refiner(ckpt)
    refiner(ckpt, objective="ce", early_stop="none")  # needs no ℓ0
    refiner(ckpt, ell0=1.0)  # explicit ℓ0 doubles as τ
