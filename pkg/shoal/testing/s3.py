"""A real S3-compatible server on 127.0.0.1 for tests: moto's server (PyPI `moto[server]`).

Why moto rather than SeaweedFS: it is one process on one port that starts in about a second,
works with litestream 0.5 and JuiceFS 1.4 (both checked), answers conditional PUTs
(If-None-Match: * / If-Match: <etag> -> 412) that shoal's lease relies on, and never reaches
outside the machine. SeaweedFS (`weed mini`) opens half a dozen ports and, unless told
otherwise, reports telemetry to the internet. moto keeps objects in memory: state lives as
long as the server, which is what a test session wants.

    server = S3Server().start(tmp_path)
    server.create_bucket("my-bucket")
    server.endpoint, server.access_key, server.secret_key, server.region
    server.client()   # a boto3 client for assertions
    server.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from shoal.testing import free_port, stop_group


class S3Server:
    """moto's S3 server in a subprocess, stopped by PID."""

    access_key = "shoal-test-key"
    secret_key = "shoal-test-secret"
    region = "us-east-1"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, tmpdir: str | Path, timeout: float = 30.0) -> S3Server:
        """Start the server (logs in tmpdir/s3-<port>.log) and wait until it answers."""
        tmp = Path(tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / f"s3-{self.port}.log"
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"S3 server exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.endpoint + "/moto-api/", timeout=1.0)
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"S3 server did not answer within {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> str:
        """Create `name` (S3 naming rules apply: 3-63 lowercase letters, digits, '-', '.')."""
        self.client().create_bucket(Bucket=name)
        return name

    def storage_config(self, bucket: str, key_prefix: str = "") -> dict[str, str]:
        """The `storage` section of a State Manager configuration for this server."""
        return {
            "bucket": bucket,
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "key_prefix": key_prefix,
        }

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc:
            stop_group(self.proc, timeout, kill_wait=5)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
