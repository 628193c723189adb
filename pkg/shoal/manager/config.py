"""The State Manager's configuration: its shape, its validation, and how it is kept on disk.

Validation collects every problem (field and message) so a 400 names all of them at once;
nothing is written unless the whole document is valid, and it is written atomically
(temp file, fsync, rename) so a crash never leaves half a config behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

STACKS = ("leaser", "db", "juicefs")
Stack = Literal["leaser", "db", "juicefs"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._/-]{0,200}$")
REDACTED = "***"


class Storage(msgspec.Struct, forbid_unknown_fields=True):
    """Where replicas, the lease and JuiceFS data live: one S3 bucket."""

    bucket: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    key_prefix: str = ""


class JuiceFSOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Mount options; paths default to places under the tmp directory."""

    mount_path: str | None = None
    cache_dir: str | None = None
    cache_size_mib: int = 1024
    mount_options: list[str] = []


class LeaseOptions(msgspec.Struct, forbid_unknown_fields=True):
    ttl_seconds: float = 15.0
    holder: str | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True):
    storage: Storage
    stacks: list[str]
    juicefs: JuiceFSOptions = msgspec.field(default_factory=JuiceFSOptions)
    lease: LeaseOptions = msgspec.field(default_factory=LeaseOptions)


class ConfigError(ValueError):
    """An invalid configuration; `problems` lists {"field", "message"} for each fault."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def _semantic_problems(cfg: Config) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        problems.append({"field": field, "message": message})

    s = cfg.storage
    if not _BUCKET.match(s.bucket) or ".." in s.bucket:
        bad("storage.bucket", "must be 3-63 lowercase letters, digits, '.' or '-'")
    parts = urlsplit(s.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        bad("storage.endpoint", "must be an http(s) URL with a host and no path, e.g. http://127.0.0.1:9000")
    else:
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            bad("storage.endpoint", "port is not a number in 1-65535")
    for name in ("access_key", "secret_key", "region"):
        value = getattr(s, name)
        if not value or len(value) > 256 or any(c.isspace() for c in value):
            bad(f"storage.{name}", "must be 1-256 characters without spaces")
    if not _PREFIX.match(s.key_prefix) or s.key_prefix.startswith("/") or ".." in s.key_prefix.split("/"):
        bad("storage.key_prefix", "letters, digits, '.', '_', '-', '/' only; no leading '/' or '..'")
    if not cfg.stacks:
        bad("stacks", f"must name at least one of {', '.join(STACKS)}")
    seen: set[str] = set()
    for i, stack in enumerate(cfg.stacks):
        if stack not in STACKS:
            bad(f"stacks[{i}]", f"unknown stack {stack!r}; known: {', '.join(STACKS)}")
        elif stack in seen:
            bad(f"stacks[{i}]", f"stack {stack!r} is repeated")
        seen.add(stack)
    j = cfg.juicefs
    for name in ("mount_path", "cache_dir"):
        value = getattr(j, name)
        if value is not None and (not value or "\0" in value or len(value) > 1024):
            bad(f"juicefs.{name}", "must be a non-empty path")
    if not 0 <= j.cache_size_mib <= 1 << 20:
        bad("juicefs.cache_size_mib", "must be between 0 and 1048576")
    for i, opt in enumerate(j.mount_options):
        if not re.match(r"^--[a-z][a-z0-9-]*(=[^\s]*)?$", opt) or opt.split("=")[0] in ("--background", "-d"):
            bad(f"juicefs.mount_options[{i}]", "must look like --name or --name=value")
    if not 2.0 <= cfg.lease.ttl_seconds <= 3600:
        bad("lease.ttl_seconds", "must be between 2 and 3600")
    holder = cfg.lease.holder
    if holder is not None and not re.match(r"^[A-Za-z0-9._:@-]{1,128}$", holder):
        bad("lease.holder", "1-128 letters, digits, '.', '_', ':', '@', '-'")
    return problems


def parse_config(data: Any) -> Config:
    """A validated Config from decoded JSON, or ConfigError naming every problem."""
    if not isinstance(data, dict):
        raise ConfigError([{"field": "", "message": "configuration must be a JSON object"}])
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        where = re.search(r"at `\$(.*?)`", str(exc))
        field = where.group(1).lstrip(".") if where else ""
        raise ConfigError([{"field": field, "message": str(exc).split(" - at ")[0]}]) from None
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def redacted(cfg: Config) -> dict[str, Any]:
    """The configuration as shown over HTTP: secrets replaced."""
    out = msgspec.to_builtins(cfg)
    out["storage"]["secret_key"] = REDACTED
    out["storage"]["access_key"] = cfg.storage.access_key[:4] + REDACTED
    return out


def save_config(path: Path, cfg: Config) -> None:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(cfg)))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_config(path: Path) -> Config | None:
    """The saved configuration; None when there is none; ConfigError/OSError when it is bad."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError([{"field": "", "message": f"not valid JSON: {exc}"}]) from None
    return parse_config(data)
