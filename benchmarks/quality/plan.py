"""The refinement plan: every `ccfast.refine` call the suite makes, named, grouped and with its classifier.

Groups (what each answers):
  main       the presets exactly as ccfast defines them (bigroc, paper, sgld) on CT 1- and 2-step samples, for
             every sample seed: the headline table, mean ± std over the seeds
  engine     the main bigroc/paper rows of the first seed again with `--engine triton` (sgld is not listed: every
             fast engine runs SGLD on the reference engine, so the row would repeat the reference's)
  calibrate  joint PGD with α = c·ε/T on CT 1-step samples for each c of the grid: c is chosen here, on 1-step
             samples, and reported only on 2-step samples (never chosen on the samples it is reported on)
  budget     the equal-budget comparison on CT 2-step samples, every seed: for each step budget T, BIGROC
             (α = 1.5·ε/T), joint PGD with the paper's α = 0.1, joint PGD with α = c·ε/T (c from calibrate), and,
             first seed only, the two ablations that separate model from objective: the joint model with BIGROC's
             `ce` recipe and the robust classifier with the paper's `eq12` recipe (with its own ℓ0)
  minutes    bigroc and paper on the samples of each smaller generator budget (`--budget-minutes` list)

A job whose refinement equals one already planned (BIGROC at T=7, paper at T=25 are the presets) is not
repeated: the budget table points at the main row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ccfast.config import PRESETS

# α = c·ε/T: the placeholder a budget job's alpha takes until the calibration has chosen c.
SCALED = "scaled"


@dataclass(frozen=True)
class RefineJob:
    name: str                  # OUT/refined/NAME.npz, OUT/metrics/NAME.json, stages refine_NAME / eval_NAME
    input: str                 # a sample file's name (OUT/samples/INPUT.npz)
    preset: str                # ccfast.refine --preset
    classifier: str            # "robust" (BIGROC's) or "joint"
    group: str                 # main, engine, calibrate, budget, minutes
    method: str                # the curve/row it belongs to: bigroc, paper, sgld, scaled, joint_ce, robust_eq12
    overrides: dict = field(default_factory=dict)  # further ccfast.refine flags (steps, alpha, seed)
    engine: str = "torch"
    budget: int | None = None  # the step budget T of budget/calibrate jobs
    alpha_scale: float | None = None  # c of α = c·ε/T (calibrate jobs; budget 'scaled' jobs get it later)
    seed_index: int = 0

    @property
    def timed(self) -> bool:
        """Its wall time is reported (the first seed's main rows, the engine rows): it runs alone on the GPU."""
        return self.group == "engine" or (self.group == "main" and self.seed_index == 0)

    def with_alpha_scale(self, c: float) -> RefineJob:
        """A `scaled` budget job with its α = c·ε/T filled in."""
        eps = PRESETS[self.preset]["eps"]
        return RefineJob(**{**self.__dict__, "alpha_scale": c,
                            "overrides": {**self.overrides, "alpha": c * eps / self.budget}})


def sample_name(gen: str, steps: int, seed_index: int = 0) -> str:
    """ct_1step (first seed), ct_1step_s1, ...: the first seed keeps the name earlier runs used."""
    return f"{gen}_{steps}step" + (f"_s{seed_index}" if seed_index else "")


def generator_of(sample: str) -> str:
    """The generator whose sampler wrote a raw sample file: ct_2step_s1 -> ct, ct_m2_1step -> ct_m2."""
    match = re.fullmatch(r"(.+)_\d+step(_s\d+)?", sample)
    if match is None:
        raise ValueError(f"not a raw sample name: {sample!r}")
    return match.group(1)


def raw_samples(cfg) -> list[str]:
    """Every raw sample file that is evaluated: CT at each seed, ACT and the smaller CT budgets at the first."""
    names = [sample_name("ct", steps, k) for k in range(cfg.n_seeds) for steps in (1, 2)]
    if cfg.train_act:
        names += [sample_name("act", steps) for steps in (1, 2)]
    for minutes in cfg.extra_gen_minutes():
        names += [sample_name(minutes_generator(minutes), steps) for steps in (1, 2)]
    return names


def bigroc_alpha(steps: int) -> float:
    """BIGROC's rule α = 1.5·ε/T (SPEC §4), so the budget changes how often, not how far, it steps."""
    return 1.5 * PRESETS["bigroc"]["eps"] / steps


def _seed_override(method: str, seed_index: int, sample_seed: int) -> dict:
    # Only SGLD draws noise; its seed follows the sample seed so that each seed is an independent repeat.
    return {"seed": sample_seed} if method == "sgld" and seed_index else {}


def budget_job(inp: str, method: str, steps: int, seed_index: int) -> RefineJob:
    """One point of the equal-budget comparison (the `scaled` method still without its c)."""
    name = f"{inp}_T{steps}_{method}"
    if method == "bigroc":
        return RefineJob(name, inp, "bigroc", "robust", "budget", method,
                         {"steps": steps, "alpha": bigroc_alpha(steps)}, budget=steps, seed_index=seed_index)
    if method == "paper":
        return RefineJob(name, inp, "paper", "joint", "budget", method, {"steps": steps}, budget=steps,
                         seed_index=seed_index)
    if method == SCALED:
        return RefineJob(name, inp, "paper", "joint", "budget", method, {"steps": steps}, budget=steps,
                         seed_index=seed_index)
    if method == "joint_ce":  # BIGROC's recipe, the joint model: what the model adds without Eq. 12
        return RefineJob(name, inp, "bigroc", "joint", "budget", method,
                         {"steps": steps, "alpha": bigroc_alpha(steps)}, budget=steps, seed_index=seed_index)
    if method == "robust_eq12":  # the paper's recipe, the robust classifier: what Eq. 12 adds without the model
        return RefineJob(name, inp, "paper", "robust", "budget", method, {"steps": steps}, budget=steps,
                         seed_index=seed_index)
    raise ValueError(f"unknown budget method {method!r}")


def refine_plan(cfg, alpha_scale: float | None = None) -> list[RefineJob]:
    """Every refinement of the suite, in run order. `alpha_scale`: the calibrated c (None: the `scaled` budget jobs
    are listed without α; the suite runs them once calibration has chosen c)."""
    jobs: list[RefineJob] = []
    seeds = range(cfg.n_seeds)
    main_name = {}
    for k in seeds:
        for steps in cfg.refine_steps:
            inp = sample_name("ct", steps, k)
            for method in cfg.methods:
                job = RefineJob(f"{inp}_{method}", inp, method, "robust" if method == "bigroc" else "joint", "main",
                                method, _seed_override(method, k, cfg.sample_seed(k)), seed_index=k)
                jobs.append(job)
                main_name[(inp, method, PRESETS[method]["steps"])] = job.name
    for engine in cfg.fast_engines:
        for steps in cfg.refine_steps:
            inp = sample_name("ct", steps, 0)
            for method in ("bigroc", "paper"):
                if method in cfg.methods:
                    jobs.append(RefineJob(f"{inp}_{method}_{engine}", inp, method,
                                          "robust" if method == "bigroc" else "joint", "engine", method, engine=engine))
    calib_inp = sample_name("ct", cfg.calibrate_steps)
    for steps in cfg.calibrate_budgets:
        for c in cfg.alpha_scales:
            base = RefineJob(f"{calib_inp}_T{steps}_scaled_c{c:g}", calib_inp, "paper", "joint", "calibrate", SCALED,
                             {"steps": steps}, budget=steps)
            jobs.append(base.with_alpha_scale(c))
    for k in seeds:
        inp = sample_name("ct", cfg.budget_steps, k)
        for method in cfg.budget_methods:
            if k and method not in cfg.budget_methods_all_seeds:
                continue
            for steps in cfg.budgets:
                if (inp, method, steps) in main_name:
                    continue  # the preset itself: the main row is this point
                job = budget_job(inp, method, steps, k)
                if method == SCALED:
                    if alpha_scale is None:
                        jobs.append(job)  # listed, not runnable yet (no alpha)
                        continue
                    job = job.with_alpha_scale(alpha_scale)
                jobs.append(job)
    for minutes in cfg.extra_gen_minutes():
        gen = minutes_generator(minutes)
        for steps in cfg.refine_steps:
            inp = sample_name(gen, steps)
            for method in ("bigroc", "paper"):
                jobs.append(RefineJob(f"{inp}_{method}", inp, method, "robust" if method == "bigroc" else "joint",
                                      "minutes", method))
    return jobs


def budget_point_name(cfg, inp: str, method: str, steps: int) -> str:
    """The job name holding the equal-budget point (method, T) on INPUT: the main row when it is the preset."""
    if method in PRESETS and PRESETS[method]["steps"] == steps and method in cfg.methods:
        return f"{inp}_{method}"
    return f"{inp}_T{steps}_{method}"


def minutes_generator(minutes: float) -> str:
    """Name of the CT generator trained for a smaller budget of the `--budget-minutes` list: ct_m2, ct_m3.5."""
    return f"ct_m{minutes:g}"
