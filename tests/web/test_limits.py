"""Connection limits per client IP (a real `shoal serve kv` and raw sockets) and the upload quota's
durable count (a real shoal.kv SQLite file, reopened as a restart would)."""

from __future__ import annotations

import argparse
import json
import socket
import time

import httpx
import pytest

from shoal.kv import SqliteStore
from shoal.testing import ServiceProcess
from shoal.web.auth import add_auth_arguments, check_startup
from shoal.web.auth.limits import ConnectionLimiter, UploadQuota, parse_quota
from shoal.web.auth.middleware import DEFAULT_MAX_CONNS_PER_IP, AuthSettings
from shoal.web.errors import ApiError


def hold_request(port: int) -> tuple[socket.socket, bytes]:
    """A PUT whose body never finishes arriving: in flight until we send the rest."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"value": "held"}).encode()
    s.sendall(
        b"PUT /v1/kv/held HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:3]
    )
    return s, body[3:]


def finish(held: tuple[socket.socket, bytes]) -> bytes:
    s, rest = held
    s.sendall(rest)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    return data


def test_requests_in_flight_per_ip_over_the_limit_are_429(tmp_path):
    svc = ServiceProcess("kv", tmp_path / "kv", ["--workers", "1", "--max-conns-per-ip", "2"])
    with svc:
        held = [hold_request(svc.port), hold_request(svc.port)]
        try:
            deadline = time.monotonic() + 10  # both have reached the app (the server parsed them)
            while True:
                r = httpx.get(f"{svc.url}/v1/kv/x", timeout=5)
                if r.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1"
            assert set(r.json()) == {"detail"} and "in flight" in r.json()["detail"]
            assert httpx.get(f"{svc.url}/health", timeout=5).status_code == 429  # every route counts
            answer = finish(held.pop())
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            r = httpx.get(f"{svc.url}/v1/kv/held", timeout=5)  # one slot free again
            assert r.status_code == 200 and r.json()["value"] == "held"
        finally:
            for s, _ in held:
                s.close()
        deadline = time.monotonic() + 5  # a client that went away frees its slot
        while httpx.get(f"{svc.url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the closed connection still holds its slot"
            time.sleep(0.05)


def test_connection_limit_flag_and_defaults():
    parser = argparse.ArgumentParser()
    add_auth_arguments(parser)
    assert parser.parse_args(["--max-conns-per-ip", "8"]).max_conns_per_ip == 8
    assert AuthSettings.from_options({}).max_conns_per_ip == 0  # dev mode: only when given
    assert AuthSettings.from_options({"auth_dir": "/d"}).max_conns_per_ip == DEFAULT_MAX_CONNS_PER_IP
    assert AuthSettings.from_options({"auth_dir": "/d", "max_conns_per_ip": 0}).max_conns_per_ip == 0
    with pytest.raises(SystemExit, match="max-conns-per-ip"):
        check_startup({"max_conns_per_ip": -1}, "kv")
    limiter = ConnectionLimiter(1)
    assert limiter.acquire("a") and not limiter.acquire("a") and limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a") and limiter.counts == {"a": 1, "b": 1}


def test_parse_quota():
    assert parse_quota("10G/day") == 10 << 30
    assert parse_quota("5M") == 5 << 20
    assert parse_quota("1234") == 1234
    assert parse_quota("0") == 0 and parse_quota("") == 0 and parse_quota(None) == 0
    for bad in ("lots", "-1G", "inf"):
        with pytest.raises(ValueError):
            parse_quota(bad)


async def pieces(n: int, size: int):
    for _ in range(n):
        yield b"x" * size


async def drain(quota: UploadQuota, who: str, n: int, size: int) -> int:
    got = 0
    async for piece in quota.meter(who, pieces(n, size)):
        got += len(piece)
    return got


async def test_upload_quota_counts_durably_and_cuts_off_at_the_crossing(tmp_path):
    now = [86400.0 * 20000 + 3600]  # 01:00 UTC
    path = tmp_path / "uploads.sqlite"
    kv = await SqliteStore.open(path, durable=False)
    quota = UploadQuota(1000, kv, flush_every=300, clock=lambda: now[0])
    assert await drain(quota, "key:a", 6, 100) == 600
    with pytest.raises(ApiError) as info:
        await drain(quota, "key:a", 6, 100)  # crosses at the 5th piece: 400 + 500 > 1000
    err = info.value
    assert err.status == 429 and err.code == "QUOTA_EXCEEDED"
    assert err.headers["Retry-After"] == str(23 * 3600)  # to midnight UTC
    assert await quota.used("key:a") == 1000
    assert await drain(quota, "key:b", 3, 100) == 300  # another key has its own count
    await kv.close()

    kv = await SqliteStore.open(path, durable=False)  # a restart: the counts come back
    quota = UploadQuota(1000, kv, flush_every=300, clock=lambda: now[0])
    assert await quota.used("key:a") == 1000 and await quota.used("key:b") == 300
    with pytest.raises(ApiError, match="used up"):
        await quota.check("key:a")
    with pytest.raises(ApiError, match="declares 800 more"):
        await quota.check("key:b", declared=800)
    await quota.check("key:b", declared=700)
    now[0] += 23 * 3600 + 1  # the next UTC day
    await quota.check("key:a", declared=1000)
    assert await quota.used("key:a") == 0
    assert await kv.get_json(f"/quota/upload/{20000}/key:a", None) is None  # yesterday's count is gone
    await kv.close()
    assert await drain(UploadQuota(0, None), "key:a", 3, 10**6) == 3 * 10**6  # 0 = off
