"""python -m ccfast.export: write the refinement step graph (ONNX) of a checkpoint, and build TensorRT plans.

The graph is one full refinement step of SPEC §4 made only of standard ONNX operators: forward with
BatchNorm folded, the input gradient written out as a vector–Jacobian product, the objective head, early
stopping and the projected L2 step. Every configuration (objective, realness, α, ε, τ, ℓ0, weights) is a
run-time input, so one graph and one plan serve them all. See docs/export.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .cli import run_main
from .errors import CCFastError
from .validation import input_path, integer, output_path

PROG = "python -m ccfast.export"

EPILOG = """\
examples:
  # the step graph (fp32, dynamic batch), checked by ONNX Runtime against the PyTorch reference
  python -m ccfast.export --checkpoint joint.pt --onnx step.onnx --verify
  # half-precision network (head and step stay fp32) and a TensorRT plan with profiles for 1, 16, 256 images
  python -m ccfast.export --checkpoint joint.pt --onnx step16.onnx --dtype fp16 --trt step16.plan \\
      --batch-buckets 1,16,256
  # the graph as first written (every convolution's input gradient a ConvTranspose), to measure against
  python -m ccfast.export --checkpoint joint.pt --onnx step-ct.onnx --dgrad conv_transpose
  # a plan from an existing graph, for TensorRT-RTX on an RTX 4090 (sm_89), built on any machine
  python -m ccfast.export --onnx step.onnx --trt step.plan --trt-runtime tensorrt_rtx --trt-compute-capability SM89
  # then refine with it
  python -m ccfast.refine --checkpoint joint.pt --input s.npz --output r.npz --engine trt --engine-option plan=step.plan
  python -m ccfast.refine --checkpoint joint.pt --input s.npz --output r.npz --engine ort --engine-option onnx=step.onnx

graph inputs:  x, x0 (B,3,H,W) float32; labels (B,) int32; active (B,) bool;
               params (10,) float32 = alpha, eps, tau, ell0, c_ce, c_sq, c_fake, c_lse, c_zc, r_logit
               (eps = +inf: no projection; tau = +inf: no early stop; see docs/export.md)
graph outputs: x_next (B,3,H,W) float32; active_next (B,) bool; objective, realness (B,) float32
"""


def build_parser() -> argparse.ArgumentParser:
    from .onnx_export.build import GraphLayout
    from .onnx_export.layers import ConvBN

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("step graph")
    g.add_argument("--checkpoint", help="ccfast inference checkpoint (needed to write --onnx)")
    g.add_argument("--onnx", help="the step graph: written from --checkpoint, or read when only --trt is asked for")
    g.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"),
                   help="precision of the network inside the graph (head and step are always fp32; default fp32)")
    g.add_argument("--dgrad", default=GraphLayout().dgrad, choices=ConvBN.DGRADS,
                   help="input gradient of each stride-1 convolution: conv (a Conv on flipped, transposed weights; "
                   "faster kernels under ONNX Runtime's CUDA provider) or conv_transpose (as strided ones always are); "
                   f"default {GraphLayout().dgrad}")
    g.add_argument("--verify", action="store_true",
                   help="run the graph with ONNX Runtime (CPU) on random images and compare with the PyTorch reference")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    t = p.add_argument_group("TensorRT plan")
    t.add_argument(
        "--trt", metavar="PLAN", help="also build a TensorRT plan from the graph (writes PLAN and PLAN.json)"
    )
    t.add_argument(
        "--batch-buckets",
        default="1,16,256",
        help="batch sizes with an optimisation profile each; larger batches are split, smaller ones padded "
        "(default 1,16,256)",
    )
    t.add_argument(
        "--trt-runtime",
        default="auto",
        choices=("auto", "tensorrt", "tensorrt_rtx"),
        help="full TensorRT (>= 10, any data-centre GPU) or TensorRT for RTX (sm 7.5-8.9, 12.x); "
        "auto prefers full TensorRT",
    )
    t.add_argument(
        "--trt-opt-level", type=int, default=3, help="builder optimisation level 0-5 (default 3; lower builds faster)"
    )
    t.add_argument("--timing-cache", help="timing cache file, read if present and written back (speeds up rebuilds)")
    t.add_argument(
        "--trt-compute-capability",
        help="TensorRT-RTX targets, comma-separated (e.g. SM86,SM89; default: the library's choice)",
    )
    t.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 in fp32 layers (faster on Ampere and later, ~1e-3 relative error)",
    )
    t.add_argument("--workspace-mib", type=int, help="limit the builder's workspace (MiB)")
    p.add_argument("--verbose", action="store_true", help="log TensorRT's informational messages too")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def check_arguments(args) -> None:
    """Every option and output checked before the graph or the plan is written (issue #14)."""
    if not args.onnx and not args.trt:
        raise CCFastError("nothing to do: pass --onnx OUT.onnx (with --checkpoint) and/or --trt OUT.plan")
    if args.checkpoint and not args.onnx:
        args.onnx = str(Path(args.trt).with_suffix(".onnx"))
    if not args.checkpoint and args.verify:
        raise CCFastError("--verify needs --checkpoint (the reference to compare with)")
    inputs = [("--checkpoint", args.checkpoint)]
    if args.checkpoint:
        output_path(args.onnx, "--onnx", inputs=inputs, overwrite=args.overwrite)
    elif not Path(args.onnx).exists():
        raise CCFastError(f"{args.onnx}: no such ONNX file; pass --checkpoint to write it")
    else:
        input_path(args.onnx, "--onnx")
    if args.trt:
        from .batch_buckets import parse_buckets

        try:
            parse_buckets(args.batch_buckets)
        except CCFastError as exc:
            raise CCFastError(f"--batch-buckets: {exc}") from None
        integer(args.trt_opt_level, "--trt-opt-level", at_least=0, at_most=5)
        if args.workspace_mib is not None:
            integer(args.workspace_mib, "--workspace-mib", at_least=1)
        output_path(args.trt, "--trt", inputs=[*inputs, ("--onnx", args.onnx), ("--timing-cache", args.timing_cache)],
                    overwrite=args.overwrite, sidecars=(".json",))
        if args.timing_cache:
            output_path(args.timing_cache, "--timing-cache", inputs=[*inputs, ("--onnx", args.onnx)], overwrite=True)


def write_graph(args) -> Path:
    from .checkpoint import load_checkpoint
    from .onnx_export.build import GraphLayout, export_step_graph

    onnx_path = Path(args.onnx)
    model, info = load_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    _say(
        args,
        f"exporting the step graph of {info.arch} ({info.image_size[0]}×{info.image_size[1]}, {info.num_classes} "
        f"classes, {args.dtype}, dgrad {args.dgrad}) ...",
    )
    meta = export_step_graph(model, info.image_size, onnx_path, args.dtype,
                             {"arch": info.arch, "checkpoint": str(Path(args.checkpoint).resolve()),
                              "batch_buckets": args.batch_buckets}, GraphLayout(dgrad=args.dgrad))
    _say(args, f"wrote {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s; "
               f"weights {meta['weights_sha256'][:12]})")
    if args.verify:
        from .onnx_export.verify import verify_graph

        report = verify_graph(onnx_path, model, info)
        _say(args, report.summary())
        if not report.ok:
            raise CCFastError(f"{onnx_path} does not match the PyTorch reference: {report.summary()}")
    return onnx_path


def body(args) -> int:
    logging.basicConfig(level=logging.ERROR if args.quiet else (logging.INFO if args.verbose else logging.WARNING),
                        format="%(name)s: %(message)s")
    check_arguments(args)
    onnx_path = write_graph(args) if args.checkpoint else Path(args.onnx)
    if args.trt:
        from .batch_buckets import parse_buckets
        from .onnx_export.tensorrt_build import build_plan

        plan = Path(args.trt)
        buckets = parse_buckets(args.batch_buckets)
        ccs = [c.strip() for c in args.trt_compute_capability.split(",")] if args.trt_compute_capability else None
        _say(args, f"building a TensorRT plan from {onnx_path} (profiles for batch {buckets}; can take minutes) ...")
        side = build_plan(onnx_path, plan, buckets, runtime=args.trt_runtime, opt_level=args.trt_opt_level,
                          timing_cache=args.timing_cache, compute_capabilities=ccs, tf32=args.tf32,
                          workspace_mib=args.workspace_mib, verbose=args.verbose)
        io = "; ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in side["io"])
        _say(args, f"wrote {plan} ({side['plan_bytes'] / 2**20:.1f} MiB, {side['runtime']} {side['runtime_version']}, "
                   f"{side['build_seconds']:.1f} s) and {plan}.json\n  I/O: {io}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
