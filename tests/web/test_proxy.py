"""Behind a reverse proxy: X-Forwarded-* believed only from trusted peers; OpenAPI `servers`."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.web import Api, create_app
from shoal.web.proxy import ROOT_PATH, ProxyHeaders, normalize_prefix, parse_trusted
from tests.web.example_service import create_app as example_app

PLUGIN = {"SHOAL_SERVICE_MODULES": "example=tests.web.example_service"}
FORWARDED = {
    "X-Forwarded-For": "203.0.113.7, 10.0.0.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "cloud.example.org",
    "X-Forwarded-Prefix": "/echo/",
}


def echo_app():
    api = Api()

    @api.get("/where")
    async def where(request) -> dict:
        return {
            "client": request.client.host if request.client else None,
            "url": str(request.url),
            "host": request.headers.get("host"),
            "prefix": request.scope.get(ROOT_PATH),
        }

    @api.get("/echo/inside")  # a route that starts with the prefix itself
    async def inside(request) -> str:
        return "inside"

    return create_app(title="Echo", apis=[api])


def client_for(app, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://svc:8000")


async def where(app, peer: str, headers: dict | None = None) -> dict:
    async with client_for(app, peer) as c:
        r = await c.get("/where", headers=headers or {})
        assert r.status_code == 200, r.text
        return r.json()


async def test_trusted_proxy_headers_are_applied():
    app = ProxyHeaders(echo_app(), "127.0.0.1, 10.0.0.0/8")
    got = await where(app, "10.0.0.9", FORWARDED)
    # 10.0.0.9 is itself a trusted proxy: the client is the next address to the left
    assert got == {
        "client": "203.0.113.7",
        "url": "https://cloud.example.org/where",
        "host": "cloud.example.org",
        "prefix": "/echo",
    }


async def test_untrusted_peer_cannot_spoof():
    app = ProxyHeaders(echo_app(), "127.0.0.1")
    got = await where(app, "198.51.100.4", FORWARDED)
    assert got == {
        "client": "198.51.100.4",
        "url": "http://svc:8000/where",
        "host": "svc:8000",
        "prefix": None,
    }


async def test_no_trusted_proxy_by_default():
    app = ProxyHeaders(echo_app(), "")
    got = await where(app, "127.0.0.1", FORWARDED)
    assert got["client"] == "127.0.0.1" and got["prefix"] is None and got["url"].startswith("http://svc")


async def test_spoofed_hops_left_of_the_client_do_not_count():
    """A client sends its own X-Forwarded-For; the proxy appends the real address: that one wins."""
    app = ProxyHeaders(echo_app(), "10.0.0.9")
    got = await where(app, "10.0.0.9", {"X-Forwarded-For": "1.1.1.1, 198.51.100.4"})
    assert got["client"] == "198.51.100.4"


async def test_trust_everyone_with_star():
    app = ProxyHeaders(echo_app(), "*")
    got = await where(app, "192.0.2.1", {"X-Forwarded-For": "203.0.113.9"})
    assert got["client"] == "203.0.113.9"


@pytest.mark.parametrize(
    "header, value",
    [
        ("X-Forwarded-Proto", "javascript"),
        ("X-Forwarded-Host", "evil.example/path"),
        ("X-Forwarded-Host", "a b"),
        ("X-Forwarded-Prefix", "/../admin"),
        ("X-Forwarded-Prefix", "no-slash"),
        ("X-Forwarded-Prefix", "/a b"),
    ],
)
async def test_malformed_values_are_ignored(header, value):
    app = ProxyHeaders(echo_app(), "127.0.0.1")
    got = await where(app, "127.0.0.1", {header: value})
    assert got == {"client": "127.0.0.1", "url": "http://svc:8000/where", "host": "svc:8000", "prefix": None}


async def test_root_path_option_applies_to_every_peer_and_a_trusted_header_overrides_it():
    app = ProxyHeaders(echo_app(), "127.0.0.1", root_path="/static-prefix/")
    assert (await where(app, "198.51.100.4"))["prefix"] == "/static-prefix"
    assert (await where(app, "198.51.100.4", {"X-Forwarded-Prefix": "/x"}))["prefix"] == "/static-prefix"
    assert (await where(app, "127.0.0.1", {"X-Forwarded-Prefix": "/x"}))["prefix"] == "/x"


async def test_paths_are_not_rewritten():
    """The proxy strips the prefix; a route that begins with the same word still matches."""
    app = ProxyHeaders(echo_app(), "127.0.0.1", root_path="/echo")
    async with client_for(app, "127.0.0.1") as c:
        r = await c.get("/echo/inside", headers={"X-Forwarded-Prefix": "/echo"})
    assert r.status_code == 200 and r.json() == "inside"


async def test_openapi_servers_follow_the_prefix(tmp_path):
    app = ProxyHeaders(example_app({"data_dir": str(tmp_path)}), "127.0.0.1")
    async with client_for(app, "127.0.0.1") as c:
        plain = (await c.get("/openapi.json")).json()
        behind = (await c.get("/openapi.json", headers={"X-Forwarded-Prefix": "/svc/example"})).json()
    assert "servers" not in plain
    assert behind["servers"] == [{"url": "/svc/example"}]
    assert behind["paths"] == plain["paths"]
    assert "servers" not in app.openapi  # the shared document is not modified


def test_option_parsing():
    nets = parse_trusted("127.0.0.1, 10.0.0.0/8,::1")
    assert [str(n) for n in nets] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert parse_trusted("*") is None
    assert parse_trusted("") == []
    with pytest.raises(ValueError, match="not an IP"):
        parse_trusted("localhost")
    assert normalize_prefix("/a/b/") == "/a/b" and normalize_prefix("/") == ""
    for bad in ("a", "/a/../b", "/a?x"):
        with pytest.raises(ValueError):
            normalize_prefix(bad)


def test_serve_refuses_a_bad_option(tmp_path):
    env = {**__import__("os").environ, **PLUGIN}
    cmd = [sys.executable, "-m", "shoal", "serve", "example", "--data-dir", str(tmp_path)]
    out = subprocess.run(
        [*cmd, "--forwarded-allow-ips", "proxy.local"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "'proxy.local' is not an IP address" in out.stderr


def test_served_under_granian_with_the_flags(tmp_path):
    args = ["--forwarded-allow-ips", "127.0.0.1", "--root-path", "/base"]
    with ServiceProcess("example", tmp_path / "data", args, env=PLUGIN) as svc:
        doc = httpx.get(svc.url + "/openapi.json").json()
        assert doc["servers"] == [{"url": "/base"}]
        doc = httpx.get(svc.url + "/openapi.json", headers={"X-Forwarded-Prefix": "/other"}).json()
        assert doc["servers"] == [{"url": "/other"}]
        assert httpx.get(svc.url + "/greeting").json() == "hello"  # routes unchanged
