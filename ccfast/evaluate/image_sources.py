"""Image sets for evaluation: npz files (streamed), image folders, OpenAI reference batches.

Accepted layouts (SPEC §5; `ccfast.data` reads the same npz layouts for refinement, fully in memory):
- consistency-models samples: `.npz` with `arr_0` uint8 (N, H, W, 3) (and `arr_1` labels, unused here);
- image sets: `.npz` with `images` uint8 (N, H, W, 3);
- OpenAI reference batches (guided-diffusion `evaluations/`): `arr_0` images plus precomputed `mu`, `sigma`
  (and `mu_s`, `sigma_s` for sFID, unused), or `mu`/`sigma` alone (then FID only: no images for
  precision/recall); pytorch-fid's `.npz` statistics have the same `mu`/`sigma` keys;
- a folder of image files (png, jpg, jpeg, bmp, webp, tif, tiff; searched recursively, sorted by path).
Float arrays in [0, 1] are accepted and quantised with SPEC §4's rule, round(x * 255).
Arrays are read in batches straight from the npz member, so a 50k-sample file is never held twice.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CCFastError, require
from ..io_utils import file_fingerprint

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_KEYS = ("arr_0", "images")
LAYOUT_HELP = (
    "accepted: 'arr_0' (consistency-models samples / OpenAI reference batch), 'images', "
    "or precomputed 'mu' and 'sigma' (reference statistics), or a folder of image files"
)


@dataclass
class ImageSource:
    """N images of one size, readable in uint8 NHWC batches."""

    path: Path
    layout: str
    num_images: int
    height: int
    width: int
    _npz_key: str | None = None
    _dtype: np.dtype | None = None
    _files: list[Path] = field(default_factory=list)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self.layout == "folder":
            yield from self._iter_folder(batch_size)
        else:
            yield from self._iter_npz(batch_size)

    def _iter_npz(self, batch_size: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(self.path) as zf, zf.open(self._npz_key + ".npy") as member:
            shape, fortran, dtype = _read_npy_header(member, self.path, self._npz_key)
            if fortran:  # rare: numpy wrote a Fortran-ordered array; read it whole
                with np.load(self.path, allow_pickle=False) as npz:
                    whole = np.ascontiguousarray(npz[self._npz_key])
                for start in range(0, len(whole), batch_size):
                    yield _to_uint8(whole[start:start + batch_size], self.path, self._npz_key, start)
                return
            per_image = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                count = min(batch_size, shape[0] - start)
                raw = member.read(count * per_image)
                if len(raw) != count * per_image:
                    raise CCFastError(f"{self.path}: '{self._npz_key}' is truncated (image {start} onwards is missing)")
                batch = np.frombuffer(raw, dtype=dtype).reshape((count,) + tuple(shape[1:]))
                yield _to_uint8(batch, self.path, self._npz_key, start)

    def _iter_folder(self, batch_size: int) -> Iterator[np.ndarray]:
        image_module = require("PIL.Image", "fid", "reading an image folder")
        for start in range(0, len(self._files), batch_size):
            batch = []
            for file in self._files[start:start + batch_size]:
                with image_module.open(file) as im:
                    batch.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            yield np.stack(batch)

    def fingerprint(self) -> str:
        """sha256 of the bytes the images come from (the whole npz file; every file of a folder, by name)."""
        if self.layout != "folder":
            return file_fingerprint(self.path)
        h = hashlib.sha256()
        for file in self._files:
            h.update(str(file.relative_to(self.path)).encode() + b"\0" + file_fingerprint(file).encode())
        return h.hexdigest()


@dataclass
class EvalInput:
    """What a reference or sample path holds: images, precomputed statistics, or both."""

    path: Path
    layout: str  # "consistency-models", "images", "openai-reference", "stats", "folder"
    images: ImageSource | None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None


def open_eval_input(path: str | Path, role: str) -> EvalInput:
    """Inspect `path` (headers only, no pixel data) and say what it holds; `role` names it in errors."""
    path = Path(path)
    if not path.exists():
        raise CCFastError(f"{role} {path}: no such file or folder")
    if path.is_dir():
        return EvalInput(path=path, layout="folder", images=_open_folder(path, role))
    if not zipfile.is_zipfile(path):
        raise CCFastError(f"{role} {path}: not an .npz file or a folder of images ({LAYOUT_HELP})")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise CCFastError(f"{role} {path}: unreadable npz ({exc})") from exc
    image_key = next((k for k in IMAGE_KEYS if k in keys), None)
    has_stats = "mu" in keys and "sigma" in keys
    if image_key is None and not has_stats:
        raise CCFastError(f"{role} {path}: unknown layout, arrays {sorted(keys)}; {LAYOUT_HELP}")
    mu = sigma = None
    if has_stats:
        mu, sigma = _read_stats(path, role)
    images = _open_npz_images(path, image_key, role) if image_key else None
    if has_stats:
        layout = "openai-reference" if images is not None else "stats"
    else:
        layout = "consistency-models" if image_key == "arr_0" else "images"
    return EvalInput(path=path, layout=layout, images=images, mu=mu, sigma=sigma)


def _read_npy_header(member, path: Path, key: str):
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"npy format version {version} is not supported")
    except ValueError as exc:
        raise CCFastError(f"{path}: array '{key}' has an unreadable header ({exc})") from exc
    return shape, fortran, dtype


def _open_npz_images(path: Path, key: str, role: str) -> ImageSource:
    try:
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as member:
            shape, _, dtype = _read_npy_header(member, path, key)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CCFastError(f"{role} {path}: unreadable npz ({exc})") from exc
    where = f"{role} {path} ('{key}')"
    if dtype.hasobject:
        raise CCFastError(f"{where}: object arrays are not images")
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise CCFastError(f"{where}: images must be uint8 in [0, 255] or float in [0, 1], got dtype {dtype}")
    if len(shape) == 3:
        raise CCFastError(f"{where}: shape {shape} has no channel axis; images must be (N, H, W, 3) RGB")
    if len(shape) != 4:
        raise CCFastError(f"{where}: images must be (N, H, W, 3), got shape {shape}")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise CCFastError(f"{where}: shape {shape} looks channels-first (NCHW); sample files are NHWC (N, H, W, 3)")
        raise CCFastError(
            f"{where}: {shape[-1]} channels in shape {shape}; the Inception network needs RGB, (N, H, W, 3) "
            "(convert grayscale by repeating the channel, drop alpha)"
        )
    if shape[0] == 0:
        raise CCFastError(f"{where}: the file holds no images")
    return ImageSource(path=path, layout="npz", num_images=int(shape[0]), height=int(shape[1]), width=int(shape[2]),
                       _npz_key=key, _dtype=dtype)


def _to_uint8(batch: np.ndarray, path: Path, key: str, start: int) -> np.ndarray:
    if batch.dtype == np.uint8:
        return batch
    values = batch.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = start + int(np.flatnonzero(~finite.reshape(len(batch), -1).all(axis=1))[0])
        raise CCFastError(f"{path} ('{key}'): NaN or inf pixels (first in image {bad})")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        hint = ("they look like [-1, 1]: map them with (x + 1) / 2" if low >= -1.0 and high <= 1.0
                else "they look like [0, 255]: store them as uint8" if low >= 0.0 and high <= 255.0 else
                "rescale them to [0, 1]")
        raise CCFastError(
            f"{path} ('{key}'): float images must lie in [0, 1], images {start}..{start + len(batch) - 1} span "
            f"[{low:.4g}, {high:.4g}]; {hint}"
        )
    return np.round(values * 255.0).astype(np.uint8)  # SPEC §4 quantisation rule


def _read_stats(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            mu, sigma = np.asarray(npz["mu"], np.float64), np.asarray(npz["sigma"], np.float64)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CCFastError(f"{role} {path}: unreadable 'mu'/'sigma' ({exc})") from exc
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CCFastError(f"{role} {path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not a mean and covariance")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise CCFastError(f"{role} {path}: precomputed 'mu'/'sigma' contain NaN or inf")
    return mu, sigma


def _open_folder(path: Path, role: str) -> ImageSource:
    image_module = require("PIL.Image", "fid", "reading an image folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CCFastError(f"{role} {path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    sizes: Counter = Counter()
    modes: Counter = Counter()
    example: dict = {}
    for file in files:  # headers only: PIL reads pixel data lazily
        try:
            with image_module.open(file) as im:
                size, mode = (im.height, im.width), im.mode
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
            raise CCFastError(f"{role} {file}: not a readable image ({exc})") from exc
        sizes[size] += 1
        modes[mode] += 1
        example.setdefault(size, file)
        example.setdefault(mode, file)

    def listing(counter):
        return ", ".join(f"{n} x {k} (e.g. {example[k].name})" for k, n in counter.most_common())

    if len(sizes) > 1:
        raise CCFastError(
            f"{role} {path}: images of mixed sizes (height, width): {listing(sizes)}; FID needs one size per set, "
            "resize them beforehand with the method your baseline used"
        )
    if len(modes) > 1:
        raise CCFastError(
            f"{role} {path}: images of mixed channel layouts (PIL modes): {listing(modes)}; convert all to RGB"
        )
    mode = next(iter(modes))
    if mode != "RGB":
        raise CCFastError(f"{role} {path}: images are PIL mode {mode!r}, not RGB; convert them to 3-channel RGB")
    (height, width), = sizes
    return ImageSource(path=path, layout="folder", num_images=len(files), height=height, width=width, _files=files)
