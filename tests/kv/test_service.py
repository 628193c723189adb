"""`shoal serve kv`: the HTTP face, in-process (ASGI) and as a real server with two workers."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from shoal.kv.service import create_app
from shoal.testing import ServiceProcess, asgi_client
from shoal.testing.fuzz import run_schemathesis


@pytest.fixture(params=["memory", "sqlite", "lmdb"])
async def client(request, tmp_path):
    app = create_app(
        {"store": request.param, "data_dir": str(tmp_path), "durable": False, "max_value_bytes": 64}
    )
    async with asgi_client(app) as c:
        yield c


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


async def test_put_get_delete(client: httpx.AsyncClient):
    r = await client.put("/v1/kv/app/config", json={"value": "v1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"key": "/app/config", "version": 1, "revision": 1}
    r = await client.get("/v1/kv/app/config")
    body = r.json()
    assert (body["key"], body["value"], body["encoding"], body["version"]) == ("/app/config", "v1", "utf8", 1)
    raw = bytes(range(250, 256))
    r = await client.put("/v1/kv/bin", json={"value": base64.b64encode(raw).decode(), "encoding": "base64"})
    assert r.status_code == 200
    r = await client.get("/v1/kv/bin")
    assert r.json()["encoding"] == "base64" and base64.b64decode(r.json()["value"]) == raw
    r = await client.delete("/v1/kv/app/config")
    assert r.json() == {"key": "/app/config", "deleted": True, "revision": 3}
    r = await client.delete("/v1/kv/app/config")
    assert r.json()["deleted"] is False
    r = await client.get("/v1/kv/app/config")
    assert r.status_code == 404 and "not found" in r.json()["detail"]


async def test_expected_version(client: httpx.AsyncClient):
    assert (await client.put("/v1/kv/c", json={"value": "a", "expected_version": 0})).status_code == 200
    r = await client.put("/v1/kv/c", json={"value": "b", "expected_version": 0})
    assert r.status_code == 409
    assert r.json()["errors"] == {"key": "/c", "expected": 0, "found": 1}
    assert "expected version 0, found 1" in r.json()["detail"]
    assert (await client.put("/v1/kv/c", json={"value": "b", "expected_version": 1})).json()["version"] == 2
    r = await client.delete("/v1/kv/c", params={"expected_version": 1})
    assert r.status_code == 409
    assert (await client.delete("/v1/kv/c", params={"expected_version": 2})).json()["deleted"] is True


async def test_bad_input_is_4xx_in_the_detail_envelope(client: httpx.AsyncClient):
    cases = [
        (client.put("/v1/kv/a%00b", json={"value": "x"}), 400, "NUL"),
        (client.get("/v1/kv/" + "x" * 1100), 400, "at most 1024 bytes"),
        (client.put("/v1/kv/big", json={"value": "x" * 65}), 413, "over the limit of 64"),
        (client.put("/v1/kv/b", json={"value": "!!", "encoding": "base64"}), 400, "base64"),
        (client.put("/v1/kv/b", json={"value": 5}), 400, "invalid body"),
        (client.put("/v1/kv/b", json={"value": "x", "expected_version": -1}), 400, "invalid body"),
        (client.put("/v1/kv/b", content=b"{"), 400, "not valid JSON"),
        (client.get("/v1/keys", params={"prefix": "nope"}), 400, "must start with '/'"),
        (client.get("/v1/keys", params={"limit": "0"}), 400, "invalid query"),
        (client.get("/v1/watch", params={"pattern": "bad"}), 400, "must start with '/'"),
        (client.get("/v1/watch", params={"pattern": "/a", "from_revision": "0"}), 400, "invalid query"),
        (client.post("/v1/txn", json={"ops": [{"op": "check", "key": "/a"}]}), 400, "needs a version"),
        (client.post("/v1/txn", json={"ops": [{"op": "set", "key": "/a"}]}), 400, "needs a value"),
        (client.post("/v1/txn", json={"ops": [{"op": "nope", "key": "/a"}]}), 400, "invalid body"),
        (
            client.post("/v1/txn", json={"ops": [{"op": "set", "key": "/a", "value": "1"}] * 200}),
            400,
            "operations",
        ),
    ]
    for call, status, text in cases:
        r = await call
        assert r.status_code == status, (r.request.url, r.text)
        assert text in r.json()["detail"], r.json()


async def test_list_pages(client: httpx.AsyncClient):
    keys = [f"/l/{i:02d}" for i in range(25)] + ["/l%", "/m"]
    for k in keys:  # a literal % in a key travels as %25 (a bare % is invalid percent-encoding: 400)
        r = await client.put("/v1/kv" + k.replace("%", "%25"), json={"value": k})
        assert r.status_code == 200, r.text
    seen, cursor = [], None
    while True:
        params = {"prefix": "/l/", "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/keys", params=params)).json()
        seen += page["keys"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(k for k in keys if k.startswith("/l/"))
    page = (await client.get("/v1/keys", params={"prefix": "/l", "values": "true", "limit": 2})).json()
    assert [(e["key"], e["value"]) for e in page["entries"]] == [("/l%", "/l%"), ("/l/00", "/l/00")]


async def test_transaction(client: httpx.AsyncClient):
    await client.put("/v1/kv/t/a", json={"value": "1"})
    ops = [
        {"op": "check", "key": "/t/a", "version": 1},
        {"op": "check", "key": "/t/b", "version": 0},
        {"op": "set", "key": "/t/b", "value": "2"},
        {"op": "delete", "key": "/t/a"},
    ]
    r = await client.post("/v1/txn", json={"ops": ops})
    assert r.json() == {"revision": 2, "versions": [1, 0, 1, 0], "deleted": [False, False, False, True]}
    r = await client.post("/v1/txn", json={"ops": ops})
    assert r.status_code == 409 and r.json()["errors"]["key"] == "/t/a"
    assert (await client.get("/v1/status")).json()["revision"] == 2


async def test_watch_replays_from_a_revision(client: httpx.AsyncClient):
    await client.put("/v1/kv/w/a", json={"value": "1"})
    await client.put("/v1/kv/x", json={"value": "other"})
    await client.put("/v1/kv/w/a", json={"value": "2"})
    await client.delete("/v1/kv/w/a")
    r = await client.get("/v1/watch", params={"pattern": "/w/*", "from_revision": 1, "max_events": 3})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert [(e["event"], e["id"], e["data"]["value"]) for e in events] == [
        ("Created", "1", "1"),
        ("Updated", "3", "2"),
        ("Deleted", "4", None),
    ]
    r = await client.get("/v1/watch", params={"pattern": "/w/*", "timeout": 0.05})
    assert sse_events(r.text) == []


async def test_compacted_watch_is_410(tmp_path):
    app = create_app({"store": "sqlite", "data_dir": str(tmp_path), "durable": False, "history": 2})
    async with asgi_client(app) as client:
        for i in range(5):
            await client.put("/v1/kv/k", json={"value": str(i)})
        r = await client.get("/v1/watch", params={"pattern": "/k", "from_revision": 1})
        assert r.status_code == 410
        assert r.json()["errors"] == {"oldest_revision": 4}
        assert (await client.get("/v1/status")).json()["oldest_revision"] == 4


def test_real_server_two_workers_share_store_and_watch(tmp_path):
    """granian with 2 workers on one LMDB file: a watch on one connection sees writes on others."""
    with ServiceProcess("kv", tmp_path / "kv", ["--workers", "2", "--store", "lmdb"]) as svc:

        async def run() -> list[dict]:
            async with httpx.AsyncClient(base_url=svc.url, timeout=10) as c:
                params = {"pattern": "/live/*", "max_events": 20, "timeout": 20}
                async with c.stream("GET", "/v1/watch", params=params) as stream:
                    chunks = stream.aiter_text()
                    assert (await anext(chunks)).startswith(": watching")
                    # many short connections land on both workers
                    for i in range(20):
                        async with httpx.AsyncClient(base_url=svc.url) as w:
                            assert (
                                await w.put(f"/v1/kv/live/{i}", json={"value": str(i)})
                            ).status_code == 200
                    text = "".join([chunk async for chunk in chunks])
                return sse_events(text)

        events = asyncio.run(run())
        assert [e["data"]["key"] for e in events] == [f"/live/{i}" for i in range(20)]
        assert [int(e["id"]) for e in events] == list(range(1, 21))
        r = httpx.get(svc.url + "/v1/kv/live/7")
        assert r.json()["value"] == "7"


def test_schemathesis_finds_no_server_error(tmp_path):
    with ServiceProcess("kv", tmp_path / "kv", ["--store", "sqlite", "--no-durable"]) as svc:
        out = run_schemathesis(svc.url, max_examples=25, max_time=25, exclude_path_regex="^/v1/watch")
    assert out.returncode == 0, out.stdout[-4000:]


def raw_request(url: str, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    """A request with the target sent byte for byte (httpx would re-encode a stray %)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def test_keys_with_bad_percent_encoding_or_utf8_are_400_not_mangled(tmp_path):
    with ServiceProcess("kv", tmp_path / "kv", ["--store", "sqlite", "--no-durable"]) as svc:
        body = b'{"value": "x"}'
        for target in ("/v1/kv/a%zzb", "/v1/kv/a%ffb", "/v1/kv/bad%c3", "/v1/kv/trail%"):
            status, answer = raw_request(svc.url, "PUT", target, body)
            assert status == 400 and "detail" in answer, (target, status, answer)
            assert raw_request(svc.url, "GET", target)[0] == 400
        status, answer = raw_request(svc.url, "PUT", "/v1/kv/caf%C3%A9/x%2Fy", body)
        assert status == 200 and answer["key"] == "/café/x/y", answer
        status, answer = raw_request(svc.url, "GET", "/v1/kv/caf%C3%A9/x%2Fy")
        assert status == 200 and answer["key"] == "/café/x/y"
        keys = httpx.get(svc.url + "/v1/keys").json()["keys"]
        assert keys == ["/café/x/y"] and not any("\ufffd" in k for k in keys)


async def test_get_json_of_a_non_json_value_is_a_store_error():
    from shoal.kv import KvError, MemoryStore, ValueNotJson

    store = MemoryStore()
    await store.set("/k", b"\xffnot json")
    with pytest.raises(ValueNotJson) as info:
        await store.get_json("/k")
    assert isinstance(info.value, KvError) and "/k" in str(info.value)
    await store.set_json("/j", {"a": 1})
    assert await store.get_json("/j") == {"a": 1} and await store.get_json("/absent", 7) == 7
