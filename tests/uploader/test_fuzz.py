"""schemathesis against the uploader's own /openapi.json: no input makes it answer 5xx."""

from __future__ import annotations

from shoal.testing import ServiceProcess
from shoal.testing.fuzz import run_schemathesis


def test_no_server_errors(uploader: ServiceProcess) -> None:
    result = run_schemathesis(uploader.url, max_examples=25, max_time=40)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    assert "3 selected" in result.stdout or "3 total" in result.stdout, result.stdout[:1500]
