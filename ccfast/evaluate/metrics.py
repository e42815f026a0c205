"""Sample-quality metrics on Inception features: FID, precision/recall, Inception Score.

- FID (Heusel et al. 2017, Eq. 6): the Fréchet distance between Gaussians fitted to the two feature sets,
  d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}).
- Improved precision and recall (Kynkäänniemi et al. 2019, Eqs. 1–3): each set's manifold is the union of
  balls around its points with radius the distance to the k-th nearest neighbour (k = 3); precision is the
  fraction of samples inside the reference manifold, recall the fraction of references inside the sample
  manifold. Computed as the OpenAI evaluator does (guided-diffusion `evaluations/evaluator.py`).
- Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), averaged over splits of 5,000 samples.
Feature matrices are (N, D) with rows as samples; statistics are computed in float64.
"""

from __future__ import annotations

import numpy as np

from ..errors import CCFastError

PR_NEIGHBOURS = 3  # k of Kynkäänniemi et al. and of the OpenAI evaluator
IS_SPLIT_SIZE = 5000  # the OpenAI evaluator's split: 50k samples -> 10 splits, as in improved-gan
STANDARD_NUM_SAMPLES = 50_000


def check_features(features: np.ndarray, where: str) -> np.ndarray:
    """(N, D) finite features, else a message that says what is wrong."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise CCFastError(f"{where}: features must be (N, D), got shape {features.shape}")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise CCFastError(f"{where}: {len(bad)} feature rows contain NaN or inf (first: row {int(bad[0])})")
    return features


def sample_size_warning(num_samples: int, dim: int, what: str) -> str | None:
    """A message when a set is too small for a full-rank covariance (N ≤ D gives rank ≤ N − 1 < D)."""
    if num_samples > dim:
        return None
    return (
        f"{what}: {num_samples} images for {dim} feature dimensions, so the covariance estimate is singular (rank <= "
        f"{num_samples - 1}) and FID is strongly biased (upwards for equal distributions); use more than {dim} "
        f"images, and {STANDARD_NUM_SAMPLES:,} to compare with published FIDs"
    )


def gaussian_statistics(features: np.ndarray, where: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (np.cov, ddof=1, as TTUR, pytorch-fid and the OpenAI evaluator)."""
    features = check_features(features, where)
    if features.shape[0] < 2:
        raise CCFastError(f"{where}: need at least 2 images for a covariance, got {features.shape[0]}")
    x = features.astype(np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues (round-off) become 0."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def covariance_factor(features: np.ndarray) -> np.ndarray:
    """F (D, N) with F Fᵀ = np.cov(features): the centred features scaled by 1/√(N−1)."""
    x = np.asarray(features, np.float64)
    return (x - x.mean(axis=0)).T / np.sqrt(len(x) - 1)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None = None) -> float:
    """tr((Σ₁Σ₂)^{1/2}) from the eigenvalues of a symmetric PSD matrix similar to Σ₁Σ₂.

    For any factor Σ₁ = R Rᵀ (R of shape D×r), the non-zero eigenvalues of Σ₁Σ₂ = R Rᵀ Σ₂ are those of
    M = Rᵀ Σ₂ R (r×r), which is symmetric PSD, so tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(M). R is, in order of preference:
    `factor1` (the centred features, r = N, when a set has fewer samples than dimensions: cheap and exact),
    the Cholesky factor of Σ₁ or of Σ₂ (the roles are symmetric, tr √(Σ₁Σ₂) = tr √(Σ₂Σ₁)), or for two
    singular covariances the symmetric square root of Σ₁ from an eigendecomposition. Unlike scipy's `sqrtm`
    of the non-symmetric product (TTUR, pytorch-fid), this never needs an ε·I offset or drops an imaginary part.
    """
    if factor1 is None:
        for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
            try:
                factor1, sigma2 = np.linalg.cholesky(first), second
                break
            except np.linalg.LinAlgError:
                continue
        else:
            factor1 = _psd_sqrt(sigma1)
    middle = factor1.T @ sigma2 @ factor1
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CCFastError(f"{where}: mean {mu.shape} and covariance {sigma.shape} do not match")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise CCFastError(f"{where}: mean or covariance contains NaN or inf")
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise CCFastError(f"{where}: the covariance is not symmetric")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, factor1: np.ndarray | None = None) -> float:
    """FID between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017, Eq. 6), in float64.

    `factor1`, optional, is any F with F Fᵀ = Σ₁ (see `covariance_factor`). Round-off can make the FID of
    identical statistics a tiny negative number; it is returned as 0.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first set")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second set")
    if mu1.shape != mu2.shape:
        raise CCFastError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    tr_sqrt = trace_sqrt_product(sigma1, sigma2, factor1)
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt), 0.0)


def fid_to_reference(features: np.ndarray, mu_ref, sigma_ref, where: str = "samples") -> float:
    """FID of a feature set against reference statistics; uses the low-rank factor when N ≤ D."""
    mu, sigma = gaussian_statistics(features, where)
    factor = covariance_factor(features) if len(features) <= features.shape[1] else None
    return frechet_distance(mu, sigma, mu_ref, sigma_ref, factor1=factor)


# --------------------------------------------------------------------------------------------------
# Improved precision and recall (Kynkäänniemi et al. 2019)


def _squared_distances(a, b):
    """Pairwise squared Euclidean distances, ‖a‖² − 2ab + ‖b‖² clamped at 0 (the evaluator's formula)."""
    return (a.square().sum(1)[:, None] - 2.0 * (a @ b.T) + b.square().sum(1)[None, :]).clamp_min_(0.0)


def manifold_radii(features, k: int = PR_NEIGHBOURS, block: int = 4096):
    """Squared distance of every row to its k-th nearest neighbour in the same set (itself excluded).

    The evaluator takes index k of the partitioned distance row, whose index 0 is the point itself.
    """
    import torch

    n = features.shape[0]
    if n <= k:
        raise CCFastError(f"precision/recall need more than k={k} images per set, got {n}")
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for start in range(0, n, block):
        d = _squared_distances(features[start:start + block], features)
        radii[start:start + block] = torch.kthvalue(d, k + 1, dim=1).values
    return radii


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURS,
                     device: str = "cpu", block: int = 4096) -> tuple[float, float]:
    """(precision, recall) of `samples` against `reference` features, k-NN manifolds, squared L2, `<=` tests.

    Distances are computed in float32 on `device`. (The OpenAI evaluator first tries float16 distances and
    falls back to float32; float32 throughout differs from it only for points within float16 rounding of a
    ball's surface.)
    """
    import torch

    reference = check_features(reference, "reference features")
    samples = check_features(samples, "sample features")
    if reference.shape[1] != samples.shape[1]:
        raise CCFastError(f"feature dimensions differ: {reference.shape[1]} vs {samples.shape[1]}")
    ref = torch.as_tensor(np.ascontiguousarray(reference, dtype=np.float32), device=device)
    smp = torch.as_tensor(np.ascontiguousarray(samples, dtype=np.float32), device=device)
    ref_radii = manifold_radii(ref, k, block)
    smp_radii = manifold_radii(smp, k, block)
    sample_in_ref = torch.zeros(smp.shape[0], dtype=torch.bool, device=device)
    ref_in_samples = torch.zeros(ref.shape[0], dtype=torch.bool, device=device)
    for r0 in range(0, ref.shape[0], block):
        for s0 in range(0, smp.shape[0], block):
            d = _squared_distances(ref[r0:r0 + block], smp[s0:s0 + block])  # (refs, samples)
            sample_in_ref[s0:s0 + block] |= (d <= ref_radii[r0:r0 + block, None]).any(0)
            ref_in_samples[r0:r0 + block] |= (d <= smp_radii[None, s0:s0 + block]).any(1)
    return float(sample_in_ref.double().mean()), float(ref_in_samples.double().mean())


# --------------------------------------------------------------------------------------------------
# Inception Score (Salimans et al. 2016)


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) ‖ p(y))) with p(y) the split's mean prediction.

    Splits of `split_size` consecutive samples, the last one possibly shorter, as the OpenAI evaluator.
    """
    logits = check_features(logits, "logits").astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for start in range(0, len(p), split_size):
        part, log_part = p[start:start + split_size], log_p[start:start + split_size]
        # A class no sample of the split predicts has marginal 0 and only terms 0 · log 0 = 0: the floor at
        # the smallest normal float keeps those terms 0 instead of NaN and changes nothing else.
        log_marginal = np.log(np.maximum(part.mean(axis=0, keepdims=True), np.finfo(np.float64).tiny))
        kl = (part * (log_part - log_marginal)).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))
