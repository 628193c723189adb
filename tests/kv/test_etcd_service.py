"""`shoal serve kv --store etcd`: processes (as on several machines) sharing one store through etcd."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from shoal.kv.service import create_app
from shoal.testing import ServiceProcess, asgi_client

from .conftest import shared_etcd
from .test_service import sse_events


def etcd_args(namespace: str) -> list[str]:
    return ["--store", "etcd", "--etcd", shared_etcd().url, "--etcd-namespace", namespace]


async def test_api_on_etcd_in_process():
    options = {"store": "etcd", "etcd": shared_etcd().url, "etcd_namespace": "svc" + uuid.uuid4().hex[:12]}
    async with asgi_client(create_app({**options, "history": 2})) as client:
        assert (await client.put("/v1/kv/a", json={"value": "1", "expected_version": 0})).status_code == 200
        r = await client.put("/v1/kv/a", json={"value": "2", "expected_version": 0})
        assert r.status_code == 409 and r.json()["errors"] == {"key": "/a", "expected": 0, "found": 1}
        for i in range(4):
            await client.put("/v1/kv/k", json={"value": str(i)})
        status = (await client.get("/v1/status")).json()
        assert (status["backend"], status["revision"], status["oldest_revision"]) == ("EtcdStore", 5, 4)
        r = await client.get("/v1/watch", params={"pattern": "/k", "from_revision": 1})
        assert r.status_code == 410 and r.json()["errors"] == {"oldest_revision": 4}


def test_store_etcd_without_endpoints_is_refused():
    with pytest.raises(SystemExit, match="--etcd"):
        create_app({"store": "etcd"})


def test_two_kv_services_on_one_etcd_see_each_others_writes_and_watch_events(tmp_path):
    namespace = "svc" + uuid.uuid4().hex[:12]
    with (
        ServiceProcess("kv", tmp_path / "a", ["--workers", "2", *etcd_args(namespace)]) as a,
        ServiceProcess("kv", tmp_path / "b", etcd_args(namespace)) as b,
    ):

        async def run() -> tuple[list[dict], list[dict]]:
            async with (
                httpx.AsyncClient(base_url=a.url, timeout=10) as ca,
                httpx.AsyncClient(base_url=b.url, timeout=10) as cb,
            ):
                params = {"pattern": "/live/*", "max_events": 20, "timeout": 30}
                async with (
                    cb.stream("GET", "/v1/watch", params=params) as on_b,
                    ca.stream("GET", "/v1/watch", params=params) as on_a,
                ):
                    chunks_b, chunks_a = on_b.aiter_text(), on_a.aiter_text()
                    assert (await anext(chunks_b)).startswith(": watching")
                    assert (await anext(chunks_a)).startswith(": watching")
                    for i in range(20):  # alternate writers: each watch sees both services' writes
                        writer = ca if i % 2 else cb
                        r = await writer.put(f"/v1/kv/live/{i}", json={"value": str(i)})
                        assert r.status_code == 200, r.text
                    text_b = "".join([c async for c in chunks_b])
                    text_a = "".join([c async for c in chunks_a])
                # reads and compare-and-set across the two services
                assert (await cb.get("/v1/kv/live/7")).json()["value"] == "7"
                assert (
                    await ca.put("/v1/kv/lock", json={"value": "a", "expected_version": 0})
                ).status_code == 200
                r = await cb.put("/v1/kv/lock", json={"value": "b", "expected_version": 0})
                assert r.status_code == 409
                return sse_events(text_a), sse_events(text_b)

        seen_a, seen_b = asyncio.run(run())
        for events in (seen_a, seen_b):
            assert [e["data"]["key"] for e in events] == [f"/live/{i}" for i in range(20)]
            ids = [int(e["id"]) for e in events]
            assert ids == sorted(set(ids))
        assert [e["id"] for e in seen_a] == [e["id"] for e in seen_b]  # one history, same revisions
