"""The L2 step / projection reference (SPEC §3.4, §4)."""

import pytest
import torch

from ccfast.pgd import normalize_l2, per_example_l2_norm, pgd_l2, pgd_step_ref, project_l2_ball


def test_normalize_unit_norm_and_zero_gradient():
    g = torch.randn(4, 3, 5, 5)
    g[2] = 0
    n = per_example_l2_norm(normalize_l2(g))
    torch.testing.assert_close(n[[0, 1, 3]], torch.ones(3))
    assert n[2] == 0 and torch.isfinite(normalize_l2(g)).all()


def test_projection_onto_ball():
    x0 = torch.rand(3, 3, 4, 4)
    x = x0 + torch.randn_like(x0) * torch.tensor([0.01, 1.0, 10.0]).view(-1, 1, 1, 1)
    p = project_l2_ball(x, x0, 1.0)
    n = per_example_l2_norm(p - x0)
    assert (n <= 1.0 + 1e-5).all()
    torch.testing.assert_close(p[0], x[0])  # inside: unchanged
    torch.testing.assert_close(n[2], torch.tensor(1.0))  # outside: on the sphere
    assert project_l2_ball(x, x0, None) is x


def test_step_moves_alpha_against_gradient_then_projects_and_clamps():
    torch.manual_seed(0)
    x0 = torch.rand(5, 3, 8, 8)
    x = x0.clone()
    g = torch.randn_like(x)
    active = torch.tensor([True, True, False, True, True])
    y = pgd_step_ref(x, g, x0, active, alpha=0.3, eps=10.0)
    assert torch.equal(y[2], x[2])
    expected = (x0 - 0.3 * g / per_example_l2_norm(g).view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(y[active], expected[active])
    z = pgd_step_ref(x, g, x0, active, alpha=5.0, eps=0.5)
    assert (per_example_l2_norm(z - x0) <= 0.5 + 1e-5).all()
    assert z.min() >= 0 and z.max() <= 1
    up = pgd_step_ref(x, g, x0, torch.ones(5, dtype=torch.bool), alpha=0.3, eps=None, ascend=True)
    torch.testing.assert_close(up, (x0 + 0.3 * g / per_example_l2_norm(g).view(-1, 1, 1, 1)).clamp(0, 1))


def test_pgd_loop_ascends_and_respects_early_stop():
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4)
    x0 = torch.rand(4, 3, 4, 4)
    loss = lambda x: x.flatten(1) @ w  # noqa: E731
    x, steps = pgd_l2(loss, x0, steps=5, alpha=0.1, eps=0.3, ascend=True)
    assert (loss(x) > loss(x0)).all() and (steps == 5).all()
    assert (per_example_l2_norm(x - x0) <= 0.3 + 1e-5).all()
    stop_first = lambda x, a: a & (torch.arange(4) != 0)  # noqa: E731
    x, steps = pgd_l2(loss, x0, steps=5, alpha=0.1, eps=0.3, ascend=True, active_fn=stop_first)
    assert steps.tolist() == [0, 5, 5, 5] and torch.equal(x[0], x0[0])


@pytest.mark.parametrize("batch", [1, 7])
def test_step_result_independent_of_batch(batch):
    torch.manual_seed(batch)
    x0 = torch.rand(batch, 3, 6, 6)
    g = torch.randn_like(x0)
    act = torch.ones(batch, dtype=torch.bool)
    y = pgd_step_ref(x0, g, x0, act, 0.2, 0.1)
    for i in range(batch):
        torch.testing.assert_close(
            y[i : i + 1], pgd_step_ref(x0[i : i + 1], g[i : i + 1], x0[i : i + 1], act[i : i + 1], 0.2, 0.1)
        )
