"""`Trainer`: the adversarial training of the joint classifier–discriminator (SPEC §3), on one process or
under `torchrun` (DDP; rank 0 writes every file).

One iteration t:
  1. draw the global batch of real (x_r, c_r) and of generated (x_g, c_g) images, independently;
     each rank takes its slice (random choices are drawn for the global batch, then sliced, so N ranks
     compute what one process with the same global batch computes);
  2. model in eval mode: attack the real images (ascend ℓ_real), take s(x̂_r), then attack the generated images
     (ascend ℓ_fake, `cfg.fake_attack_steps(t)` steps, paired early stop against s(x̂_r) of the same index);
  3. model in train mode: one forward of [x̂_r; x̂_g] (BatchNorm statistics of the mixed batch), the four-term
     loss, backward, gradient clipping, optimiser and LR-scheduler step.
Without generated images (`mode="robust-classifier"`, BIGROC's robust classifier) steps 1–3 keep their real-image
half only: no generated batch, no generated-image attack, no generated-image loss terms, and their metrics are null.
Every `ckpt_every` iterations and at the end: ℓ0 on held-out real images, the inference checkpoint and the
training state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointInfo, estimate_ell0, save_checkpoint
from ..data import validate_labels
from ..devices import DistContext, resolve_device
from ..errors import CCFastError
from ..objectives import loss_fake_ref, realness_score_ref
from ..validation import json_safe
from .attacks import attack_pair, attack_real, random_start
from .config import TrainConfig
from .datasets import (
    BatchStream,
    LabelledImages,
    augment,
    crop_pad,
    draw_augmentation,
    load_labelled,
    rank_slice,
    split_holdout,
    to_device_float,
)
from .losses import TERM_NAMES, LossWeights, joint_loss
from .model_init import build_initial_model
from .state import (
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    check_data_matches,
    check_resume_matches,
    clear_run_dir,
    load_training_state,
    read_run_record,
    save_training_state,
    truncate_metrics,
    write_run_record,
)

# Averages logged per window. All are per-example means over the global batch; loss terms and the per-iteration
# scalars (lr, grad_norm, budget) are weighted by batch size, which leaves them unchanged.
METRIC_KEYS = (
    "loss", "ce_real", "ce_fake", "bce_real", "bce_fake",
    "acc_real_adv", "acc_fake_adv",          # accuracy on the attacked images (training forward)
    "D_real_adv", "D_fake_adv",              # mean realness D = σ(s) of attacked real / generated images
    "score_real_adv", "score_fake_adv",      # mean realness score s
    "fake_steps_taken", "fake_early_stopped",  # generated-image attack: mean steps, fraction stopped before the budget
    "fake_steps", "lr", "grad_norm",
)
# Metrics of generated images: null in the log of a run without them (classifier-only).
GENERATED_METRIC_KEYS = ("ce_fake", "bce_fake", "acc_fake_adv", "D_fake_adv", "score_fake_adv", "fake_steps_taken",
                         "fake_early_stopped", "fake_steps")
GENERATED_EVAL_KEYS = ("gen_acc", "gen_D", "gen_ell_fake", "clean_realness_gap")
STREAM_REAL, STREAM_FAKE, STREAM_ITER = 1, 2, 3
EVAL_FAKE_MAX = 1000  # generated images scored (clean) at each checkpoint


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The CPU generator for iteration t's random choices: a pure function of (seed, t), so resume needs no state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + STREAM_ITER) * 1_000_033 + iteration)


def data_fingerprint(images: LabelledImages | None) -> str | None:
    if images is None:
        return None
    h = hashlib.sha256(images.all_labels().tobytes())
    h.update(np.ascontiguousarray(images.take(np.arange(0, len(images), max(1, len(images) // 64)))[0]).tobytes())
    return h.hexdigest()[:16]


class Trainer:
    """Set-up checks every input before the first update; `run()` then trains to `cfg.iters`."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None, resume: bool = False, overwrite: bool = False,
                 log=None):
        self.cfg = cfg.validate()
        self.ctx = ctx or DistContext()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.run_dir = Path(cfg.out)
        self.device = resolve_device(cfg.device, self.ctx)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # --device cuda:N: autocast, RNG state and synchronize use it
        if cfg.batch_size % self.ctx.world_size:
            raise CCFastError(
                f"--batch-size {cfg.batch_size} must be a multiple of the number of processes ({self.ctx.world_size})")

        self._load_data()
        self._check_run_dir(resume, overwrite)
        self._build_model()
        self.iteration = 0
        if resume and not overwrite and (self.run_dir / STATE_FILE).exists():
            self._load_state(load_training_state(self.run_dir / STATE_FILE))
        self.ctx.barrier()  # every rank has checked the run directory before rank 0 writes to it
        if self.ctx.is_main:
            if not resume or self.iteration == 0:
                clear_run_dir(self.run_dir)
            else:
                truncate_metrics(self.run_dir / METRICS_FILE, self.iteration)
            write_run_record(self.run_dir, cfg, self.data_summary, {
                "world_size": self.ctx.world_size, "device": str(self.device), "amp": self.amp_name,
                "init": self.init_description})
        self.ctx.barrier()

    # ------------------------------------------------------------------ set-up

    def _load_data(self) -> None:
        cfg = self.cfg
        real = load_labelled(cfg.real, "real")
        fake = None if cfg.classifier_only else load_labelled(cfg.fake, "generated")
        if cfg.ell0_data:
            self.real, self.heldout = real, load_labelled(cfg.ell0_data, "held-out real")
        else:
            self.real, self.heldout = split_holdout(real, cfg.ell0_holdout, cfg.seed)
        self.fake = fake
        inferred = cfg.num_classes is None
        self.num_classes = cfg.num_classes or int(real.labels.max()) + 1  # before the hold-out: every real label
        hint = " (the class count was inferred from the real labels; pass --num-classes)" if inferred else ""
        for images, role in ((self.real, "real"), (self.fake, "generated"), (self.heldout, "held-out real")):
            if images is None:
                continue
            try:
                validate_labels(
                    images.all_labels(), len(images), self.num_classes, f"{role} images {', '.join(images.sources)}"
                )
            except CCFastError as exc:
                raise CCFastError(f"{exc}{hint}") from None
            if images.image_size != self.real.image_size:
                raise CCFastError(
                    f"{role} images ({', '.join(images.sources)}) are {images.image_size[0]}×{images.image_size[1]} "
                    "but the "
                    f"real images are {self.real.image_size[0]}×{self.real.image_size[1]}; real and generated images "
                    "must "
                    "have one size"
                )
        self.image_size = self.real.image_size
        self.data_summary = {
            "real_train": len(self.real),
            "heldout": 0 if self.heldout is None else len(self.heldout),
            "fake": 0 if self.fake is None else len(self.fake),
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "real_fingerprint": data_fingerprint(self.real),
            "fake_fingerprint": data_fingerprint(self.fake),
            "heldout_fingerprint": data_fingerprint(self.heldout),
        }
        self.real_stream = BatchStream(len(self.real), cfg.batch_size, cfg.seed, STREAM_REAL)
        self.fake_stream = (
            None if self.fake is None else BatchStream(len(self.fake), cfg.batch_size, cfg.seed, STREAM_FAKE)
        )

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        record = read_run_record(self.run_dir) if not overwrite else None
        if record is None:
            if resume and not overwrite and self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise CCFastError(f"{self.run_dir}: --resume was given but the directory holds no ccfast run")
            return
        if not resume:
            raise CCFastError(f"{self.run_dir} already holds a training run; pass --resume to continue it, "
                              "--overwrite to start it again, or choose another --out")
        if resume and not (self.run_dir / STATE_FILE).exists():
            raise CCFastError(
                f"--resume: {self.run_dir} holds a run but no {STATE_FILE} (it stopped before its first checkpoint, "
                f"every --ckpt-every iterations), so there is nothing to resume; pass --overwrite to start it again")
        saved = TrainConfig.from_dict(record["config"]).with_absolute_paths()
        check_resume_matches(saved, self.cfg.with_absolute_paths(), self.run_dir)
        check_data_matches(record.get("data", {}), self.data_summary, self.run_dir)

    def _build_model(self) -> None:
        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)  # a random (or fresh-head) initialisation is part of what the seed decides
        init = build_initial_model(cfg.arch, self.num_classes, cfg.init, cfg.fresh_head, cfg.mean, cfg.std)
        self.init_description, self.arch_kwargs = init.description, init.arch_kwargs
        net = init.model
        self.amp_name = {"auto": "bf16" if dev.type == "cuda" else "off"}.get(cfg.amp, cfg.amp)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[self.amp_name]
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type == "cuda"
        distributed = self.ctx.world_size > 1
        self.sync_bn = distributed and dev.type == "cuda" and cfg.batchnorm == "batch"
        # Without SyncBatchNorm (DDP on CPU) ranks see different batch statistics; their running statistics are
        # re-broadcast from rank 0 after each update, so that every rank attacks the same model.
        self.broadcast_bn = distributed and not self.sync_bn and cfg.batchnorm == "batch"
        if self.broadcast_bn and self.ctx.is_main:
            warnings.warn("DDP on CPU cannot use SyncBatchNorm: BatchNorm batch statistics are per process here "
                          "(--batchnorm frozen makes N processes equal one)", stacklevel=2)
        if self.sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(dev, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.net = net
        self.ddp = net
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                               broadcast_buffers=False)
        params = list(net.parameters())
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
            self.optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.lr_milestones, cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.weights = LossWeights.from_config(cfg)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_mode(self) -> None:
        self.net.train()
        if self.cfg.batchnorm == "frozen":
            for m in self.net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "iteration": self.iteration,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "attack_schedule": {
                "fake_steps": self.cfg.fake_attack_steps(self.iteration),
                "start": self.cfg.fake_steps_start,
                "every": self.cfg.fake_steps_every,
                "max": self.cfg.fake_steps_max,
            },
            "config": self.cfg.to_dict(),
        }

    def _load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.iteration = int(state["iteration"])
        expected = self.cfg.fake_attack_steps(self.iteration)
        if state["attack_schedule"]["fake_steps"] != expected:
            raise CCFastError(f"{self.run_dir / STATE_FILE}: attack schedule at iteration {self.iteration} is "
                              f"{state['attack_schedule']['fake_steps']} steps, the config gives {expected}")

    # ------------------------------------------------------------------ one iteration

    def _batch(self, images: LabelledImages, stream: BatchStream, t: int):
        index = stream.global_batch(t)[rank_slice(self.cfg.batch_size, self.ctx.rank, self.ctx.world_size)]
        rows, labels = images.take(index.numpy())
        return to_device_float(rows, self.device), torch.from_numpy(labels).to(self.device)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_step(self, t: int) -> torch.Tensor:
        """Update `t` (0-based). Returns the local metric sums (`METRIC_KEYS` order, weighted by local batch size;
        the generated-image ones 0 in a classifier-only run)."""
        cfg = self.cfg
        B, H, W = cfg.batch_size, *self.image_size
        mine = rank_slice(B, self.ctx.rank, self.ctx.world_size)
        gen = iteration_generator(cfg.seed, t)
        xr, cr = self._batch(self.real, self.real_stream, t)
        xg = cg = None
        if not cfg.classifier_only:
            xg, cg = self._batch(self.fake, self.fake_stream, t)
        if cfg.augment != "none":  # real images only (SPEC: off for generated images)
            draw = draw_augmentation(B, crop_pad(min(H, W)), gen)
            draw.flip, draw.shift = draw.flip[mine], draw.shift[mine]
            xr = augment(xr, cfg.augment, draw)
        start = None
        if cfg.real_random_start:
            noise, radius = torch.randn((B, 3, H, W), generator=gen), torch.rand(B, generator=gen)
            start = self._layout(random_start(xr, cfg.real_eps, noise[mine], radius[mine]))
        xr = self._layout(xr)

        # Attacks with the model in eval mode (SPEC §3.1–2); real first, for the paired early stop.
        self.net.eval()
        if cfg.classifier_only:  # Madry-style adversarial training of a robust classifier (SPEC §4 BIGROC)
            fake_budget, fake_adv = 0, None
            real_adv = attack_real(self.net, xr, cr, cfg, start=start, autocast=self.autocast)
            batch = real_adv.images
        else:
            fake_budget = cfg.fake_attack_steps(t)
            attacked = attack_pair(self.net, xr, cr, self._layout(xg), cg, cfg, fake_budget, real_start=start,
                                   autocast=self.autocast)
            real_adv, fake_adv = attacked.real, attacked.fake
            batch = torch.cat([real_adv.images, fake_adv.images])

        # Loss on the attacked images only, one forward of the mixed batch (SPEC §3.3).
        self._train_mode()
        n = xr.shape[0]
        with self.autocast():
            logits = self.ddp(batch)
        loss = joint_loss(logits[:n], cr, None if fake_adv is None else logits[n:], cg, self.weights, cfg.realness)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip or math.inf)
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            raise CCFastError(
                f"non-finite gradients at iteration {t} (loss {float(loss.total):.4g}); the last good state is "
                f"{self.run_dir / STATE_FILE}. Lower --lr, or try --amp off")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.broadcast_bn:
            import torch.distributed as dist

            for name, buf in self.net.named_buffers():
                if "running_" in name:
                    dist.broadcast(buf, 0)

        with torch.no_grad():
            lg = logits.detach().float()
            # Per-batch means and per-iteration scalars are weighted by n; per-example values are summed.
            sums = {"loss": loss.total.detach() * n, "acc_real_adv": (lg[:n].argmax(1) == cr).float().sum(),
                    "D_real_adv": torch.sigmoid(loss.score_real).sum(), "score_real_adv": loss.score_real.sum(),
                    "fake_steps": torch.tensor(float(fake_budget)) * n, "lr": torch.tensor(lr, dtype=torch.float32) * n,
                    "grad_norm": grad_norm.detach().float() * n}
            sums.update({k: v.detach() * n for k, v in loss.terms.items() if k in TERM_NAMES})
            if fake_adv is not None:
                sums.update({
                    "acc_fake_adv": (lg[n:].argmax(1) == cg).float().sum(),
                    "D_fake_adv": torch.sigmoid(loss.score_fake).sum(), "score_fake_adv": loss.score_fake.sum(),
                    "fake_steps_taken": fake_adv.steps_taken.float().sum(),
                    "fake_early_stopped": fake_adv.stopped_early.float().sum()})
            zero = torch.zeros((), dtype=torch.float32, device=self.device)
            return torch.stack([sums.get(k, zero).to(self.device, torch.float32).reshape(()) for k in METRIC_KEYS])

    # ------------------------------------------------------------------ evaluation and checkpoints

    @torch.no_grad()
    def _clean_stats(self, images: LabelledImages, limit: int) -> dict:
        """Accuracy, mean D and mean ℓ_fake of unattacked images (model in eval mode)."""
        k = min(len(images), limit)
        acc = d = lf = 0.0
        for i in range(0, k, 256):
            rows, labels = images.take(np.arange(i, min(k, i + 256)))
            x = self._layout(to_device_float(rows, self.device))
            c = torch.from_numpy(labels).to(self.device)
            with self.autocast():
                z = self.net(x).float()
            s = realness_score_ref(z, c, self.cfg.realness)
            acc += float((z.argmax(1) == c).sum())
            d += float(torch.sigmoid(s).sum())
            lf += float(loss_fake_ref(s).sum())
        return {"acc": acc / k, "D": d / k, "ell_fake": lf / k, "n": k}

    def evaluate(self) -> dict:
        """ℓ0 on held-out real images (SPEC §3.6) and clean statistics of held-out real vs generated images."""
        self.net.eval()
        out = {"kind": "eval", "iter": self.iteration, "ell0": None, **dict.fromkeys(GENERATED_EVAL_KEYS)}
        fake = None if self.fake is None else self._clean_stats(self.fake, EVAL_FAKE_MAX)
        if fake is not None:
            out.update(gen_acc=fake["acc"], gen_D=fake["D"], gen_ell_fake=fake["ell_fake"])
        if self.heldout is not None:
            k = min(len(self.heldout), self.cfg.ell0_max)
            rows, labels = self.heldout.take(np.arange(k))
            out["ell0"] = estimate_ell0(self.net, to_device_float(rows, torch.device("cpu")), torch.from_numpy(labels),
                                        self.cfg.realness)
            real = self._clean_stats(self.heldout, k)
            out.update(ell0_n=k, heldout_acc=real["acc"], heldout_D=real["D"])
            if fake is not None:
                out["clean_realness_gap"] = real["D"] - fake["D"]
        return out

    def checkpoint(self) -> dict | None:
        """Rank 0: ℓ0, the inference checkpoint and the training state; every rank waits for it."""
        result = None
        if self.ctx.is_main:
            result = self.evaluate()
            cfg = self.cfg
            info = CheckpointInfo(
                arch=cfg.arch,
                num_classes=self.num_classes,
                image_size=self.image_size,
                mean=tuple(self.net.mean.flatten().tolist()),
                std=tuple(self.net.std.flatten().tolist()),
                ell0=result["ell0"],
                realness=cfg.realness,
                arch_kwargs=self.arch_kwargs,
                meta={
                    "trained_by": "ccfast.train",
                    "mode": cfg.mode,
                    "iteration": self.iteration,
                    "ell0_n": result.get("ell0_n", 0),
                    "train_config": cfg.to_dict(),
                    "init": self.init_description,
                },
            )
            # The training state goes last: it is what --resume trusts, and resuming drops later metric lines.
            self._append_metrics(result)
            save_checkpoint(
                self.run_dir / MODEL_FILE, _plain_copy(self.net, cfg, self.num_classes, self.arch_kwargs), info
            )
            save_training_state(self.run_dir / STATE_FILE, self.state_dict())
        self.ctx.barrier()
        return result

    def _append_metrics(self, record: dict) -> None:
        with open(self.run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(json_safe(record), allow_nan=False) + "\n")  # strict JSON: NaN becomes null

    # ------------------------------------------------------------------ the loop

    def _reduce(self, window: torch.Tensor) -> torch.Tensor:
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(window)
        return window

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.ctx.is_main:
            what = (f"batch {cfg.batch_size} real (no generated images: a robust classifier, real attack ascends "
                    f"{'ℓ_CE' if cfg.real_attack == 'ce' else 'ℓ_real'}); {len(self.real)} real, "
                    if cfg.classifier_only else
                    f"batch {cfg.batch_size} real + {cfg.batch_size} generated; {len(self.real)} real, "
                    f"{len(self.fake)} generated, ")
            self.log(f"ccfast.train: {cfg.mode} mode; {self.init_description}; device {self.device}, "
                     f"{self.ctx.world_size} process(es), amp {self.amp_name}, {what}"
                     f"{0 if self.heldout is None else len(self.heldout)} held-out real images")
            if self.iteration:
                self.log(f"ccfast.train: resuming {self.run_dir} at iteration {self.iteration}")
        if self.iteration >= cfg.iters:
            if self.ctx.is_main:
                self.log(
                    f"ccfast.train: {self.run_dir} is already at iteration {self.iteration} >= --iters {cfg.iters}"
                )
            return {"iteration": self.iteration}
        if (
            self.iteration == 0 and self.ctx.is_main
        ):  # the starting point of every curve: ℓ0 and clean statistics at init
            self._append_metrics(self.evaluate())
        bar = tqdm(total=cfg.iters, initial=self.iteration, unit="it", desc="train", file=sys.stderr,
                   disable=cfg.quiet or not self.ctx.is_main, dynamic_ncols=True)
        window = torch.zeros(len(METRIC_KEYS), dtype=torch.float64, device=self.device)
        window_iters, window_start, last_eval = 0, time.perf_counter(), None
        try:  # closed on an interrupt too, so that the message after the bar starts on its own line
            while self.iteration < cfg.iters:
                window += self.train_step(self.iteration).double()
                self.iteration += 1
                window_iters += 1
                bar.update(1)
                at_ckpt = self.iteration % cfg.ckpt_every == 0 or self.iteration == cfg.iters
                if at_ckpt or self.iteration % cfg.log_every == 0:
                    record = self._log_window(window, window_iters, time.perf_counter() - window_start)
                    if self.ctx.is_main:
                        postfix = {"loss": f"{record['loss']:.3f}", "acc_r": f"{record['acc_real_adv']:.3f}"}
                        if not cfg.classifier_only:
                            postfix.update(gap=f"{record['realness_gap']:.3f}",
                                           steps=f"{record['fake_steps_taken']:.1f}")
                        bar.set_postfix(postfix)
                    window.zero_()
                    window_iters, window_start = 0, time.perf_counter()
                if at_ckpt:
                    last_eval = self.checkpoint() or last_eval
                    window_start = time.perf_counter()  # evaluation and saving are not training time
                    if self.ctx.is_main and last_eval and last_eval["ell0"] is not None:
                        versus = "" if last_eval["gen_D"] is None else f" vs generated {last_eval['gen_D']:.4f}"
                        bar.write(f"iteration {self.iteration}: ℓ0 {last_eval['ell0']:.4f}, held-out accuracy "
                                  f"{last_eval['heldout_acc']:.4f}, clean D real {last_eval['heldout_D']:.4f}{versus}",
                                  file=sys.stderr)
        finally:
            bar.close()
        if self.ctx.is_main:
            self.log(f"ccfast.train: wrote {self.run_dir / MODEL_FILE} (ℓ0 {last_eval and last_eval['ell0']}), "
                     f"{self.run_dir / STATE_FILE}, {self.run_dir / METRICS_FILE}")
        return {"iteration": self.iteration, "eval": last_eval}

    def _log_window(self, window: torch.Tensor, iters: int, seconds: float) -> dict:
        sums = self._reduce(window.clone()).tolist()
        count = iters * self.cfg.batch_size  # global examples (of each kind) in the window
        record = {"kind": "train", "iter": self.iteration, "window": iters}
        record.update({k: v / count for k, v in zip(METRIC_KEYS, sums, strict=True)})
        if self.cfg.classifier_only:
            record.update(dict.fromkeys(GENERATED_METRIC_KEYS))
            record["realness_gap"] = None
        else:
            record["realness_gap"] = record["D_real_adv"] - record["D_fake_adv"]
        record["real_steps"] = self.cfg.real_steps
        record["sec_per_iter"] = seconds / iters
        images = self.cfg.batch_size * (1 if self.cfg.classifier_only else 2)
        record["images_per_s"] = images * iters / max(seconds, 1e-9)
        if self.ctx.is_main:
            self._append_metrics(record)
        return record


def _plain_copy(net: torch.nn.Module, cfg: TrainConfig, num_classes: int, arch_kwargs: dict):
    """A JointModel with plain BatchNorm holding `net`'s weights (SyncBatchNorm and channels_last are training
    details)."""
    from ..models import build_model

    plain = build_model(cfg.arch, num_classes, **arch_kwargs)
    plain.load_state_dict({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})
    return plain
