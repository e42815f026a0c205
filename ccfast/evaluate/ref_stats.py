"""Reference statistics for FID and precision/recall, computed once and cached.

A reference is scored against many sample files, so its features (needed for precision/recall) and Gaussian
statistics (for FID) are cached in an npz named after the reference and keyed by
sha256(reference bytes, network file sha1, preprocessing id, cache version): a different file, network or
pipeline can never hit a stale entry. OpenAI reference batches carry precomputed `mu`/`sigma`; by default
those are used for FID, as the OpenAI evaluator does, and the images only for precision/recall.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CCFastError
from ..io_utils import atomic_path
from .image_sources import EvalInput
from .inception import FEATURE_DIM, PREPROCESS_ID, FeatureNetwork, extract_features
from .metrics import gaussian_statistics, sample_size_warning

CACHE_VERSION = 1


@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None  # (N, 2048) float32, None for a statistics-only reference
    num_images: int | None
    stats_source: str  # "precomputed" (mu/sigma stored in the file) or "images" (from the features)
    cache_file: Path | None = None
    from_cache: bool = False
    feature_seconds: float = 0.0
    biased: bool = False  # FID statistics from fewer images than feature dimensions
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "num_images": self.num_images,
            "fid_statistics": self.stats_source,
            "cache_file": str(self.cache_file) if self.cache_file else None,
            "from_cache": self.from_cache,
            "biased": self.biased,
            "feature_seconds": round(self.feature_seconds, 3),
            "warnings": list(self.warnings),
        }


def default_cache_dir() -> Path:
    """$CCFAST_CACHE_DIR, else $XDG_CACHE_HOME/ccfast/fid-reference, else ~/.cache/ccfast/fid-reference."""
    if os.environ.get("CCFAST_CACHE_DIR"):
        return Path(os.environ["CCFAST_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ccfast" / "fid-reference"


def cache_key(reference_sha256: str, network: FeatureNetwork) -> str:
    import hashlib

    settings = {"cache_version": CACHE_VERSION, "reference_sha256": reference_sha256,
                "network_sha1": network.sha1, "preprocess": PREPROCESS_ID}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _check_precomputed(ev: EvalInput) -> None:
    if ev.mu.shape[0] != FEATURE_DIM:
        raise CCFastError(
            f"reference {ev.path}: precomputed 'mu' has {ev.mu.shape[0]} dimensions, expected the {FEATURE_DIM} "
            "pool3 features of the FID Inception"
        )


def _load_cache(file: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(file, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            features, mu, sigma = npz["features"], npz["mu"], npz["sigma"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        print(f"warning: unreadable reference cache {file}; recomputing", file=sys.stderr)
        return None
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM or mu.shape != (FEATURE_DIM,):
        print(f"warning: malformed reference cache {file}; recomputing", file=sys.stderr)
        return None
    return features, mu, sigma


def _save_cache(file: Path, key: str, features: np.ndarray, mu: np.ndarray, sigma: np.ndarray, meta: dict) -> None:
    with atomic_path(file) as tmp, open(tmp, "wb") as fh:  # a file handle: np.savez would append ".npz" to a path
        np.savez(fh, key=np.array(key), features=features, mu=mu, sigma=sigma, meta=np.array(json.dumps(meta)))


def reference_statistics(
    ev: EvalInput,
    network: FeatureNetwork,
    cache_dir: Path | None,
    use_precomputed: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> ReferenceStats:
    """Features and FID statistics of the reference; `cache_dir=None` disables the cache."""
    if ev.images is None:  # statistics only: FID, no precision/recall
        _check_precomputed(ev)
        return ReferenceStats(
            mu=ev.mu, sigma=ev.sigma, features=None, num_images=None, stats_source="precomputed",
            warnings=[f"reference {ev.path.name} holds only mu/sigma: precision/recall need reference images"],
        )

    source = ev.images
    cached = None
    cache_file = key = None
    if cache_dir is not None:
        key = cache_key(source.fingerprint(), network)
        cache_file = Path(cache_dir) / f"{ev.path.stem or 'reference'}-{key[:20]}.npz"
        if cache_file.is_file():
            cached = _load_cache(cache_file, key)
    seconds = 0.0
    if cached is not None:
        features, mu, sigma = cached
    else:
        result = extract_features(source.iter_batches(batch_size), source.num_images, network, progress,
                                  desc=f"reference {ev.path.name}")
        features, seconds = result.pool, result.seconds
        mu, sigma = gaussian_statistics(features, f"reference {ev.path.name}")
        if cache_file is not None:
            meta = {"reference": str(ev.path), "num_images": len(features), "network": network.describe()}
            _save_cache(cache_file, key, features, mu, sigma, meta)

    stats = ReferenceStats(mu=mu, sigma=sigma, features=features, num_images=len(features),
                           stats_source="images", cache_file=cache_file, from_cache=cached is not None,
                           feature_seconds=seconds)
    if use_precomputed and ev.mu is not None:
        _check_precomputed(ev)
        stats.mu, stats.sigma, stats.stats_source = ev.mu, ev.sigma, "precomputed"
    else:
        warning = sample_size_warning(len(features), FEATURE_DIM, f"reference {ev.path.name}")
        if warning:
            stats.warnings.append(warning)
            stats.biased = True
    return stats
