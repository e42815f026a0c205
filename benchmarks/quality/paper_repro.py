"""python -m benchmarks.quality.paper_repro: the paper's ImageNet 64×64 experiment, from the user's own files.

Golan et al. 2024 refine consistency-model samples of ImageNet 64×64 with a joint classifier–discriminator
fine-tuned from a robust ResNet-50, and compare with BIGROC (the robust ResNet-50 itself). Given the files
the paper starts from, this command does the same with ccfast and writes the quality suite's report:

  clf_robust  python -m ccfast.convert: the MadryLab `robustness` checkpoint as a ccfast inference checkpoint
              (BIGROC's classifier; with --ell0-data it gets an ℓ0, which the robust-classifier eq12 ablation needs)
  clf_joint   python -m ccfast.train: the joint model, SPEC §3 defaults (ccfast.train's), initialised from the
              robust checkpoint with a fresh head, on the real images and the --train-fakes samples
  refine      python -m ccfast.refine: the presets bigroc, paper and sgld on each sample file; the calibration
              of α = c·ε/T on the 1-step samples; the equal-budget comparison on the 2-step samples (or the
              1-step ones when only they are given, and the report says so)
  eval        python -m ccfast.evaluate against the reference batch: with OpenAI's VIRTUAL_imagenet64_labeled.npz
              FID uses its precomputed mu/sigma (as OpenAI's evaluator does), precision/recall its images
  report      the suite's tables and plots in --results-dir

Every stage is recorded and skipped when done (OUT/stages/), as in `benchmarks.quality.run`.

example:
  python -m benchmarks.quality.paper_repro --real imagenet64/train_data_batch_* \\
      --samples-1step ct_imagenet64_1step.npz --samples-2step ct_imagenet64_2step.npz \\
      --train-fakes ct_imagenet64_other_seed.npz --robust-checkpoint imagenet_l2_3_0.pt \\
      --ref VIRTUAL_imagenet64_labeled.npz --inception pt_inception-2015-12-05-6726825d.pth --out-dir runs/paper
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.quality.paper_repro import main as _main

    sys.exit(_main())

from ccfast.cli import run_main  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.io_utils import write_json_atomic  # noqa: E402

from . import external, stages  # noqa: E402
from .plan import sample_name  # noqa: E402
from .report import BUDGET_LABELS  # noqa: E402
from .run import Suite, default_workers, log, parse_float_list, parse_int_list, parse_stages, run_until_paused  # noqa: E402
from .stages import Stage, StageRunner  # noqa: E402
from .suite_config import SuiteConfig  # noqa: E402

PROG = "python -m benchmarks.quality.paper_repro"
STAGE_GROUPS = ("clf_robust", "clf_joint", "refine", "eval", "report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    f = p.add_argument_group("the paper's files")
    f.add_argument("--real", nargs="+", required=True, help="ImageNet 64×64 training images: any source ccfast.train "
                   "reads (downsampled-ImageNet train_data_batch_* files, .npz images/labels, class folders)")
    f.add_argument("--samples-1step", required=True, type=Path, help="1-step samples to refine and score: the "
                   "consistency_models sampler's .npz (arr_0 uint8 NHWC, arr_1 labels)")
    f.add_argument("--samples-2step", type=Path, help="2-step samples of the same model (optional)")
    f.add_argument("--train-fakes", nargs="+", required=True, type=Path, help="generated images the joint model "
                   "trains on (same format; sample them with other seeds than the scored files)")
    f.add_argument("--robust-checkpoint", required=True, type=Path, help="MadryLab `robustness` checkpoint of the "
                   "robust classifier (e.g. imagenet_l2_3_0.pt, an L2 ε=3 ResNet-50)")
    f.add_argument("--ref", required=True, type=Path, help="reference batch, e.g. OpenAI's "
                   "VIRTUAL_imagenet64_labeled.npz (arr_0 images + precomputed mu/sigma)")
    f.add_argument("--ell0-data", type=Path, help="held-out real images (.npz with labels) for the robust "
                   "classifier's ℓ0; without it the robust-classifier eq12 ablation is left out")
    p.add_argument("--out-dir", required=True, type=Path, help="where every stage's files and records go")
    p.add_argument("--results-dir", type=Path, help="report files (default OUT/results)")
    m = p.add_argument_group("models")
    m.add_argument("--arch", default="resnet50", help="the robust checkpoint's architecture (default resnet50)")
    m.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    m.add_argument("--joint-iters", type=int, help="ccfast.train iterations (default: ccfast.train's, SPEC §3)")
    m.add_argument("--joint-batch-size", type=int, help="ccfast.train batch size (default: ccfast.train's, 128)")
    m.add_argument("--train-args", default="", help="further ccfast.train flags, one string (e.g. \"--lr 2e-5\")")
    r = p.add_argument_group("refinement and evaluation")
    r.add_argument("--budgets", type=parse_int_list, help="step budgets of the equal-budget comparison "
                   "(default 3,5,7,10,25)")
    r.add_argument("--alpha-scales", type=parse_float_list, help="grid of c for α = c·ε/T (default 1,1.5,2,3), chosen "
                   "at the smallest and largest budget")
    r.add_argument("--budget-methods", default="bigroc,paper,scaled,joint_ce,robust_eq12", help="curves of the "
                   "equal-budget comparison (default all: bigroc, paper, scaled, joint_ce, robust_eq12)")
    r.add_argument("--methods", default="bigroc,paper,sgld", help="presets refined at their own settings on every "
                   "sample file (default bigroc,paper,sgld)")
    r.add_argument("--engine", default="torch", help="a fast engine to refine the bigroc/paper rows again, reported "
                   "beside the reference (default: none, the reference torch engine only)")
    r.add_argument("--inception", help="Inception weights for ccfast.evaluate (pytorch-fid's .pth or fid-helper's .pt)")
    r.add_argument("--allow-unverified-inception", action="store_true", help="accept an Inception file whose hash "
                   "ccfast.evaluate does not know (stand-in networks in tests; FIDs are then not comparable)")
    r.add_argument("--refine-batch-size", type=int, default=256, help="ccfast.refine batch size (default 256)")
    r.add_argument("--eval-batch-size", type=int, default=250, help="ccfast.evaluate batch size (default 250)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, help="untimed refinements and evaluation calls at a time (default 3 on a "
                   "GPU, 1 on a CPU)")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGE_GROUPS)}")
    p.add_argument("--force", default="", help="comma-separated stage names to redo ('*': all)")
    p.add_argument("--deadline-minutes", type=float, help="stop cleanly after this many minutes (exit code 3); "
                   "the same command continues")
    p.add_argument("--commit", help="the commit to record when this copy of the code has no .git")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def paper_config(args, n_eval: int) -> SuiteConfig:
    """The suite's settings for the user's files: one seed (one file per step count), no generators trained."""
    from ccfast.training.config import TrainConfig

    two = args.samples_2step is not None
    defaults = TrainConfig()
    cfg = SuiteConfig(
        dataset="imagenet64", generator_label="CM", train_act=False, n_seeds=1, n_eval=n_eval,
        refine_steps=(1, 2) if two else (1,), budget_steps=2 if two else 1, calibrate_steps=1,
        refine_batch=args.refine_batch_size, eval_batch=args.eval_batch_size, clf_arch=args.arch,
        intro=("Measured here: the given consistency-model samples (CM rows) of ImageNet 64×64, refined by ccfast "
               "with BIGROC's robust classifier (the given MadryLab checkpoint) and with the joint model trained "
               "from it (SPEC §3 defaults), scored by `ccfast.evaluate` against the given reference batch (FID from "
               f"its precomputed mu/sigma when it has them). {n_eval} samples per file; the paper reports FID on "
               "50k samples."))
    cfg.gen_minutes, cfg.gen_iters = 0.0, None
    cfg.joint.iters = args.joint_iters or defaults.iters
    cfg.joint.batch_size = args.joint_batch_size or defaults.batch_size
    cfg.joint.flags = ["--fresh-head", *shlex.split(args.train_args)]
    cfg.robust.iters, cfg.robust.flags = 0, []
    if args.budgets:
        cfg.budgets = args.budgets
    cfg.calibrate_budgets = tuple(sorted({min(cfg.budgets), max(cfg.budgets)}))
    cfg.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = set(cfg.methods) - {"bigroc", "paper", "sgld"}
    if unknown:
        raise CCFastError(f"--methods: unknown {sorted(unknown)}; choose from bigroc, paper, sgld")
    if args.alpha_scales:
        cfg.alpha_scales = args.alpha_scales
    cfg.budget_methods = tuple(m.strip() for m in args.budget_methods.split(",") if m.strip())
    unknown = set(cfg.budget_methods) - set(BUDGET_LABELS)
    if unknown:
        raise CCFastError(f"--budget-methods: unknown {sorted(unknown)}; choose from {', '.join(BUDGET_LABELS)}")
    if args.ell0_data is None:
        cfg.budget_methods = tuple(m for m in cfg.budget_methods if m != "robust_eq12")
    cfg.fast_engines = () if args.engine == "torch" else (args.engine,)
    return cfg


class PaperSuite(Suite):
    """The quality suite's refine/eval/calibrate/report stages on the user's files and classifiers."""

    def __init__(self, args, cfg: SuiteConfig, image_size: int):  # noqa: D107 - not the Suite's CIFAR set-up
        import torch

        self.args, self.cfg = args, cfg
        self.args.refine_methods, self.args.defer_timed = None, False  # one process: every job, timed ones alone
        self.out = args.out_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = (args.results_dir or self.out / "results").resolve()
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise CCFastError(f"--device {self.device}: no CUDA GPU is visible; use --device cpu")
        self.workers = args.workers or default_workers(self.device)
        self.runner = StageRunner(self.out, force={s for s in args.force.split(",") if s}, log=log)
        self.progress = not args.quiet
        self.deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes is not None else None
        external.DEADLINE = self.deadline
        self.inception, self.allow_unverified = args.inception, args.allow_unverified_inception
        self.image_size = image_size
        self.real_files = [Path(p) for p in args.real]
        self._ref_file = args.ref  # the FID reference (Suite.ref_file reads it)
        self.generator_files = {}
        self.classifier_files = {}
        # The scored files keep their place; OUT/samples/ links to them under the suite's names for the report.
        self.sample_files = {}
        given = {1: args.samples_1step, 2: args.samples_2step}
        for steps, path in given.items():
            if path is None:
                continue
            if not path.exists():
                raise CCFastError(f"--samples-{steps}step {path}: no such file")
            link = self.path("samples", f"{sample_name('ct', steps)}.npz")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(path.resolve(), link)
            self.sample_files[sample_name("ct", steps)] = link

    def stage_robust(self) -> None:
        a = self.args
        out = self.path("clf_robust", "model.pt")
        config = {"weights": self.runner.sha256(a.robust_checkpoint), "arch": a.arch, "num_classes": a.num_classes,
                  "ell0_data": self.runner.sha256(a.ell0_data) if a.ell0_data else None}

        def run():
            args = ["--arch", a.arch, "--weights", a.robust_checkpoint, "--out", out, "--num-classes", a.num_classes,
                    "--image-size", self.image_size]
            if a.ell0_data:
                args += ["--ell0-data", a.ell0_data]
            out.parent.mkdir(parents=True, exist_ok=True)
            return {"call_seconds": external.run_cli("ccfast.convert", args, log)}

        self.runner.run(Stage("clf_robust", config, [out], run))
        self.classifier_files["robust"] = out

    def stage_joint(self) -> None:
        a, plan = self.args, self.cfg.joint
        run_dir = self.path("clf_joint")
        config = {"arch": a.arch, "init": self.runner.sha256(a.robust_checkpoint),
                  "real": self.runner.fingerprints(self.real_files) if all(p.is_file() for p in self.real_files)
                  else [str(p) for p in self.real_files],
                  "fake": self.runner.fingerprints(a.train_fakes), "iters": plan.iters, "batch_size": plan.batch_size,
                  "flags": plan.flags, "num_classes": a.num_classes}
        key = self.runner.sha256_of_config(config)

        def run():
            return external.train_classifier(run_dir, self.real_files, list(a.train_fakes), a.arch, a.robust_checkpoint,
                                             plan.iters, plan.batch_size, plan.flags, max(1, min(1000, plan.iters)),
                                             self.device, key, not self.progress, log, num_classes=a.num_classes)

        self.runner.run(Stage("clf_joint", config, [run_dir / "model.pt"], run))
        self.classifier_files["joint"] = run_dir / "model.pt"

    def run(self, groups: list[str]) -> None:
        write_json_atomic(self.path("suite_config.json"), {"config": self.cfg.to_dict(), "argv": sys.argv})
        if "clf_robust" in groups:
            self.stage_robust()
        if "clf_joint" in groups:
            self.stage_joint()
        if "refine" in groups:
            self.stage_refine(self.refine_jobs())
        if "eval" in groups:
            self.stage_eval()
        self.finish(groups)


def sample_shape(path: Path) -> tuple[int, int]:
    """(number of images, image size) of a sample file."""
    from ccfast.data import load_samples

    samples = load_samples(path)
    return len(samples), int(samples.images.shape[1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        groups = parse_stages(args.stages, STAGE_GROUPS)
        for name in ("robust_checkpoint", "ref", "samples_1step"):
            if not getattr(args, name).exists():
                raise CCFastError(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file")
        if args.commit:
            stages.COMMIT_OVERRIDE = args.commit
        n, size = sample_shape(args.samples_1step)
        return run_until_paused(PaperSuite(args, paper_config(args, n), size), groups)

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
