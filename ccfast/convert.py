"""python -m ccfast.convert: turn third-party classifier weights into a ccfast inference checkpoint.

Accepts torchvision/timm-style state dicts, akamaster CIFAR ResNet `.th` files and MadryLab `robustness`
checkpoints (their normaliser is taken from the file). Optionally estimates ℓ0 = mean ℓ_fake over real
images (SPEC §3.6) so that Eq. 12 and early stopping have their threshold.
"""

from __future__ import annotations

import argparse
import sys

from .cli import run_main
from .errors import CCFastError
from .models import ARCHS, IMAGENET_MEAN, IMAGENET_STD
from .validation import input_path, integer, numbers, output_path

PROG = "python -m ccfast.convert"

DEFAULT_IMAGE_SIZE = {"resnet50": 64, "wide_resnet50_2": 64}  # the paper feeds ImageNet 64×64 directly


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="example:\n  python -m ccfast.convert --arch cifar_resnet56 --weights resnet56-4bfd9763.th "
               "--out r56.pt --ell0-data cifar10/test.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(ARCHS), help="backbone architecture")
    p.add_argument("--weights", help="weights file to load (omit for random initialisation, e.g. for tests)")
    p.add_argument("--out", required=True, help="inference checkpoint to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes (default: 10 for CIFAR/tiny archs, 1000 otherwise)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square image size the model expects (default 32, or 64 for ImageNet archs)",
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None, help="normalisation mean (default ImageNet, or the file's)"
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None, help="normalisation std (default ImageNet, or the file's)"
    )
    p.add_argument("--fresh-head", action="store_true", help="re-initialise the classification head")
    p.add_argument("--ell0-data", help="real images (.npz with labels) to estimate ℓ0 on")
    p.add_argument("--ell0-max", type=int, default=10000, help="use at most this many images for ℓ0 (default 10000)")
    p.add_argument("--realness", choices=("logit", "logsumexp"), default="logit", help="realness reading for ℓ0")
    return p


def _with_norm(model, mean, std):
    import torch

    model.mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
    model.std.copy_(torch.tensor(std).view(1, -1, 1, 1))
    return model.eval()


def check_arguments(args) -> None:
    """Every check that needs no file read, before any work (issue #14)."""
    if args.num_classes is not None:
        integer(args.num_classes, "--num-classes", at_least=1)
    if args.image_size is not None:
        integer(args.image_size, "--image-size", at_least=1)
    integer(args.ell0_max, "--ell0-max", at_least=1)
    numbers(args.mean, "--mean", count=3)
    numbers(args.std, "--std", count=3, above=0)
    if args.weights is not None:
        input_path(args.weights, "--weights")
    if args.ell0_data is not None:
        input_path(args.ell0_data, "--ell0-data")
    output_path(args.out, "--out", inputs=[("--weights", args.weights), ("--ell0-data", args.ell0_data)],
                overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        check_arguments(args)
        import torch

        from .checkpoint import CheckpointInfo, estimate_ell0, save_checkpoint
        from .data import load_samples, uint8_to_float
        from .models import build_model, load_backbone_weights

        num_classes = args.num_classes if args.num_classes is not None else (
            10 if args.arch.startswith(("cifar_", "tiny")) else 1000)
        size = args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE.get(args.arch, 32)
        model = build_model(args.arch, num_classes)
        norm = {}
        if args.weights:
            norm = load_backbone_weights(
                model.backbone, args.weights, fresh_head=args.fresh_head or None, arch=args.arch
            )
        mean = tuple(args.mean or norm.get("mean", IMAGENET_MEAN))
        std = tuple(args.std or norm.get("std", IMAGENET_STD))
        model = _with_norm(model, mean, std)
        ell0 = None
        meta = {"source_weights": args.weights}
        if args.ell0_data:
            s = load_samples(args.ell0_data, require_labels=True, num_classes=num_classes,
                             no_labels_hint="ℓ0 is the mean realness of real images at their true labels; give a "
                                            "labelled --ell0-data (arr_1 or labels)")
            if s.images.shape[1:3] != (size, size):
                raise CCFastError(
                    f"{args.ell0_data}: images are {s.images.shape[1]}×{s.images.shape[2]}, model expects {size}×{size}"
                )
            k = min(len(s), args.ell0_max)
            ell0 = estimate_ell0(model, uint8_to_float(s.images[:k]), torch.as_tensor(s.labels[:k]), args.realness)
            meta.update(ell0_data=args.ell0_data, ell0_n=k)
            print(f"ℓ0 = {ell0:.6f} (mean ℓ_fake over {k} real images, realness={args.realness})", file=sys.stderr)
        info = CheckpointInfo(arch=args.arch, num_classes=num_classes, image_size=(size, size), mean=mean, std=std,
                              ell0=ell0, realness=args.realness, meta=meta)
        save_checkpoint(args.out, model, info)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
