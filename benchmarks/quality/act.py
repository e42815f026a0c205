"""The adversarial term of ACT (Kong et al., "ACT-Diffusion: Efficient Adversarial Consistency Training for
One-step Diffusion Models", CVPR 2024, arXiv 2311.14097) on top of iCT (`consistency.py`).

What is taken from the paper and its released CIFAR-10 code (github.com/kong13661/ACT, train_cifar10.py):
- a discriminator D(x, σ) on the consistency model's output f_θ(x_{σ_{i+1}}, σ_{i+1}), conditioned on the noise
  level, trained against real images with the non-saturating loss
  L_D = E softplus(D(fake)) + E softplus(−D(real)) and an R1 penalty (γ/2)·‖∇_x D(real)‖² every 16th
  iteration (γ = 10), optimiser β = (0, 0.99) (RAdam in the released code, Adam here);
- the generator objective lerp(L_CT, L_G, w) = (1 − w)·L_CT + w·L_G with L_G = E softplus(−D(fake)) and
  w = 0.3 (the released `gan_ratio`); the discriminator loss is scaled by w as well.

What this project changes, and why (said again in README.md):
- L_CT here is iCT's λ(σ)-weighted pseudo-Huber loss, whose scale (tens to thousands) is unlike the released
  code's unweighted LPIPS distance (below one). So that w keeps the meaning it had there, L_CT is divided by a
  running mean of itself (a detached scalar: it rescales, it does not change the direction of the CT gradient).
- D is class-conditional by projection (Miyato & Koyama 2018), since our generator is class-conditional; it is
  convolution-only (no attention), because R1 needs a double backward that fused attention kernels lack.
- D's fake batch is the generator step's own output (detached) rather than a second generator pass, and its
  real batch gets the same noise levels as the fakes, so σ is no cue for telling them apart.
- No adaptive augmentation: the released CIFAR-10 setting (r1_threshold = 10⁴) keeps its probability at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfast.config_json import JsonConfig

from .unet import ResBlock, group_norm, noise_embedding


@dataclass(frozen=True)
class ACTConfig(JsonConfig):
    """ACT's adversarial term: its weight in the generator loss, the discriminator's optimiser, R1 and size."""

    gan_weight: float = 0.3
    d_lr: float = 1e-4
    d_beta1: float = 0.0
    d_beta2: float = 0.99
    r1_gamma: float = 10.0
    r1_interval: int = 16
    d_channels: int = 96
    d_channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    ct_scale_momentum: float = 0.99  # running mean of L_CT used to normalise it (see module docstring)


class Discriminator(nn.Module):
    """D(x, σ, class) -> one logit per image: residual encoder, noise-level embedding, projection head."""

    def __init__(self, cfg: ACTConfig, num_classes: int = 10):
        super().__init__()
        ch, emb_dim = cfg.d_channels, 4 * cfg.d_channels
        self.channels = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.blocks = nn.ModuleList()
        cur = ch
        for level, mult in enumerate(cfg.d_channel_mult):
            self.blocks.append(ResBlock(cur, ch * mult, emb_dim, dropout=0.0))
            cur = ch * mult
            if level != len(cfg.d_channel_mult) - 1:
                self.blocks.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        self.norm_out = group_norm(cur)
        self.linear = nn.Linear(cur, 1)
        self.class_proj = nn.Embedding(num_classes, cur)
        nn.init.normal_(self.class_proj.weight, std=cur ** -0.5)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(noise_embedding(250.0 * torch.log(sigma.float().reshape(-1) + 1e-44), self.channels))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        h = F.silu(self.norm_out(h)).sum(dim=(2, 3))
        # Projection discriminator: unconditional logit + <embed(class), features>.
        return self.linear(h).squeeze(1) + (self.class_proj(labels) * h).sum(1)


def generator_adv_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """L_G = E softplus(−D(f_θ(x_{i+1}))): the non-saturating generator loss."""
    return F.softplus(-d_fake.float()).mean()


def discriminator_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """L_D = E softplus(D(fake)) + E softplus(−D(real))."""
    return F.softplus(d_fake.float()).mean() + F.softplus(-d_real.float()).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """(γ/2)·E ‖∇_x D(x)‖² on real images (Mescheder et al. 2018); `real` must require grad."""
    (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()


def act_generator_objective(ct_loss: torch.Tensor, ct_scale: torch.Tensor | float, g_loss: torch.Tensor,
                            gan_weight: float) -> torch.Tensor:
    """(1 − w)·L_CT/scale + w·L_G: the released code's lerp(L_CT, L_G, w) with L_CT brought to unit scale."""
    return (1.0 - gan_weight) * ct_loss / ct_scale + gan_weight * g_loss
