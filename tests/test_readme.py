"""The README's examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_kv_example_runs():
    text = README.read_text()
    section = text[text.index("## The key-value library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "lost the race: expected 1 found 2",
        "['/nodes/a', '/nodes/b']",
        "Deleted /workloads/api",
    ]
