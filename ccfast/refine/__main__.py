"""python -m ccfast.refine: refine a file of generated samples toward the real-data manifold.

The output appears only when complete. Work is done in chunks (one batch each) kept in OUT.partial/;
an interrupted run, started again with the same arguments, resumes from the last finished chunk.
Under `torchrun --nproc-per-node N`, ranks share the chunks and rank 0 writes one merged output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import parse_optional_float, run_main
from ..config import EARLY_STOP_RULES, LABEL_SOURCES, METHODS, PRESETS, RefineConfig
from ..data import load_samples, save_samples
from ..devices import DistContext, init_distributed, resolve_device, shutdown_distributed
from ..errors import CCFastError
from ..io_utils import atomic_path, file_fingerprint, write_json_atomic
from ..objectives import OBJECTIVES, REALNESS
from ..validation import integer, output_path, require_finite
from . import options

PROG = "python -m ccfast.refine"

EPILOG = """\
presets (SPEC §4; explicit flags override them):
  paper      PGD on Eq. 12 (CE + (ℓ_fake−ℓ0)²/2), α=0.1, T=25, ε=1.5, early stop at ℓ_fake ≥ ℓ0
  bigroc     PGD on cross-entropy toward the generator's label, α=1.5·ε/T, T=7, ε=1.5, no early stop
  bigroc-pl  as bigroc, toward the classifier's argmax on the unrefined image (pseudo-labels)
  sgld       x ← x + α∇f_c(x) + σ·N(0,I), α=0.002 per example (the official α=0.2 on the mean over
             batches of 100), σ=1e-4, T=15, no projection

examples:
  python -m ccfast.refine --checkpoint joint.pt --input samples.npz --output refined.npz
  python -m ccfast.refine --checkpoint r56.pt --input test.npz --output out.npz --preset bigroc --device cpu
  torchrun --nproc-per-node 4 -m ccfast.refine --checkpoint joint.pt --input s.npz --output r.npz

interrupted runs: finished chunks are kept in OUT.npz.partial/; rerun the same command to resume from
them (--overwrite discards them).

outputs: OUT.npz (arr_0 uint8 NHWC refined images, arr_1 labels used, per-example stats: steps,
realness_init/final, objective_init/final, stopped) and OUT.npz.json (resolved config and provenance).
"""


def build_parser() -> argparse.ArgumentParser:
    from . import ENGINES

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("files")
    io.add_argument(
        "--checkpoint", required=True, help="ccfast inference checkpoint (from ccfast.train or ccfast.convert)"
    )
    io.add_argument("--input", required=True, help="samples .npz: arr_0 uint8 NHWC + arr_1 labels, or images + labels")
    io.add_argument("--output", required=True, help="refined samples .npz, written in the input's layout")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output and discard unfinished chunks")
    io.add_argument(
        "--save-float", action="store_true", help="also store the float32 refined images (key float_images, NHWC)"
    )

    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--engine",
        default="torch",
        choices=list(ENGINES),
        help="torch: fp32 reference (CPU or GPU); triton: fused "
        "kernels + CUDA graphs; ort: ONNX Runtime; trt: TensorRT (default: torch)",
    )
    eng.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                     help="engine-specific option, repeatable (e.g. onnx=step.onnx, plan=step.plan, dtype=bf16)")
    eng.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    eng.add_argument("--batch-size", type=int, default=256, help="images per chunk and per engine call (default 256)")

    m = p.add_argument_group("method (defaults from --preset)")
    m.add_argument(
        "--preset",
        default="paper",
        choices=sorted(PRESETS),
        help="starting point for the options below (default paper)",
    )
    m.add_argument("--method", choices=METHODS, help="pgd or sgld")
    m.add_argument("--objective", choices=OBJECTIVES, help="objective J minimised by PGD (eq12 = paper Eq. 12)")
    m.add_argument("--realness", choices=REALNESS, help="realness score: logit (f_c, paper) or logsumexp (JEM)")
    m.add_argument("--steps", type=int, help="step budget T")
    m.add_argument("--alpha", type=float, help="step size α (L2 length of each normalised step)")
    m.add_argument(
        "--eps",
        type=parse_optional_float,
        default=argparse.SUPPRESS,
        help="L2 radius ε around the input ('none': no projection)",
    )
    m.add_argument(
        "--early-stop", choices=EARLY_STOP_RULES, help="realness: stop an image once ℓ_fake ≥ τ; none: always T steps"
    )
    m.add_argument("--tau", type=float, help="early-stop threshold τ (default: the checkpoint's ℓ0)")
    m.add_argument("--ell0", type=float, help="ℓ0 of Eq. 12 (default: the checkpoint's)")
    m.add_argument("--w-ce", type=float, help="weight of the cross-entropy term (default 1)")
    m.add_argument("--w-d", type=float, help="weight of the realness term (default 1)")
    m.add_argument(
        "--labels", choices=LABEL_SOURCES, help="given: the file's labels (GT); argmax: classifier's prediction (PL)"
    )
    m.add_argument("--sigma", type=float, help="SGLD noise scale σ")
    m.add_argument("--seed", type=int, help="seed for SGLD noise (per example, independent of batching)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> RefineConfig:
    overrides = {
        k: getattr(args, k)
        for k in (
            "method",
            "objective",
            "realness",
            "steps",
            "alpha",
            "tau",
            "ell0",
            "w_ce",
            "w_d",
            "labels",
            "sigma",
            "seed",
            "early_stop",
        )
    }
    cfg = RefineConfig.from_preset(args.preset, **overrides)
    if hasattr(args, "eps"):  # given on the command line ('none' is a value, so no None default)
        cfg = cfg.replace(eps=args.eps)
    return cfg.validate()


def parse_engine_options(items: list[str]) -> dict:
    return options.parse_key_values(items, "--engine-option")


def _chunk_path(partial: Path, i: int) -> Path:
    return partial / f"chunk_{i:06d}.npz"


def _prepare_partial_dir(partial: Path, manifest: dict, overwrite: bool, ctx: DistContext) -> None:
    if ctx.is_main:
        mpath = partial / "manifest.json"
        if partial.exists() and overwrite:
            shutil.rmtree(partial)
        if partial.exists():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, ValueError):
                old = None
            if old != manifest:
                if any(partial.glob("chunk_*.npz")):
                    raise CCFastError(
                        f"{partial} holds unfinished chunks of a run with other inputs or settings; "
                        "pass --overwrite to discard them, or rerun with the original arguments to resume"
                    )
                shutil.rmtree(partial)  # no finished chunk (e.g. a run that failed early): nothing to keep
        if not partial.exists():
            partial.mkdir(parents=True)
            write_json_atomic(mpath, manifest)
    ctx.barrier()


# Engine options that name files the engine reads: the output must not replace them.
FILE_ENGINE_OPTIONS = ("onnx", "plan")


def check_arguments(args) -> tuple[RefineConfig, dict, Path]:
    """Every check that needs no model or data, before anything is loaded or written (issue #14); returns the
    config, the parsed engine options and the output path."""
    integer(args.batch_size, "--batch-size", at_least=1)
    config = config_from_args(args)
    engine_options = parse_engine_options(args.engine_option)
    inputs = [("--input", args.input), ("--checkpoint", args.checkpoint)]
    inputs += [(f"--engine-option {k}", v) for k, v in engine_options.items() if k in FILE_ENGINE_OPTIONS and v]
    out = output_path(args.output, "--output", inputs=inputs, overwrite=args.overwrite, suffix=".npz",
                      sidecars=(".json",))
    partial = out.with_name(out.name + ".partial")
    if partial.exists() and not partial.is_dir():
        raise CCFastError(f"--output {out}: {partial} is a file, where the run keeps its chunks; move it away")
    return config, engine_options, out


def refine_file(args, ctx: DistContext) -> int:
    from tqdm.auto import tqdm

    from . import Refiner
    from .base import STAT_FIELDS

    config, engine_options, out = check_arguments(args)
    device = resolve_device(args.device, ctx)
    t0 = time.perf_counter()
    refiner = Refiner(args.checkpoint, engine=args.engine, config=config, device=device, batch_size=args.batch_size,
                      **engine_options)
    t_setup = time.perf_counter() - t0
    samples = load_samples(args.input, require_labels=config.labels == "given", num_classes=refiner.info.num_classes,
                           no_labels_hint="class-conditional refinement needs the generator's labels, or use "
                                          "--labels argmax to take the classifier's prediction")
    n = len(samples)
    n_chunks = (n + args.batch_size - 1) // args.batch_size
    manifest = {
        "input": str(Path(args.input).resolve()), "input_sha256": file_fingerprint(args.input),
        "checkpoint_sha256": file_fingerprint(args.checkpoint), "config": config.to_dict(), "engine": args.engine,
        "batch_size": args.batch_size, "n": n, "save_float": bool(args.save_float),
    }
    partial = out.with_name(out.name + ".partial")
    _prepare_partial_dir(partial, manifest, args.overwrite, ctx)

    mine = [i for i in range(n_chunks) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if not _chunk_path(partial, i).exists()]
    done_here = sum(min(args.batch_size, n - i * args.batch_size) for i in mine if i not in todo)
    bar = tqdm(total=sum(min(args.batch_size, n - i * args.batch_size) for i in mine), initial=done_here, unit="img",
               desc=f"refine[{args.engine}]", disable=args.quiet or not ctx.is_main, file=sys.stderr)
    t1 = time.perf_counter()
    try:  # closed on an interrupt too, so that the message after the bar starts on its own line
        for i in todo:
            sl = slice(i * args.batch_size, min(n, (i + 1) * args.batch_size))
            labels = samples.labels[sl] if samples.labels is not None else None
            res = refiner.refine(samples.images[sl], labels, indices=np.arange(sl.start, sl.stop))
            floats = res.images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
            stats = res.stats_numpy()
            # NaN images would be quantised to 0 and look like a result: refuse instead.
            require_finite(f"{args.output}: refining images {sl.start}..{sl.stop - 1} of {args.input}",
                           f"Check the checkpoint {args.checkpoint} and the step options", images=floats, **stats)
            arrays = {"images": res.uint8(), "labels": res.labels.cpu().numpy(), **stats}
            if args.save_float:
                arrays["float_images"] = floats
            with atomic_path(_chunk_path(partial, i), suffix=".npz") as tmp:
                np.savez(tmp, **arrays)
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    t_refine = time.perf_counter() - t1
    ctx.barrier()
    if ctx.is_main:
        _merge(partial, out, n_chunks, samples, args, config, refiner, manifest,
               {"setup_s": t_setup, "refine_s_rank0": t_refine, **refiner.engine.timings()}, STAT_FIELDS)
    ctx.barrier()
    return 0


def _merge(partial, out, n_chunks, samples, args, config, refiner, manifest, timings, stat_fields) -> None:
    chunks = []
    for i in range(n_chunks):
        with np.load(_chunk_path(partial, i)) as z:
            chunks.append({k: z[k] for k in z.files})
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    extras = {k: merged[k] for k in stat_fields}
    if args.save_float:
        extras["float_images"] = merged["float_images"]
    save_samples(out, merged["images"], merged["labels"], layout=samples.layout, **extras)
    from .. import __version__

    steps = merged["steps"]
    summary = {
        "n": int(len(steps)),
        "mean_steps": float(steps.mean()),
        "stopped_fraction": float(merged["stopped"].mean()),
        "unchanged_fraction": float((steps == 0).mean()),
        "mean_realness_init": float(merged["realness_init"].mean()),
        "mean_realness_final": float(merged["realness_final"].mean()),
    }
    write_json_atomic(
        str(out) + ".json",
        {
            "config": config.to_dict(),
            "tau": refiner.tau,
            "ell0": refiner.scalars.head.ell0,
            "engine": args.engine,
            "device": str(refiner.device),
            "checkpoint": str(Path(args.checkpoint).resolve()),
            "checkpoint_sha256": manifest["checkpoint_sha256"],
            "input": manifest["input"],
            "input_sha256": manifest["input_sha256"],
            "batch_size": args.batch_size,
            "ccfast_version": __version__,
            "timings": timings,
            "summary": summary,
        },
    )
    shutil.rmtree(partial)
    print(
        f"wrote {out} ({summary['n']} images; mean steps {summary['mean_steps']:.2f}; "
        f"early-stopped {100 * summary['stopped_fraction']:.1f}%; untouched "
        f"{100 * summary['unchanged_fraction']:.1f}%; "
        f"mean ℓ_fake {summary['mean_realness_init']:.4f} -> {summary['mean_realness_final']:.4f})",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        ctx = init_distributed(resolve_device(args.device).type)
        try:
            return refine_file(args, ctx)
        finally:
            shutdown_distributed(ctx)

    return run_main(PROG, body, interrupted="interrupted; finished chunks are kept and a rerun of the same command "
                                            "resumes from them")


if __name__ == "__main__":
    sys.exit(main())
