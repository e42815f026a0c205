"""Train one generator (iCT, optionally with ACT's adversarial term) within a wall-clock budget, resumably.

Budget rule. The comparison is at equal training cost, so a run is given minutes, not iterations: after a few
warm-up iterations the loop times itself and fixes the total K it can afford (`--gen-iters` overrides this).
K fixes iCT's curriculum and the EMA half-life, and is stored, so a resumed run continues the same schedule.
ACT costs more per iteration, so at the same minutes it gets fewer iterations; both counts are recorded.

Resuming. The training state (weights, EMA, optimisers, RNG states, elapsed seconds) is saved atomically
every `checkpoint_every_s` seconds; a run started again with the same configuration continues from it.
GPU-minutes are the accumulated wall-clock seconds of the loop on one device, over all resumptions.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ccfast.config_json import JsonConfig
from ccfast.errors import CCFastError
from ccfast.io_utils import atomic_path

from .act import ACTConfig, Discriminator, act_generator_objective, discriminator_loss, generator_adv_loss, r1_penalty
from .consistency import (
    ConsistencyModel,
    ICTConfig,
    NoiseSchedule,
    ema_decay,
    ict_loss,
    ict_num_scales,
    images_to_model_space,
)
from .stages import StagePaused
from .unet import UNetConfig, count_parameters

STATE_FILE = "train_state.pt"
GENERATOR_FILE = "generator.pt"

# Throughput is measured after these warm-up iterations (cuDNN autotuning, allocator growth), over the next ones.
CALIBRATION_WARMUP = 10
CALIBRATION_ITERS = 20
# Share of the remaining budget given to iterations; the rest covers checkpoints and the final save.
BUDGET_SAFETY = 0.95
# A run still going this far past its budget (a slower card after a resume) stops and says so.
OVERRUN_FACTOR = 1.15


@dataclass
class GeneratorRun(JsonConfig):
    """Everything that determines a generator's training (its dict is the stage's recorded config)."""

    name: str
    unet: UNetConfig = field(default_factory=UNetConfig)
    ict: ICTConfig = field(default_factory=ICTConfig)
    act: ACTConfig | None = None
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    budget_minutes: float = 6.0
    iters: int | None = None  # None: as many as the budget affords (calibrated)
    seed: int = 0


def load_generator(path: str | Path, device="cpu") -> tuple[ConsistencyModel, dict]:
    """The sampling model (EMA weights) written at the end of training, and its metadata."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "ccfast-bench-generator":
        raise CCFastError(f"{path}: not a generator file written by benchmarks.quality")
    model = ConsistencyModel(UNetConfig.from_dict(payload["unet"]), NoiseSchedule.from_dict(payload["schedule"]))
    model.net.load_state_dict(payload["ema"])
    return model.to(device).eval().requires_grad_(False), payload["meta"]


class _Budget:
    """Wall-clock seconds of this run, carried over resumptions."""

    def __init__(self, already: float):
        self.already = already
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self.already + time.perf_counter() - self.start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_generator(run: GeneratorRun, images: np.ndarray, labels: np.ndarray, out_dir: str | Path,
                    device: str | torch.device = "cpu", progress: bool = True, deadline: float | None = None,
                    checkpoint_every_s: float = 120.0) -> dict:
    """Train, write OUT_DIR/generator.pt (EMA weights) and return the summary recorded with the stage.

    `deadline` (a `time.monotonic()` value): past it, the state is saved and `StagePaused` raised; calling again
    with the same run continues exactly where it stopped (same batches, noise, dropout masks). The state is also
    saved every `checkpoint_every_s` seconds; how often is not part of the run (it does not change the result)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(run.seed)

    model = ConsistencyModel(run.unet, run.schedule, mixed_precision=run.ict.mixed_precision).to(device).train()
    ema = ConsistencyModel(run.unet, run.schedule).to(device).eval().requires_grad_(False)
    ema.net.load_state_dict(model.net.state_dict())
    opt = torch.optim.Adam(model.net.parameters(), lr=run.ict.lr, betas=(0.9, 0.999))
    disc = d_opt = None
    if run.act is not None:
        disc = Discriminator(run.act, run.unet.num_classes).to(device).train()
        d_opt = torch.optim.Adam(disc.parameters(), lr=run.act.d_lr, betas=(run.act.d_beta1, run.act.d_beta2))
    gen = torch.Generator(device).manual_seed(run.seed + 1)

    state_path = out_dir / STATE_FILE
    config = run.to_dict()
    k, total_iters, already, ct_scale = 0, run.iters, 0.0, None
    calibration = None
    history: list[dict] = []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config") == config:
            model.net.load_state_dict(state["model"])
            ema.net.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            if disc is not None:
                disc.load_state_dict(state["disc"])
                d_opt.load_state_dict(state["d_opt"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["cpu_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            k, total_iters, already = state["k"], state["total_iters"], state["elapsed_s"]
            ct_scale, calibration, history = state["ct_scale"], state["calibration"], state["history"]
            print(
                f"[{run.name}] resuming at iteration {k} of {total_iters} ({already / 60:.1f} min spent)",
                file=sys.stderr,
            )
        else:
            print(f"[{run.name}] {state_path} is from another configuration; starting afresh", file=sys.stderr)

    def save_state():
        payload = {
            "config": config, "k": k, "total_iters": total_iters, "elapsed_s": budget.elapsed,
            "model": model.net.state_dict(), "ema": ema.net.state_dict(), "opt": opt.state_dict(),
            "disc": disc.state_dict() if disc is not None else None, "d_opt": d_opt.state_dict() if d_opt else None,
            "gen": gen.get_state(), "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "ct_scale": None if ct_scale is None else float(ct_scale), "calibration": calibration, "history": history,
        }
        with atomic_path(state_path, suffix=".pt") as tmp:
            torch.save(payload, tmp)

    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    data_labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    n, batch = data.shape[0], run.ict.batch_size
    budget = _Budget(already)
    budget_s = run.budget_minutes * 60.0
    last_save = time.perf_counter()
    truncated = False
    calib_t0 = None
    # Calibration runs on whichever iterations come first in this process (a resumed run without K yet too).
    calib_begin = k + CALIBRATION_WARMUP
    calib_end = calib_begin + CALIBRATION_ITERS
    bar = tqdm(total=total_iters, initial=k, desc=f"train {run.name}", unit="it", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def draw_batch():
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        x0 = images_to_model_space(data[idx])
        if run.ict.hflip:
            flip = torch.rand(batch, device=device, generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        return x0, data_labels[idx]

    while total_iters is None or k < total_iters:
        # Throughput calibration: fix K from the measured speed once, at the start of a fresh run.
        if total_iters is None and k == calib_begin:
            _sync(device)
            calib_t0 = time.perf_counter()
        if total_iters is None and k == calib_end:
            _sync(device)
            sec_per_it = (time.perf_counter() - calib_t0) / CALIBRATION_ITERS
            remaining = max(0.0, budget_s - budget.elapsed) * BUDGET_SAFETY
            total_iters = max(k + 1, k + int(remaining / sec_per_it))
            calibration = {"seconds_per_iter": sec_per_it, "measured_over": CALIBRATION_ITERS, "at_iter": k,
                           "total_iters": total_iters}
            bar.reset(total=total_iters)
            bar.update(k)
            print(f"[{run.name}] {1 / sec_per_it:.1f} it/s -> {total_iters} iterations in "
                  f"{run.budget_minutes:g} min", file=sys.stderr)

        num_scales = ict_num_scales(k, total_iters, run.ict.s0, run.ict.s1) if total_iters else run.ict.s0 + 1
        for group in opt.param_groups:
            group["lr"] = run.ict.lr * min(1.0, (k + 1) / max(1, run.ict.warmup_iters))

        x0, y0 = draw_batch()
        out = ict_loss(model, x0, y0, num_scales, run.ict, gen)
        ct = out.loss.mean()
        record = {"ct": float(ct.detach())} if k % 100 == 0 else None
        if disc is None:
            loss = ct
        else:
            # Running mean of L_CT kept on the device (no host sync per iteration).
            ct_scale = ct.detach().clone() if ct_scale is None else torch.as_tensor(ct_scale, device=device).lerp(
                ct.detach(), 1.0 - run.act.ct_scale_momentum)
            disc.requires_grad_(False)
            with torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=run.ict.mixed_precision and device.type == "cuda"
            ):
                g_adv = generator_adv_loss(disc(out.prediction, out.sigma, y0))
            loss = act_generator_objective(ct, ct_scale, g_adv, run.act.gan_weight)
            if record is not None:
                record["g_adv"] = float(g_adv.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        with torch.no_grad():
            beta = ema_decay(k, total_iters or run.iters or 1000, run.ict.ema_halflife_frac)
            torch._foreach_lerp_(list(ema.net.parameters()), list(model.net.parameters()), 1.0 - beta)
            for b_ema, b in zip(ema.net.buffers(), model.net.buffers(), strict=False):
                b_ema.copy_(b)

        if disc is not None:
            disc.requires_grad_(True)
            real, real_labels = draw_batch()
            r1_step = k % run.act.r1_interval == 0 and run.act.r1_gamma > 0
            real.requires_grad_(r1_step)
            with torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=run.ict.mixed_precision and device.type == "cuda"
            ):
                d_real = disc(real, out.sigma, real_labels)
                d_fake = disc(out.prediction.detach(), out.sigma, y0)
            d_loss = discriminator_loss(d_fake, d_real)
            total_d = d_loss + (r1_penalty(d_real, real, run.act.r1_gamma) if r1_step else 0.0)
            d_opt.zero_grad(set_to_none=True)
            (run.act.gan_weight * total_d).backward()
            d_opt.step()
            if record is not None:
                record["d"] = float(d_loss.detach())

        if record is not None:
            record.update(k=k, num_scales=num_scales)
            if not all(math.isfinite(v) for v in record.values()):
                raise CCFastError(f"[{run.name}] training diverged at iteration {k}: {record}")
            history.append(record)
            bar.set_postfix(ct=f"{record['ct']:.3g}", N=num_scales)
        k += 1
        bar.update(1)

        if time.perf_counter() - last_save > checkpoint_every_s:
            _sync(device)
            save_state()
            last_save = time.perf_counter()
        if deadline is not None and time.monotonic() > deadline and (total_iters is None or k < total_iters):
            _sync(device)
            save_state()
            bar.close()
            raise StagePaused(
                f"[{run.name}] paused at iteration {k} of {total_iters or '?'} (deadline); state in {state_path}"
            )
        if budget.elapsed > budget_s * OVERRUN_FACTOR and run.iters is None:
            truncated = True
            print(f"[{run.name}] stopping at iteration {k} of {total_iters}: over budget", file=sys.stderr)
            break
    bar.close()
    _sync(device)
    elapsed = budget.elapsed
    meta = {
        "name": run.name, "iterations": k, "planned_iterations": total_iters, "truncated": truncated,
        "gpu_minutes": elapsed / 60.0, "seconds_per_iter": elapsed / max(1, k), "images_seen": k * batch,
        "epochs": k * batch / n, "calibration": calibration, "generator_params": count_parameters(model.net),
        "discriminator_params": count_parameters(disc) if disc is not None else 0, "train_images": n,
        "history": history, "device": str(device),
    }
    payload = {"format": "ccfast-bench-generator", "unet": run.unet.to_dict(), "schedule": run.schedule.to_dict(),
               "ema": {k_: v.detach().cpu() for k_, v in ema.net.state_dict().items()}, "meta": meta}
    with atomic_path(out_dir / GENERATOR_FILE, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    if state_path.exists():
        state_path.unlink()
    return meta
