"""`TrainConfig`: everything that decides what a training run computes (SPEC §3), validated, JSON round trip.

The resolved config is written to RUN_DIR/config.json; `--resume` compares it field by field with the
arguments of the resumed run. Only the fields in `RUN_CONTROL_FIELDS` may change on resume: they decide
how long and where a run goes, not what one iteration computes. A config.json written before a field existed
still loads: the missing field takes its default, which is what the older code computed.

Two modes (`mode`):
- "joint": the joint classifier–discriminator of SPEC §3 (real and generated images; generated images required);
- "robust-classifier": BIGROC's robust classifier (SPEC §4 baseline; Madry et al. 2018 L2 adversarial training):
  real images only, attacked by L2 PGD ascending ℓ_CE, trained with CE. `MODE_DEFAULTS` lists the settings the
  mode changes; explicitly given values still win (`for_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config_json import JsonConfig
from ..errors import CCFastError

OPTIMIZERS = ("adam", "adamw", "sgd")
AUGMENTATIONS = ("none", "flip", "crop-flip")
BATCHNORM_MODES = ("batch", "frozen")
AMP_MODES = ("auto", "bf16", "fp16", "off")
REALNESS_READINGS = ("logit", "logsumexp")  # == ccfast.objectives.REALNESS (not imported: it pulls in torch)
REAL_ATTACKS = ("realness", "ce")  # what the real-image attack ascends: ℓ_real (SPEC §3.1) or ℓ_CE (Madry et al.)
MODES = ("joint", "robust-classifier")

# What a mode changes from the dataclass defaults (which are the joint model's, SPEC §3). A robust classifier
# (BIGROC's premise, SPEC §4) is Madry-style adversarial training: the attack ascends the classification loss and
# only CE on the attacked real images trains; no generated images, no discriminator terms.
MODE_DEFAULTS = {
    "joint": {},
    "robust-classifier": {"real_attack": "ce", "w_real": 0.0, "w_fake": 0.0, "w_ce_fake": 0.0},
}

# May differ between a run and its resumption (how long, on what, how often to log/save).
RUN_CONTROL_FIELDS = frozenset({"iters", "device", "log_every", "ckpt_every", "quiet", "out"})


@dataclass
class TrainConfig(JsonConfig):
    """A training run. Defaults are SPEC §3 (the official code's values where the paper gives none).

    mode              "joint" (SPEC §3) or "robust-classifier" (real images only; see MODE_DEFAULTS)
    data
      real, fake       lists of sources. real: `.npz` (`images`/`labels` or `arr_0`/`arr_1`), image folders
                       (one sub-folder per class) or downsampled-ImageNet batches (`data`, 1-based `labels`);
                       fake: consistency-models sample files (`arr_0` uint8 NHWC, `arr_1` labels); required in
                       joint mode, refused in robust-classifier mode (a run without them is classifier-only)
      ell0_data        held-out real images for ℓ0 (SPEC §3.6); empty: hold out `ell0_holdout` real images
      ell0_holdout     real images set aside for ℓ0 when `ell0_data` is empty (never trained on)
      ell0_max         at most this many held-out images are used for ℓ0
      augment          real images only: none | flip | crop-flip (generated images are never augmented)
    model
      arch, init       backbone name; weights to start from (ccfast inference checkpoint or third-party file)
      fresh_head       re-initialise the classification head even when its shape matches
      num_classes      None: largest real label + 1
      mean, std        normalisation inside the model; None: the init file's, else ImageNet's
      realness         realness score s: "logit" (f_c, the paper) or "logsumexp" (JEM)
    attacks (SPEC §3.1–2; L2 PGD with normalised steps, model in eval mode)
      real_attack      what the real-image attack ascends: "realness" (ℓ_real = softplus(−s), SPEC §3.1) or "ce"
                       (ℓ_CE(x, c_r), Madry et al.'s adversarial training; the robust-classifier default)
      real_*           ε, step, steps of the real-image attack, optional random start in the ε-ball
      fake_*           ascend ℓ_fake: ε, step; steps = min(fake_steps_max, fake_steps_start + ⌊t / fake_steps_every⌋)
      fake_early_stop  generated image i stops once D(x̂_g,i) > D(x̂_r,i) (the attacked real of the same index)
    loss (SPEC §3.3): w_ce_real·CE(x̂_r) + w_ce_fake·CE(x̂_g) + w_real·ℓ_real(x̂_r) + w_fake·ℓ_fake(x̂_g)
                      (without generated images the last-but-one and last terms are not computed)
    optimiser: Adam lr 1e-5 betas (0.9, 0.999), clip 1.0, lr × lr_gamma at each of lr_milestones (SPEC §3.5)
    batchnorm         "batch": batch statistics in the training forward (global under DDP on GPU, through
                      SyncBatchNorm); "frozen": running statistics throughout (BN affine weights still train)
    amp               auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with a gradient scaler) | off
    channels_last     None: on CUDA only
    """

    mode: str = "joint"
    real: list[str] = field(default_factory=list)
    fake: list[str] = field(default_factory=list)
    out: str = ""
    arch: str = "resnet50"
    init: str | None = None
    fresh_head: bool = False
    num_classes: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    realness: str = "logit"

    ell0_data: list[str] = field(default_factory=list)
    ell0_holdout: int = 2000
    ell0_max: int = 10000
    augment: str = "none"

    real_attack: str = "realness"
    real_eps: float = 1.0
    real_step: float = 0.25
    real_steps: int = 4
    real_random_start: bool = False
    fake_eps: float = 10.0
    fake_step: float = 0.1
    fake_steps_start: int = 5
    fake_steps_every: int = 1000
    fake_steps_max: int = 25
    fake_early_stop: bool = True

    w_ce_real: float = 1.0
    w_ce_fake: float = 1.0
    w_real: float = 1.0
    w_fake: float = 1.0

    optimizer: str = "adam"
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    momentum: float = 0.9
    grad_clip: float | None = 1.0
    lr_milestones: list[int] = field(default_factory=lambda: [4000])
    lr_gamma: float = 0.1

    iters: int = 10000
    batch_size: int = 128
    seed: int = 0
    batchnorm: str = "batch"
    amp: str = "auto"
    channels_last: bool | None = None
    device: str | None = None
    log_every: int = 10
    ckpt_every: int = 1000
    quiet: bool = False

    def __post_init__(self):
        # JSON gives lists for tuples and may give ints for floats; normalise so that a round trip compares equal.
        for name in ("real", "fake", "ell0_data"):
            value = getattr(self, name)
            setattr(self, name, [str(value)] if isinstance(value, str) else [str(v) for v in value])
        for name in ("mean", "std", "betas"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, [float(v) for v in value])
        self.lr_milestones = sorted(int(m) for m in self.lr_milestones)

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise CCFastError(f"invalid training config: {msg}")

        choices = {"mode": MODES, "optimizer": OPTIMIZERS, "augment": AUGMENTATIONS, "batchnorm": BATCHNORM_MODES,
                   "amp": AMP_MODES, "realness": REALNESS_READINGS, "real_attack": REAL_ATTACKS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(f"{name} {getattr(self, name)!r} not in {allowed}")
        if not self.real:
            bad("no real images given (--real)")
        if self.mode == "joint" and not self.fake:
            bad("no generated images given (--fake); the joint classifier–discriminator (SPEC §3) trains on real and "
                "generated images. For BIGROC's robust classifier on real images alone, pass --mode robust-classifier")
        if self.mode == "robust-classifier":
            if self.fake:
                bad("--mode robust-classifier trains on real images only and does not read --fake; drop --fake, or use "
                    "--mode joint (with --real-attack ce and the loss weights you want)")
            for name in ("w_ce_fake", "w_fake"):
                if getattr(self, name) != 0:
                    bad(f"{name} = {getattr(self, name)} weighs a generated-image term, and --mode robust-classifier "
                        "has no generated images; leave it at 0")
        if not self.out:
            bad("no run directory given (--out)")
        for name in ("real_eps", "real_step", "fake_eps", "fake_step", "lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("real_steps", "fake_steps_start", "fake_steps_max", "ell0_holdout"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("fake_steps_every", "iters", "batch_size", "log_every", "ckpt_every", "ell0_max"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fake_steps_max < self.fake_steps_start:
            bad(f"fake_steps_max ({self.fake_steps_max}) is below fake_steps_start ({self.fake_steps_start})")
        for name in ("w_ce_real", "w_ce_fake", "w_real", "w_fake", "weight_decay", "momentum"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad(f"grad_clip must be > 0 or None (no clipping), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                bad(f"{name} needs 3 values (one per RGB channel), got {value}")
        if self.std is not None and min(self.std) <= 0:
            bad(f"std must be > 0, got {self.std}")
        if self.num_classes is not None and self.num_classes < 1:
            bad(f"num_classes must be >= 1, got {self.num_classes}")
        if min(self.lr_milestones, default=1) < 1:
            bad(f"lr_milestones must be iterations >= 1, got {self.lr_milestones}")
        return self

    @property
    def classifier_only(self) -> bool:
        """No generated images: no generated-image attack, no CE(x̂_g) or ℓ_fake(x̂_g) term (robust-classifier mode)."""
        return not self.fake

    def fake_attack_steps(self, iteration: int) -> int:
        """SPEC §3.2: 5 steps at first, one more every 1,000 iterations, never above the cap."""
        return min(self.fake_steps_max, self.fake_steps_start + iteration // self.fake_steps_every)

    # ------------------------------------------------------------ serialisation

    @classmethod
    def for_mode(cls, mode: str = "joint", **values) -> "TrainConfig":
        """The defaults of `mode` (MODE_DEFAULTS), with `values` on top: explicitly given settings always win."""
        if mode not in MODE_DEFAULTS:
            raise CCFastError(f"invalid training config: mode {mode!r} not in {MODES}")
        return cls(**{"mode": mode, **MODE_DEFAULTS[mode], **values})

    def differences(self, other: "TrainConfig", ignore=RUN_CONTROL_FIELDS) -> dict[str, tuple]:
        """Fields (outside `ignore`) whose values differ: {name: (self's, other's)}."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}
