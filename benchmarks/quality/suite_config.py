"""The suite's settings: the full-size defaults (one H100, each stage under 10 minutes) and the `--smoke` sizes.

Choices that depart from the papers because of the budget or the 32×32 data are explained in README.md
("Settings and why"). In short:
- training-time attack radii are the SPEC's ImageNet-64 values halved (an L2 norm grows with sqrt(#pixels), and
  32×32 has a quarter of the pixels of 64×64); the refinement presets are used exactly as ccfast defines them;
- both classifiers start from the standard CIFAR ResNet (20 by default, `--clf-arch`) of shared/data/models (no
  robust CIFAR model is available offline); the joint model starts from the robust one, as the paper starts from
  a robust ResNet-50;
- learning rates are raised from the ImageNet fine-tuning value (1e-5) to 1e-4 for a few thousand iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ccfast.config_json import JsonConfig

from .act import ACTConfig
from .consistency import ICTConfig
from .sample import SIGMA_MID_CIFAR10
from .unet import UNetConfig

METHODS = ("bigroc", "paper", "sgld")
SEED_STRIDE = 100


@dataclass
class ClassifierPlan:
    """One `python -m ccfast.train` run: iterations, batch and the flags beyond data, init and output."""

    iters: int
    batch_size: int
    flags: list[str]


def robust_flags(iters: int, ell0_holdout: int = 2000) -> list[str]:
    """BIGROC's classifier (SPEC §4 'a robust classifier'): `ccfast.train --mode robust-classifier`, i.e. L2
    adversarial training on real images alone (Madry et al. 2018): L2 PGD ascending ℓ_CE, then CE on the attacked
    images; no generated images, no discriminator terms. Radii halved for 32×32 as in `joint_flags`."""
    return ["--mode", "robust-classifier",
            "--real-eps", "0.5", "--real-step", "0.125", "--real-steps", "4", "--real-random-start",
            "--augment", "crop-flip", "--lr", "1e-4", "--lr-milestones", str(max(1, iters * 3 // 4)),
            "--ell0-holdout", str(ell0_holdout)]


def joint_flags(iters: int, ell0_holdout: int = 2000) -> list[str]:
    """The joint classifier–discriminator (SPEC §3), radii halved for 32×32. Real images are only flipped: crops
    would pad borders that generated images never have, a free cue for the discriminator."""
    return ["--real-eps", "0.5", "--real-step", "0.125", "--real-steps", "4",
            "--fake-eps", "5", "--fake-step", "0.05", "--fake-steps-start", "5", "--fake-steps-every", "1000",
            "--fake-steps-max", "25", "--augment", "flip", "--lr", "1e-4",
            "--lr-milestones", str(max(1, iters * 3 // 4)), "--ell0-holdout", str(ell0_holdout)]


@dataclass
class SuiteConfig(JsonConfig):
    smoke: bool = False
    # what the report calls the data and the refined generator (paper_repro.py: imagenet64, the user's samples)
    dataset: str = "cifar10"
    generator_label: str = "CT"
    intro: str | None = None  # the report's first paragraph (None: the CIFAR-10 suite's)
    seed: int = 0
    # generators (stages gen_ct, gen_act)
    unet: UNetConfig = field(default_factory=UNetConfig)
    ict: ICTConfig = field(default_factory=ICTConfig)
    act: ACTConfig = field(default_factory=ACTConfig)
    gen_minutes: float = 6.0      # the main generators (CT and ACT): their samples feed every refinement
    gen_iters: int | None = None  # None: as many as gen_minutes afford
    # smaller CT budgets for the FID-vs-generator-minutes trend (same classifiers; seed 0 samples only)
    extra_minutes: tuple[float, ...] = ()
    train_act: bool = True
    # samples
    n_eval: int = 10000
    # Seeds of sampling and refinement for the main rows and the equal-budget curves: sample seed k is
    # seed + SEED_STRIDE·k (the joint model's training fakes use seed+1 and seed+2). Generators and classifiers
    # are trained once: the spread measured is that of sampling and refinement, not of training.
    n_seeds: int = 3
    n_train_fakes: int = 20000  # half 1-step, half 2-step; other seeds than the evaluated samples
    sample_batch: int = 500
    sigma_mid: float = SIGMA_MID_CIFAR10
    real_limit: int | None = None  # use at most this many training images (smoke)
    ref_limit: int | None = None   # FID reference: at most this many test images (smoke)
    # classifiers (stages clf_robust, clf_joint)
    # ResNet-20 by default: clf_joint (about 12 forward+backward passes per iteration) took 3.7 min on an H200 with
    # it; ResNet-56 has 2.8x the layers, which would make clf_joint the longest stage after the generators.
    clf_arch: str = "cifar_resnet20"
    clf_init_pretrained: bool = True
    robust: ClassifierPlan = field(default_factory=lambda: ClassifierPlan(2000, 128, robust_flags(2000)))
    joint: ClassifierPlan = field(default_factory=lambda: ClassifierPlan(2000, 128, joint_flags(2000)))
    ckpt_every: int = 250
    # refinement
    refine_batch: int = 1000
    refine_steps: tuple[int, ...] = (1, 2)   # the CT samples (sampler steps) the main rows refine
    methods: tuple[str, ...] = METHODS
    # engines whose FIDs and times are reported beside the reference's on the main rows (--engine)
    fast_engines: tuple[str, ...] = ()
    # equal-budget comparison (plan.py): step budgets, on which CT samples, which methods (all seeds / first only)
    budgets: tuple[int, ...] = (3, 5, 7, 10, 25)
    budget_steps: int = 2
    budget_methods: tuple[str, ...] = ("bigroc", "paper", "scaled", "joint_ce", "robust_eq12")
    budget_methods_all_seeds: tuple[str, ...] = ("bigroc", "paper", "scaled")
    # α = c·ε/T: c is chosen from this grid on CT `calibrate_steps`-step samples (never the reported ones),
    # as the c with the lowest mean FID over `calibrate_budgets`
    calibrate_steps: int = 1
    calibrate_budgets: tuple[int, ...] = (3, 10)
    alpha_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    # evaluation
    eval_batch: int = 250

    def sample_seed(self, k: int) -> int:
        return self.seed + SEED_STRIDE * k

    def extra_gen_minutes(self) -> tuple[float, ...]:
        return tuple(sorted(m for m in self.extra_minutes if m != self.gen_minutes))


def default_config() -> SuiteConfig:
    return SuiteConfig()


def smoke_config() -> SuiteConfig:
    """Tiny everything: a CPU runs the whole suite (every stage, every CLI) in well under a minute."""
    tiny_train = ["--log-every", "1"]
    return SuiteConfig(
        smoke=True,
        unet=UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), head_channels=16),
        ict=replace(ICTConfig(), batch_size=8, s0=2, s1=8, warmup_iters=1),
        act=replace(ACTConfig(), d_channels=8, d_channel_mult=(1, 2), r1_interval=2),
        gen_iters=3, n_eval=24, n_train_fakes=24, sample_batch=12, real_limit=96, ref_limit=48,
        clf_arch="tiny", clf_init_pretrained=False,
        robust=ClassifierPlan(2, 8, robust_flags(2, ell0_holdout=16) + tiny_train),
        joint=ClassifierPlan(2, 8, joint_flags(2, ell0_holdout=16) + tiny_train),
        ckpt_every=1, refine_batch=24, eval_batch=24,
        # every refinement group once, with as few ccfast.refine calls as that allows (each is a process; the
        # seed statistics and the other budget methods are tested on their own): 3 main rows, 1 calibration, 1
        # budget job (BIGROC's T=7 is its main row)
        n_seeds=1, refine_steps=(1,), budgets=(7,), budget_steps=1, budget_methods=("bigroc", "scaled"),
        calibrate_budgets=(2,), alpha_scales=(2.0,),
    )
