"""Consistency models and improved consistency training (iCT), the benchmark's generator.

References (equation numbers of the papers):
- Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023 (CM): the parameterisation
  f(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, σ) with f(x, σ_min) = x (its Eq. 3 and Appendix C), the
  Karras et al. (2022) noise levels, the one- and multistep samplers (Algorithm 1).
- Song & Dhariwal, "Improved Techniques for Training Consistency Models", ICLR 2024 (iCT): no EMA teacher
  (θ⁻ = stop-grad θ), pseudo-Huber distance d(x, y) = sqrt(‖x − y‖² + c²) − c with c = 0.00054·sqrt(dim),
  loss weight λ(σ_i) = 1 / (σ_{i+1} − σ_i), the exponential discretisation curriculum
  N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋, and lognormal sampling of the noise
  index, p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)).

Images live in [-1, 1] (σ_data = 0.5), NCHW, inside this module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ccfast.config_json import JsonConfig

from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class NoiseSchedule(JsonConfig):
    """Karras et al. (2022) noise levels as used by CM/iCT on CIFAR-10."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0


@dataclass(frozen=True)
class ICTConfig(JsonConfig):
    """iCT hyper-parameters (paper defaults, except the ones a minutes-long budget forces; see README)."""

    batch_size: int = 256
    lr: float = 2e-4
    warmup_iters: int = 200
    s0: int = 10
    s1: int = 1280
    p_mean: float = -1.1
    p_std: float = 2.0
    huber_c: float | None = None  # None: 0.00054·sqrt(3·H·W), the iCT rule
    # EMA of the weights used for sampling; its half-life is a fraction of the planned iterations because the
    # budget (minutes, not iCT's 400k iterations) fixes how many there will be.
    ema_halflife_frac: float = 0.05
    hflip: bool = True
    mixed_precision: bool = True  # bf16 autocast of the UNet on CUDA


def karras_sigmas(n: int, sched: NoiseSchedule, device=None) -> torch.Tensor:
    """σ_1 < … < σ_n: (σ_min^{1/ρ} + (i−1)/(n−1)·(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ (Karras et al. 2022, Eq. 5)."""
    if n < 2:
        raise ValueError(f"need at least 2 noise levels, got {n}")
    i = torch.arange(n, dtype=torch.float64, device=device) / (n - 1)
    lo, hi = sched.sigma_min ** (1 / sched.rho), sched.sigma_max ** (1 / sched.rho)
    return ((lo + i * (hi - lo)) ** sched.rho).float()


def ict_num_scales(k: int, total_iters: int, s0: int, s1: int) -> int:
    """N(k) of iCT's exponential curriculum: the number of noise levels at iteration k (0-based)."""
    stages = int(math.log2(s1 // s0)) + 1
    k_prime = max(1, total_iters // stages)
    return min(s0 * 2 ** (k // k_prime), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """p(i) for the pair (σ_i, σ_{i+1}), i = 0..n−2: lognormal mass between the two levels (iCT §3.5)."""
    log_s = torch.log(sigmas.double())
    cdf = torch.erf((log_s - p_mean) / (math.sqrt(2.0) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return (p / p.sum()).float()


@functools.lru_cache(maxsize=16)
def _levels(n: int, sched: NoiseSchedule, device: str, p_mean: float, p_std: float):
    """The noise levels and index probabilities of one curriculum stage (a handful per run, so cached)."""
    sigmas = karras_sigmas(n, sched, device)
    return sigmas, lognormal_index_probs(sigmas, p_mean, p_std)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-example sqrt(‖a − b‖² + c²) − c over all pixels (iCT §3.3)."""
    sq = (a - b).float().flatten(1).pow(2).sum(1)
    return torch.sqrt(sq + c * c) - c


class ConsistencyModel(nn.Module):
    """f(x, σ, class) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), class), exactly x at σ = σ_min."""

    def __init__(self, unet_cfg: UNetConfig, sched: NoiseSchedule = NoiseSchedule(), mixed_precision: bool = False):
        super().__init__()
        self.net = UNet(unet_cfg)
        self.sched = sched
        self.mixed_precision = mixed_precision

    def scalings(self, sigma: torch.Tensor):
        s = self.sched
        c_skip = s.sigma_data ** 2 / ((sigma - s.sigma_min) ** 2 + s.sigma_data ** 2)
        c_out = (sigma - s.sigma_min) * s.sigma_data / torch.sqrt(sigma ** 2 + s.sigma_data ** 2)
        c_in = 1.0 / torch.sqrt(sigma ** 2 + s.sigma_data ** 2)
        return c_skip, c_out, c_in

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float().reshape(-1)
        c_skip, c_out, c_in = (c[:, None, None, None] for c in self.scalings(sigma))
        # c_noise = 1000·¼·ln σ, the time input of the consistency-models code (EDM's ¼·ln σ, scaled).
        c_noise = 250.0 * torch.log(sigma + 1e-44)
        use_amp = self.mixed_precision and x.device.type == "cuda"
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.net(c_in * x, c_noise, labels)
        return c_skip * x + c_out * out.float()


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class ICTBatch:
    """One consistency-training evaluation: per-example weighted losses and what ACT needs from it."""

    loss: torch.Tensor        # λ(σ_i)·d(f(x_{i+1}, σ_{i+1}), sg f(x_i, σ_i)), shape (B,)
    prediction: torch.Tensor  # f_θ(x_{i+1}, σ_{i+1}) with its graph, [-1, 1] images
    sigma: torch.Tensor       # σ_{i+1}, shape (B,)
    num_scales: int


def ict_loss(model: ConsistencyModel, x0: torch.Tensor, labels: torch.Tensor, num_scales: int, cfg: ICTConfig,
             generator: torch.Generator) -> ICTBatch:
    """The iCT objective on a batch of clean images x0 in [-1, 1]."""
    device = x0.device
    sigmas, probs = _levels(num_scales, model.sched, str(device), cfg.p_mean, cfg.p_std)
    idx = torch.multinomial(probs, x0.shape[0], replacement=True, generator=generator)
    s_lo, s_hi = sigmas[idx], sigmas[idx + 1]
    z = torch.randn(x0.shape, device=device, generator=generator)
    x_lo = x0 + s_lo[:, None, None, None] * z
    x_hi = x0 + s_hi[:, None, None, None] * z
    # Teacher and student see the same dropout masks, so the target differs from the prediction only by the
    # noise level — the consistency condition — and not by dropout noise.
    state = _rng_state(device)
    with torch.no_grad():
        target = model(x_lo, s_lo, labels)
    _set_rng_state(device, state)
    pred = model(x_hi, s_hi, labels)
    c = cfg.huber_c if cfg.huber_c is not None else 0.00054 * math.sqrt(x0[0].numel())
    loss = pseudo_huber(pred, target, c) / (s_hi - s_lo)
    return ICTBatch(loss=loss, prediction=pred, sigma=s_hi, num_scales=num_scales)


def ema_decay(k: int, total_iters: int, halflife_frac: float) -> float:
    """Per-step EMA factor with a half-life of `halflife_frac`·K iterations, ramped up early on so the
    average does not remember the random initialisation (the (1+k)/(10+k) warm-up of DDPM/ADM codebases)."""
    halflife = max(1.0, halflife_frac * total_iters)
    return min(0.5 ** (1.0 / halflife), (1.0 + k) / (10.0 + k))


def images_to_model_space(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the consistency-models data convention)."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def model_space_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> uint8 NHWC by the consistency-models sampler's rule ((x+1)·127.5, clamp, truncate)."""
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
