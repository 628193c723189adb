"""Packaging: the wheel carries compiled modules; without a compiler it still installs and runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    """The source tree as a fresh clone would have it (no in-place build products)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _wheel(tmp_path: Path, **env: str) -> Path:
    out = tmp_path / "wheels"
    src = _source_copy(tmp_path / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
        timeout=900,
    )
    (wheel,) = out.glob("shoal-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_contains_compiled_modules(tmp_path):
    names = zipfile.ZipFile(_wheel(tmp_path)).namelist()
    compiled = {
        Path(n).name.split(".")[0] for n in names if n.startswith("shoal/_ext/") and n.endswith(".so")
    }
    sources = {p.stem for p in (ROOT / "ext").glob("*.pyx")}
    assert sources and compiled == sources
    assert "shoal/_pure/scoring.py" in names and "shoal/web/app.py" in names


@pytest.mark.parametrize(
    "env", [{"SHOAL_NO_EXTENSIONS": "1"}, {"CC": "/bin/false"}], ids=["no-ext", "no-compiler"]
)
def test_pure_python_wheel_works(tmp_path, env):
    wheel = _wheel(tmp_path, **env)
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import shoal._native as n, shoal.web; "
        "s = n.load('scoring').NodeScores(); s.record_ping('a', 0.01); "
        "print(n.implementation('scoring'), s.rank())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pure-python", "['a']"]
