"""One place that turns the storage configuration into S3 clients and tool settings."""

from __future__ import annotations

import os
from typing import Any

from shoal.manager.config import Storage


def client(storage: Storage, timeout: float = 10.0, attempts: int = 3) -> Any:
    """A boto3 S3 client (path-style, short timeouts: the manager must never hang on S3).
    `timeout` bounds the connect and each read; `attempts` counts the first try."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=storage.endpoint,
        aws_access_key_id=storage.access_key,
        aws_secret_access_key=storage.secret_key,
        region_name=storage.region,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=min(timeout, 5.0),
            read_timeout=timeout,
            retries={"total_max_attempts": attempts, "mode": "standard"},
        ),
    )


def key(storage: Storage, *parts: str) -> str:
    """An object key under the configured key prefix."""
    prefix = storage.key_prefix.strip("/")
    return "/".join(p for p in (prefix, *parts) if p)


def tool_env(storage: Storage) -> dict[str, str]:
    """Environment for litestream/juicefs: credentials in, AWS_CA_BUNDLE out (it breaks plain http)."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(
        AWS_ACCESS_KEY_ID=storage.access_key,
        AWS_SECRET_ACCESS_KEY=storage.secret_key,
        AWS_REGION=storage.region,
    )
    return env


def find_tool(name: str, package: str) -> str:
    """A tool's path: on PATH, or beside this Python (a venv's bin/ when PATH lacks it)."""
    import shutil
    import sys
    from pathlib import Path

    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"{name} not found (pip install {package})")
    return found
