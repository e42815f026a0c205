"""Argument checks shared by every command line, run before a command creates any file or does any work.

Each check raises `CCFastError` with one line naming the option or file and what to do; the CLIs turn it into
exit code 2 (`ccfast.cli.run_main`). The rules are the same in every command:

- numbers: finite (NaN and ±inf are refused unless a check says otherwise) and inside the option's range;
- inputs: exist and are files (or folders where a command reads folders);
- outputs: never one of the inputs (not even with --overwrite: replacing an input destroys it), never an
  existing directory where a file is written (or a file where a directory is), and an existing output only
  with --overwrite;
- results: non-finite numbers are never written as a successful output (`require_finite`), and JSON records
  are strict JSON (`json_safe`: non-finite floats become null).

No torch here: this module is imported by every CLI before anything heavy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import CCFastError

PathLike = str | os.PathLike


def number(value, option: str, *, above: float | None = None, at_least: float | None = None,
           at_most: float | None = None, below: float | None = None, hint: str = "") -> float:
    """A finite float within the given bounds (`above`/`below` strict, `at_least`/`at_most` inclusive);
    `hint` is appended to the error (e.g. the option's other accepted values)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CCFastError(f"{option} must be a number, got {value!r}") from None
    bounds = []
    if above is not None:
        bounds.append(f"> {above:g}")
    if at_least is not None:
        bounds.append(f">= {at_least:g}")
    if at_most is not None:
        bounds.append(f"<= {at_most:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    wanted = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
    ok = math.isfinite(x)
    ok = ok and (above is None or x > above) and (at_least is None or x >= at_least)
    ok = ok and (at_most is None or x <= at_most) and (below is None or x < below)
    if not ok:
        raise CCFastError(f"{option} must be {wanted}{hint}, got {value!r}")
    return x


def numbers(values: Sequence | None, option: str, count: int | None = None, **bounds) -> list[float] | None:
    """`number` for each of a list of values (None passes through), optionally of a fixed length."""
    if values is None:
        return None
    if count is not None and len(values) != count:
        raise CCFastError(f"{option} needs {count} values, got {len(values)}")
    return [number(v, option, **bounds) for v in values]


def integer(value, option: str, *, at_least: int | None = None, at_most: int | None = None) -> int:
    """An int within [at_least, at_most]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CCFastError(f"{option} must be an integer, got {value!r}")
    lo = "" if at_least is None else f">= {at_least}"
    hi = "" if at_most is None else f"<= {at_most}"
    if (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
        rng = f"in {at_least}..{at_most}" if lo and hi else (lo or hi)
        raise CCFastError(f"{option} must be an integer {rng}, got {value}")
    return int(value)


def input_path(path: PathLike, option: str, *, folder_ok: bool = False) -> Path:
    """An input that exists: a file (or, with `folder_ok`, a folder)."""
    p = Path(path)
    if not p.exists():
        raise CCFastError(f"{option} {p}: no such file{' or folder' if folder_ok else ''}")
    if p.is_dir() and not folder_ok:
        raise CCFastError(f"{option} {p} is a folder; give a file")
    return p


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def output_path(path: PathLike, option: str, *, inputs: Iterable[tuple[str, PathLike | None]] = (),
                overwrite: bool = False, suffix: str | None = None, directory: bool = False,
                sidecars: Sequence[str] = ()) -> Path:
    """Check an output before anything is written.

    inputs     (option, path) pairs of what the command reads; the output (and each sidecar, `path` + suffix,
               e.g. ".json") must be none of them, even with --overwrite.
    suffix     the extension the output must have (".npz", ".png", ...), or None.
    directory  the output is a run directory: an existing file there is refused; an existing directory is
               left to the command (it knows what a run directory holds).
    """
    out = Path(path)
    if str(path) == "":
        raise CCFastError(f"{option}: empty path")
    for name, inp in inputs:
        if inp is None:
            continue
        for target, what in ((out, ""), *((Path(str(out) + s), s) for s in sidecars)):
            if _same(target, Path(inp)):
                which = f"its companion file {target}" if what else "it"
                raise CCFastError(f"{option} {out}: {which} is also the input {name}, which writing would destroy "
                                  "(even with --overwrite); choose another output path")
    if suffix is not None and out.suffix.lower() != suffix:
        raise CCFastError(f"{option} {out}: the output must be a {suffix} file")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise CCFastError(f"{option} {out}: {parent} is a file, not a folder; choose another output path")
    if directory:
        if out.exists() and not out.is_dir():
            raise CCFastError(f"{option} {out} is an existing file, not a run directory; choose another {option}")
        return out
    if out.is_dir():
        raise CCFastError(f"{option} {out} is a folder; give a file name (the command writes one file)")
    if out.exists() and not overwrite:
        raise CCFastError(f"{option} {out} exists; pass --overwrite to replace it")
    for s in sidecars:
        side = Path(str(out) + s)
        if side.is_dir():
            raise CCFastError(f"{option} {out}: {side} is a folder, and the command writes a file there; move it away")
        if side.exists() and not overwrite:
            raise CCFastError(
                f"{option} {out}: its companion file {side} exists (from an earlier run); pass --overwrite "
                "to replace both"
            )
    return out


def require_finite(what: str, hint: str, **arrays) -> None:
    """Refuse to write results that hold NaN or inf: `what` names the result, `hint` says what to change."""
    for name, a in arrays.items():
        arr = np.asarray(a)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise CCFastError(f"{what}: {bad} non-finite value(s) (NaN or inf) in {name}; nothing was written. {hint}")


def json_safe(obj):
    """A copy of `obj` that is strict JSON: non-finite floats become None (null), tuples become lists."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def npz_intact(path: PathLike, option: str) -> None:
    """Every member of an .npz reads back with its CRC (one pass over the file), so that a corrupt input fails
    here, before minutes of work on the other inputs, and not half-way through. Folders and non-zip files pass:
    their own readers report them."""
    import zipfile

    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CCFastError(f"{option} {p}: corrupt zip archive ({exc}); copy the file again") from None
    if bad is not None:
        raise CCFastError(f"{option} {p}: corrupt zip archive (member {bad!r} fails its CRC check); "
                          "copy the file again")


def torch_file(path: PathLike, what: str) -> None:
    """A file that `torch.save` wrote starts as a zip archive (or, before torch 1.6, a pickle); anything else (a
    text file, an .npz given by mistake is a zip too and is left to the loader) gets a clear line, not torch's
    unpickling error. `what` says what the command expected there."""
    p = Path(path)
    if p.is_dir():
        raise CCFastError(f"{p} is a folder; give {what}")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise CCFastError(f"{p}: not a PyTorch file (it starts with {head!r}); give {what}")
