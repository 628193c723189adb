"""The published OpenAPI documents are the contract (#24): schemathesis with `--checks all` over
every service, each started for real (`shoal serve`), with credentials where the service runs
with --auth-dir. The positive-data check must see no 400 for a schema-valid request; the only
exceptions are the allow-listed cases below, each one a rule of the spec that a JSON Schema
cannot state, with the reason beside it.

Kept to a few minutes on 2 cores: few examples per operation, a time cap per service.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from shoal.testing import ServiceProcess
from shoal.testing.fuzz import run_schemathesis
from shoal.testing.metadata import metadata_service
from shoal.web.auth import AuthDir

EXAMPLES = 5
SECONDS = 30


def contract(
    url: str, allow: list[dict[str, Any]], headers: list[str] = (), exclude: str | None = None
) -> subprocess.CompletedProcess:
    """schemathesis --checks all with the allow-list; asserts that no check failed."""
    result = run_schemathesis(
        url,
        checks="all",
        max_examples=EXAMPLES,
        max_time=SECONDS,
        headers=list(headers),
        exclude_path_regex=exclude,
        allow=allow,
    )
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
    selected = re.search(r"Selected: (\d+)/", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected and tested and int(tested.group(1)) == int(selected.group(1)), report
    return result


def admin_key(root: Path) -> tuple[Path, str]:
    """`shoal auth init` into a tmp dir: the auth dir and its first admin key."""
    auth = root / "auth"
    return auth, AuthDir(auth).init()


# every service: RFC 8259 JSON is UTF-8, and a lone surrogate ("\udc00") cannot be encoded in it
JSON_TEXT = [{"status": 400, "detail": "surrogates not allowed|not valid UTF-8"}]


# -- kv ---------------------------------------------------------------------------------------
KV_ALLOW = [
    *JSON_TEXT,
    # docs/kv.md: a key is at most 1024 bytes of UTF-8; maxLength counts characters
    {"status": 400, "detail": "at most 1024 bytes"},
]


def test_kv_contract(tmp_path: Path) -> None:
    auth, admin = admin_key(tmp_path)
    with ServiceProcess("kv", tmp_path / "kv", ["--store", "sqlite", "--auth-dir", str(auth)]) as kv:
        contract(kv.url, KV_ALLOW, [f"Authorization: Bearer {admin}"])


# -- state ------------------------------------------------------------------------------------
STATE_ALLOW = [
    *JSON_TEXT,
    # EIP-55: a mixed-case address must carry its checksum (a pattern cannot compute it)
    {"status": 400, "detail": "INVALID_ADDRESS"},
    # a CIDR names a network: its host bits are clear (10.0.0.0/8, not 10.0.0.1/8)
    {"status": 400, "detail": "has host bits set"},
    # an association joins two different CIDRs
    {"status": 400, "detail": "source_cidr and target_cidr must differ"},
    # references name existing documents (a schema cannot know which exist)
    {"status": 400, "detail": "UNKNOWN_REFERENCE"},
    # a node's available capacity is at most its total
    {"status": 400, "detail": "INVALID_CAPACITY"},
    # a DNS name is at most 253 characters once IDNA-encoded, labels at most 63
    {"status": 400, "detail": "INVALID_DOMAIN"},
    # a key decodes to 32 bytes (base64's last character carries padding bits) ...
    {"status": 400, "detail": "INVALID_PUBLIC_KEY"},
    # an Idempotency-Key names one request: reused with another body it is 422 (docs/state.md,
    # after the IETF Idempotency-Key draft); the fuzzer sends one key with many bodies
    {"status": 422, "detail": "IDEMPOTENCY_KEY_REUSED"},
    # the sign-in: a signature is checked, not shaped
    {"path": "^/auth/login$", "status": 400},
]


def test_state_contract(tmp_path: Path) -> None:
    from shoal.state.client import StateClient

    admin = Account.create()
    args = ["--admin-address", admin.address, "--no-fsync"]
    with ServiceProcess("state", tmp_path / "state", args) as state:

        async def login() -> str:
            async with StateClient(state.url, account=admin) as client:
                return (await client.login()).token

        token = asyncio.run(login())
        # /auth/logout would revoke the run's own token (its 401 without one: tests/state)
        contract(state.url, STATE_ALLOW, [f"Authorization: Bearer {token}"], exclude="^/auth/logout$")
        assert httpx.get(state.url + "/health").json() == "healthy"


# -- metadata and the dashboard -----------------------------------------------------------------
def test_metadata_contract(tmp_path: Path) -> None:
    auth, admin = admin_key(tmp_path)
    with metadata_service(tmp_path / "meta", "--auth-dir", str(auth)) as meta:
        # POST /nodes/register would make the service call fuzzed node URLs
        contract(meta.url, JSON_TEXT, [f"Authorization: Bearer {admin}"], exclude="^/nodes/register$")


def test_dashboard_contract(tmp_path: Path) -> None:
    with (
        metadata_service(tmp_path / "meta") as meta,
        ServiceProcess("dashboard", tmp_path / "dash", ["--metadata-url", meta.url]) as dash,
    ):
        contract(dash.url, JSON_TEXT)
