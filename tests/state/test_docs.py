"""The curl walkthrough in docs/state.md works as written, against a live `shoal serve state`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.testing import ServiceProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "state.md"
ADMIN = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"  # the address of the doc's example key


def walkthrough() -> str:
    text = DOC.read_text()
    section = text.split("## Walkthrough with curl", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_documented_curl_commands_work(tmp_path):
    script = walkthrough()
    assert "/peers/create" in script and "Bearer" in script
    with ServiceProcess("state", tmp_path / "data", ["--admin-address", ADMIN, "--no-fsync"]) as proc:
        script = script.replace("http://127.0.0.1:3004", proc.url)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        run = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert out.startswith('"healthy"')
    assert '"value":"192.168.100.11"' in out and '"ttl":600' in out
    assert '"instances":[{' in out and '"total":1' in out
    assert '"success":true,"instance_id"' in out and '"deleted_at"' in out
    assert '"code":"INVALID_CIDR"' in out  # the documented error example
    assert '"accounts":[{' in out and "bob@example.com" in out
