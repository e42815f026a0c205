"""pyproject.toml installs every package under ccfast/ and maps kernels/ to ccfast.kernels."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ccfast").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert cfg["package-dir"]["ccfast.kernels"] == "kernels" and "ccfast.kernels" in listed


def test_a_source_checkout_finds_ccfast_kernels_without_an_install():
    """`python -S` sees no site-packages, so no install maps kernels/: the checkout's own finder must (the suite's
    `python -m ccfast.refine --engine triton` children import ccfast from the repository root)."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ccfast.kernels, ccfast; "
            "print(ccfast.kernels.__file__); print(ccfast.__file__); print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    kernels_file, ccfast_file, triton_loaded = out.stdout.split()
    assert Path(kernels_file) == ROOT / "kernels" / "__init__.py"
    assert Path(ccfast_file) == ROOT / "ccfast" / "__init__.py" and triton_loaded == "False"


def test_ccfast_kernels_come_from_the_checkout_whose_ccfast_is_imported():
    """With site-packages on (an editable install of another checkout, e.g. the main one beside a git worktree,
    maps ccfast.kernels there), ccfast/ from this root must still get this root's kernels/."""
    import os
    import subprocess
    import sys

    code = "import ccfast.kernels, ccfast; print(ccfast.kernels.__file__); print(ccfast.__file__)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd="/")
    kernels_file, ccfast_file = out.stdout.split()
    assert Path(ccfast_file) == ROOT / "ccfast" / "__init__.py"
    assert Path(kernels_file) == ROOT / "kernels" / "__init__.py"
