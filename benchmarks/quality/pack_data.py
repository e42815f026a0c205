"""Move the suite's input files to a machine that only accepts uploads of a limited size, losslessly.

    python -m benchmarks.quality.pack_data pack --out PACKED --part-mb 60 \\
        shared/data/cifar10/*.npz=cifar10/ shared/data/models/resnet20-12fca82f.th=models/ default_1.pt=inception/
    # ... upload PACKED's files in groups of at most --part-mb, into one folder STAGE over there, then:
    python -m benchmarks.quality.pack_data unpack STAGE --out runs/data      # again after each upload

Image `.npz` files are rewritten as an uncompressed `.npz` of the same arrays and compressed with LZMA behind a
byte-delta filter of 3 (the previous pixel's same channel): 33% smaller than the shared data's deflate `.npz`,
which is what makes the four training shards fit two uploads. Other files travel as they are. Anything larger
than `--part-mb` is split. Each item has a small `NAME.manifest.json` (its destination, the sha256 of the
unpacked bytes and of the original file, its parts); `unpack` restores every item whose parts have all arrived,
verifies the sha256, writes atomically, and leaves the rest for a later call.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
from pathlib import Path

import numpy as np

from ccfast.cli import run_main
from ccfast.errors import CCFastError
from ccfast.io_utils import atomic_path, file_fingerprint

PROG = "python -m benchmarks.quality.pack_data"
NPZ_FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 3}, {"id": lzma.FILTER_LZMA2, "preset": 6}]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_uncompressed_bytes(path: Path) -> bytes:
    """The same arrays as `path`, as an uncompressed .npz (what `unpack` writes)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def pack_item(src: Path, dest_rel: str, out_dir: Path, part_bytes: int) -> dict:
    original = src.read_bytes()
    if src.suffix == ".npz":
        unpacked = npz_uncompressed_bytes(src)
        payload, codec = lzma.compress(unpacked, format=lzma.FORMAT_XZ, filters=NPZ_FILTERS), "npz-delta-xz"
    else:
        unpacked = payload = original
        codec = "raw"
    name = Path(dest_rel).name
    parts = []
    for i, start in enumerate(range(0, len(payload), part_bytes)):
        part = f"{name}.part{i:02d}"
        (out_dir / part).write_bytes(payload[start:start + part_bytes])
        parts.append(part)
    manifest = {"dest": dest_rel, "codec": codec, "parts": parts, "sha256": _sha256(unpacked),
                "original_sha256": _sha256(original), "original_bytes": len(original), "packed_bytes": len(payload)}
    (out_dir / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack_dir(stage: Path, out_dir: Path, log=print) -> tuple[list[str], list[str]]:
    """Restore every complete item of `stage` into `out_dir`; returns (restored or already there, still waiting)."""
    ready, waiting = [], []
    for mpath in sorted(stage.glob("*.manifest.json")):
        m = json.loads(mpath.read_text())
        dest = out_dir / m["dest"]
        if dest.exists() and file_fingerprint(dest) == m["sha256"]:
            ready.append(m["dest"])
            continue
        missing = [p for p in m["parts"] if not (stage / p).exists()]
        if missing:
            waiting.append(f"{m['dest']} (waiting for {', '.join(missing)})")
            continue
        payload = b"".join((stage / p).read_bytes() for p in m["parts"])
        data = lzma.decompress(payload, format=lzma.FORMAT_XZ) if m["codec"] == "npz-delta-xz" else payload
        if _sha256(data) != m["sha256"]:
            raise CCFastError(
                f"{m['dest']}: sha256 of the unpacked bytes does not match its manifest (a damaged part?)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest, suffix=dest.suffix) as tmp:
            Path(tmp).write_bytes(data)
        log(f"unpacked {m['dest']} ({len(data) / 1e6:.1f} MB, sha256 ok)")
        ready.append(m["dest"])
    return ready, waiting


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="compress and split files for upload")
    pk.add_argument("items", nargs="+", help="FILE=DEST_FOLDER/ (or FILE=DEST_PATH): what to pack and where it goes")
    pk.add_argument("--out", required=True, type=Path, help="folder for the parts and manifests")
    pk.add_argument("--part-mb", type=float, default=60.0, help="largest part in MB (default 60)")
    up = sub.add_parser("unpack", help="restore the items whose parts have all arrived")
    up.add_argument("stage", type=Path, help="folder holding the uploaded parts and manifests")
    up.add_argument("--out", required=True, type=Path, help="data folder to restore into (e.g. runs/data)")
    up.add_argument("--require", nargs="*", default=[], help="destinations that must be ready (exit 1 otherwise)")
    args = p.parse_args(argv)

    def body():
        if args.cmd == "pack":
            args.out.mkdir(parents=True, exist_ok=True)
            for item in args.items:
                src, _, dest = item.partition("=")
                src = Path(src)
                if not src.is_file():
                    raise CCFastError(f"{src}: no such file")
                dest = dest or src.name
                if dest.endswith("/"):
                    dest += src.name
                m = pack_item(src, dest, args.out, int(args.part_mb * 1e6))
                print(
                    f"{src} -> {', '.join(m['parts'])}: {m['original_bytes'] / 1e6:.1f} -> "
                    f"{m['packed_bytes'] / 1e6:.1f} MB"
                )
            return 0
        ready, waiting = unpack_dir(args.stage, args.out)
        for w in waiting:
            print(f"not yet: {w}")
        missing = [r for r in args.require if r not in ready]
        if missing:
            raise CCFastError(f"not ready: {', '.join(missing)}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
