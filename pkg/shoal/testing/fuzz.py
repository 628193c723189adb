"""Fuzz a running service from its own /openapi.json with schemathesis (the real CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def run_schemathesis(
    base_url: str,
    *,
    max_examples: int = 25,
    max_time: int = 45,
    checks: str = "not_a_server_error",
    exclude_path_regex: str | None = None,
    headers: Sequence[str] = (),
    phases: str = "examples,coverage,fuzzing",
    seed: int = 1,
    workers: int = 1,
    allow: Sequence[dict] | None = None,
    exclude_checks: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Run `schemathesis run` against base_url; returncode 0 means no check failed.

    `allow`: run the positive- and negative-data checks from shoal.testing.contract_hooks with
    this allow-list (see there) instead of schemathesis' own two."""
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        checks,
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_time),
        "--phases",
        phases,
        "--seed",
        str(seed),
        "--request-timeout",
        "10",
        "--workers",
        str(workers),
        "--no-color",
        "--warnings",
        "off",
    ]
    if exclude_path_regex:
        cmd += ["--exclude-path-regex", exclude_path_regex]
    for h in headers:
        cmd += ["-H", h]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    excluded = list(exclude_checks)
    if allow is not None:
        env["SCHEMATHESIS_HOOKS"] = "shoal.testing.contract_hooks"
        env["SHOAL_CONTRACT_ALLOW"] = json.dumps(list(allow))
        excluded += ["positive_data_acceptance", "negative_data_rejection"]
    if excluded:
        cmd += ["--exclude-checks", ",".join(excluded)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max_time + 120)
