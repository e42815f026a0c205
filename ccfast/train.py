"""python -m ccfast.train: train the joint classifier–discriminator adversarially (SPEC §3).

One network is trained as a classifier (cross-entropy) and as a discriminator (its class logit read as a
realness score) on attacked images: real images pushed by L2 PGD to look fake, generated images pushed to
look real. The result is an inference checkpoint with ℓ0 for `python -m ccfast.refine`.
`--mode robust-classifier` trains BIGROC's robust classifier instead (SPEC §4): L2 adversarial training on real
images alone (Madry et al.).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .cli import parse_optional_float, run_main
from .devices import init_distributed, resolve_device, shutdown_distributed
from .models import ARCHS
from .training.config import (
    AMP_MODES,
    AUGMENTATIONS,
    BATCHNORM_MODES,
    MODE_DEFAULTS,
    MODES,
    OPTIMIZERS,
    REAL_ATTACKS,
    REALNESS_READINGS,
    TrainConfig,
)
from .validation import input_path, output_path

PROG = "python -m ccfast.train"

EPILOG = """\
the iteration (SPEC §3; model in eval mode while attacking, train mode for the update):
  1. real images:      L2 PGD ascending ℓ_real = softplus(−s)  (ε 1.0, step 0.25, 4 steps)
  2. generated images: L2 PGD ascending ℓ_fake = softplus(s)   (ε 10, step 0.1, 5 steps + 1 per 1,000 iterations,
                       capped); image i stops once D(x̂_g,i) > D(x̂_r,i), the attacked real image of the same index
  3. loss on the attacked images: CE(real) + CE(generated) + ℓ_real(real) + ℓ_fake(generated), weights configurable
     Adam lr 1e-5, betas (0.9, 0.999), gradient clip 1.0, lr × 0.1 at iteration 4,000, bf16 on GPU

--mode robust-classifier (BIGROC's classifier, SPEC §4; Madry et al. L2 adversarial training), no --fake:
  1. real images: L2 PGD ascending ℓ_CE(x, c) = LSE(f(x)) − f_c(x)   (--real-attack ce; same ε/step/steps options)
  2. loss: CE(attacked real)   (the mode sets --w-real 0 --w-fake 0 --w-ce-fake 0; --w-real 1 adds ℓ_real)
  ℓ0 is still estimated on held-out real images and stored, so model.pt works with any refine preset.

examples:
  python -m ccfast.train --real imagenet64/ --fake cd_samples.npz --arch resnet50 --init robust_l2_eps3.pt \\
      --out runs/r50
  python -m ccfast.train --real cifar10/train_jpeg75_part0.npz --fake samples.npz --arch cifar_resnet20 \\
      --init resnet20-12fca82f.th --out runs/r20 --iters 2000 --lr 1e-4
  torchrun --nproc-per-node 8 -m ccfast.train --real imagenet64/ --fake s.npz --arch resnet50 --init r.pt --out runs/r50
  python -m ccfast.train --mode robust-classifier --real cifar10/train_jpeg75_part0.npz --arch cifar_resnet56 \\
      --init resnet56.th --out runs/robust --real-eps 0.5 --real-step 0.125 --real-random-start   # for --preset bigroc
  python -m ccfast.train --out runs/r50 --resume                 # continue where it stopped (same arguments)
  python -m ccfast.train --out runs/r50 --resume --iters 20000   # ... and train longer

inputs: real images as .npz (images/labels or arr_0/arr_1), a folder with one sub-folder per class, or
downsampled-ImageNet batches (data, 1-based labels; a folder of train_data_batch_* files); generated images
as consistency-models .npz (arr_0 uint8 NHWC, arr_1 labels). --init takes a ccfast inference checkpoint or
third-party weights (torchvision/timm, akamaster CIFAR ResNets, MadryLab robustness); the head is
re-initialised when the class count differs or with --fresh-head.

outputs in --out: config.json (resolved config), metrics.jsonl (loss terms, accuracy and realness D on attacked
real/generated images, attack steps, early-stopped fraction; ℓ0 and clean statistics at each checkpoint;
generated-image fields null without generated images), state.pt (training state for --resume), model.pt
(inference checkpoint with ℓ0, for ccfast.refine).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mode",
        choices=MODES,
        help="joint: the joint classifier–discriminator on real + generated images (SPEC §3; default). "
        "robust-classifier: BIGROC's robust classifier, L2 adversarial training on real images only "
        f"(sets {_mode_text('robust-classifier')}; an explicit --real-attack or --w-real wins; no --fake)",
    )
    f = p.add_argument_group("data and files")
    f.add_argument("--real", nargs="+", action="extend", metavar="PATH",
                   help="real images (repeatable; sources are concatenated)")
    f.add_argument("--fake", nargs="+", action="extend", metavar="PATH",
                   help="generated images, consistency-models .npz (repeatable); required in joint mode, not used "
                        "with --mode robust-classifier")
    f.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (config, metrics, checkpoints)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last training state")
    f.add_argument("--overwrite", action="store_true", help="discard the run in --out and start again")
    f.add_argument("--ell0-data", nargs="+", action="extend", metavar="PATH",
                   help="held-out real images for ℓ0 (default: hold out --ell0-holdout of the real images)")
    f.add_argument(
        "--ell0-holdout", type=int, help="real images set aside for ℓ0 when --ell0-data is absent (default 2000)"
    )
    f.add_argument("--ell0-max", type=int, help="use at most this many held-out images for ℓ0 (default 10000)")
    f.add_argument("--augment", choices=AUGMENTATIONS, help="real images only: none, flip, crop-flip (default none)")

    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=sorted(ARCHS), help="backbone (default resnet50)")
    m.add_argument("--init", metavar="CKPT", help="weights to start from (default: random)")
    m.add_argument("--fresh-head", action=argparse.BooleanOptionalAction, help="re-initialise the classification head")
    m.add_argument("--num-classes", type=int, help="classes (default: largest real label + 1)")
    m.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the init file's, else ImageNet's)")
    m.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the init file's, else ImageNet's)")
    m.add_argument(
        "--realness", choices=REALNESS_READINGS, help="realness score: logit (f_c, paper; default) or logsumexp (JEM)"
    )

    a = p.add_argument_group("attacks (L2 PGD, normalised steps)")
    a.add_argument("--real-attack", choices=REAL_ATTACKS,
                   help="what the real-image attack ascends: realness (ℓ_real = softplus(−s), SPEC §3.1; default in "
                        "joint mode) or ce (ℓ_CE(x, c), Madry et al.; default with --mode robust-classifier)")
    a.add_argument("--real-eps", type=float, help="ε of the real-image attack (default 1.0)")
    a.add_argument("--real-step", type=float, help="step of the real-image attack (default 0.25)")
    a.add_argument("--real-steps", type=int, help="steps of the real-image attack (default 4)")
    a.add_argument(
        "--real-random-start", action=argparse.BooleanOptionalAction, help="random start in the ε-ball (default off)"
    )
    a.add_argument("--fake-eps", type=float, help="ε of the generated-image attack (default 10.0)")
    a.add_argument("--fake-step", type=float, help="step of the generated-image attack (default 0.1)")
    a.add_argument("--fake-steps-start", type=int, help="generated-image attack steps at iteration 0 (default 5)")
    a.add_argument("--fake-steps-every", type=int, help="one more step every this many iterations (default 1000)")
    a.add_argument("--fake-steps-max", type=int, help="cap on the generated-image attack steps (default 25)")
    a.add_argument("--fake-early-stop", action=argparse.BooleanOptionalAction,
                   help="paired early stop: generated image i stops once D(x̂_g,i) > D(x̂_r,i) (default on)")

    w = p.add_argument_group("loss weights (default 1 each)")
    w.add_argument("--w-ce-real", type=float, help="cross-entropy on attacked real images")
    w.add_argument("--w-ce-fake", type=float, help="cross-entropy on attacked generated images")
    w.add_argument("--w-real", type=float, help="ℓ_real = softplus(−s) on attacked real images")
    w.add_argument("--w-fake", type=float, help="ℓ_fake = softplus(s) on attacked generated images")

    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default), adamw or sgd")
    o.add_argument("--lr", type=float, help="learning rate (default 1e-5)")
    o.add_argument("--betas", type=float, nargs=2, help="Adam betas (default 0.9 0.999)")
    o.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    o.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    o.add_argument("--grad-clip", type=parse_optional_float, default=argparse.SUPPRESS,
                   help="clip the gradient norm to this ('none': no clipping; default 1.0)")
    o.add_argument(
        "--lr-milestones", type=int, nargs="*", help="iterations where lr is multiplied by --lr-gamma (default 4000)"
    )
    o.add_argument("--lr-gamma", type=float, help="lr factor at each milestone (default 0.1)")
    o.add_argument("--iters", type=int, help="total iterations (default 10000)")
    o.add_argument(
        "--batch-size",
        type=int,
        help="real images per iteration, and as many generated ones (joint mode); the global batch "
        "under torchrun (default 128)",
    )
    o.add_argument("--seed", type=int, help="seed of batch order, augmentation and random starts (default 0)")
    o.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        help="batch: batch statistics when training (SyncBatchNorm under "
        "DDP on GPU; default); frozen: running statistics throughout",
    )

    r = p.add_argument_group("execution")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available; cuda:LOCAL_RANK under torchrun)")
    r.add_argument(
        "--amp", choices=AMP_MODES, help="mixed precision: auto (bf16 on CUDA, off on CPU; default), bf16, fp16, off"
    )
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on CUDA)")
    r.add_argument("--log-every", type=int, help="iterations per metrics line (default 10)")
    r.add_argument("--ckpt-every", type=int, help="iterations between checkpoints with ℓ0 (default 1000)")
    r.add_argument("--quiet", action="store_const", const=True, help="no progress bar")
    return p


def _mode_text(mode: str) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                    for k, v in MODE_DEFAULTS[mode].items())


CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def config_from_args(args) -> TrainConfig:
    """The mode's defaults (new run) or the run's saved config (--resume), with the arguments given on top. On
    resume, a given value that differs from the run's is reported by the trainer, unless it only steers the run
    (--iters, ...); the saved config already holds its mode's settings."""
    given = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS and v is not None}
    if "grad_clip" in vars(args):  # 'none' is a value here
        given["grad_clip"] = args.grad_clip
    base = None
    if args.resume and not args.overwrite:
        from .training.state import read_run_record

        record = read_run_record(args.out)
        if record is not None:
            base = TrainConfig.from_dict(record["config"])
    if base is None:
        base = TrainConfig.for_mode(given.get("mode", "joint"))
    # Absolute input paths in config.json: `--resume` from another directory reads the same files (a record
    # written with relative paths resolves them against the current directory, as before).
    base = base.with_absolute_paths()
    return base.replace(**given).with_absolute_paths().validate()


def check_files(cfg: TrainConfig) -> None:
    """The run directory is not a file and is none of the inputs; every input exists (issue #14)."""
    inputs = [(f"--{role.replace('_', '-')}", p) for role in ("real", "fake", "ell0_data") for p in getattr(cfg, role)]
    inputs.append(("--init", cfg.init))
    for option, path in inputs:
        if path is not None:
            input_path(path, option, folder_ok=True)
    output_path(cfg.out, "--out", inputs=inputs, directory=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from .training.loop import Trainer

        cfg = config_from_args(args)
        ctx = init_distributed(resolve_device(cfg.device).type)
        trainer = None
        try:
            check_files(cfg)
            trainer = Trainer(cfg, ctx, resume=args.resume, overwrite=args.overwrite)
            trainer.run()
        except KeyboardInterrupt:
            if trainer is not None and ctx.is_main:
                print(
                    f"{PROG}: interrupted at iteration {trainer.iteration}; `{PROG} --out {cfg.out} --resume` "
                    "continues "
                    f"from the last checkpoint (every {cfg.ckpt_every} iterations)",
                    file=sys.stderr,
                )
                return 130
            raise
        finally:
            shutdown_distributed(ctx)
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
