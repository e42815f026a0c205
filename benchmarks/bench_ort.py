"""`--engine ort` (and `--engine trt`) beside the reference engine: bench_refine.py with the ORT rows only.

    python benchmarks/bench_ort.py --out-dir OUT [--batches 1,16,256] [--steps 10] [--device cuda]

The ort and trt engines are contenders of bench_refine.py (`--methods ...,ort,trt`, one row per
`--ort-variant NAME:KEY=V,...`), measured there beside the plain-PyTorch recipe and the triton engine in the
same run; this command keeps the old command line and writes OUT/bench_ort.csv / .md. Its --methods map to:

    reference     the reference engine (fp32 eager, TF32 off)
    ort           --ort-variant fp32                      (defaults: CUDA graphs, TF32 off)
    ort-nograph   --ort-variant fp32-nograph:cuda_graph=0
    ort-tf32      --ort-variant fp32-tf32:tf32=1
    ort-fp16      --ort-variant fp16:dtype=fp16
    trt           the trt engine where a TensorRT runtime runs on this GPU (else a row saying why)
Any other name is passed to bench_refine's --methods as it is (e.g. compile-graph, the recipe every
x_vs_recipe is against). Use bench_refine.py directly for other ORT variants.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_refine  # noqa: E402

ORT_METHODS = {"ort": "fp32", "ort-nograph": "fp32-nograph:cuda_graph=0", "ort-tf32": "fp32-tf32:tf32=1",
               "ort-fp16": "fp16:dtype=fp16"}


def refine_argv(args: argparse.Namespace) -> list[str]:
    """bench_refine.py's command line for this command's arguments."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    variants = [ORT_METHODS[m] for m in methods if m in ORT_METHODS]
    others = [m for m in methods if m not in ORT_METHODS] + (["ort"] if variants else [])
    argv = ["--out", args.out_dir, "--report-name", "bench_ort", "--batches", args.batches, "--steps",
            str(args.steps), "--reps", str(args.reps), "--device", args.device, "--arch", args.arch, "--size",
            str(args.size), "--num-classes", str(args.classes), "--methods", ",".join(others), "--early-stop", "0"]
    for v in variants:
        argv += ["--ort-variant", v]
    return argv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="folder for bench_ort.csv / bench_ort.md")
    p.add_argument("--batches", default="1,16,256", help="batch sizes (default 1,16,256)")
    p.add_argument("--steps", type=int, default=10, help="T steps per refine call (default 10)")
    p.add_argument("--reps", type=int, default=8, help="timed calls per row, after two warm-up calls (default 8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50", help="backbone(s), comma list (default resnet50; tiny: smoke run)")
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--methods", default="reference,ort,ort-nograph,ort-tf32,ort-fp16,trt",
                   help="comma-separated subset of reference, ort, ort-nograph, ort-tf32, ort-fp16, trt")
    return bench_refine.main(refine_argv(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
