"""The maintenance leader lease with real processes on one real etcd: exactly one metadata
process runs maintenance; a clean stop hands the lease over at once, a kill -9 once it expires,
and the new holder repairs."""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest

from shoal.testing.etcd import EtcdCluster, etcd_binary
from shoal.testing.metadata import metadata_service
from shoal.testing.storage import storage_node

from .conftest import blob, commit, new_video
from .test_maintenance import manifest, wait_for

TTL = 4.5  # renewed every TTL/3 = 1.5 s


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    try:
        etcd_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("etcd")
    with EtcdCluster(root) as cluster:
        yield cluster
    shutil.rmtree(root, ignore_errors=True)


def state(url: str) -> dict:
    return httpx.get(f"{url}/maintenance", timeout=10).json()


def leader_within(url: str, timeout: float) -> float:
    """Seconds until the process at `url` says it holds the lease."""
    start = time.monotonic()
    wait_for(lambda: state(url)["leader"], timeout)
    return time.monotonic() - start


def test_one_leader_clean_handover_takeover_after_kill_9_and_repair(etcd, tmp_path):
    ns = "lease" + uuid.uuid4().hex[:10]
    args = (
        "--store", "etcd", "--etcd", etcd.url, "--etcd-namespace", ns,
        "--maintenance-interval", "0.3", "--maintenance-lease-ttl", str(TTL),
        "--degraded-after", "0.8", "--down-after", "1.5", "--repair-grace", "1", "--migrate-settle", "600",
    )  # fmt: skip
    procs = []

    def meta(name: str):
        p = metadata_service(tmp_path / name, *args)
        procs.append(p)
        return p.start()

    try:
        a = meta("a")
        leader_within(a.url, 10)
        b = meta("b")
        time.sleep(TTL / 3 + 1)  # b has tried to take the lease at least once
        for _ in range(5):  # exactly one leader, and both name it
            sa, sb = state(a.url), state(b.url)
            assert sa["leader"] and not sb["leader"]
            assert sb["lease"]["holder"] == sa["lease"]["self"] == sa["lease"]["holder"]
            assert sb["lease"]["self"] != sa["lease"]["self"]
            time.sleep(0.3)
        assert sb["passes"] == 0 and sb["skipped"] > 0 and sa["passes"] > 0
        r = httpx.post(f"{b.url}/maintenance/run", timeout=30)
        assert r.status_code == 409 and sa["lease"]["self"] in r.json()["detail"], r.text

        a.stop()  # a clean stop deletes the lease: b need not wait for it to expire
        handover = leader_within(b.url, TTL)
        print(f"handover after a clean stop: {handover:.2f} s")
        assert handover < TTL / 3 + 1.0  # an unreleased lease would still hold for >= 2/3 TTL

        a2 = meta("a2")  # nodes heartbeat a2 only; b (the leader) sees them through etcd
        nodes = []
        for i in range(4):
            node = storage_node(tmp_path / f"n{i}", "--metadata-url", a2.url, "--heartbeat-interval", "0.3")
            nodes.append(node)
            procs.append(node)
            node.start()
        urls = [n.url for n in nodes]
        wait_for(lambda: len(httpx.get(f"{b.url}/nodes/healthy").json()) == 4, 20)
        vid = new_video(a2.url)
        data = blob(90, 60_000)
        for u in urls[:3]:
            assert httpx.put(f"{u}/chunk/ls-r0", content=data, timeout=10).status_code == 201
        assert commit(a2.url, "ls-r0", vid, 0, data, urls[:3]).status_code == 200
        assert not state(a2.url)["leader"]

        procs[1].kill()  # b, the leader: its lease stays in etcd until it expires
        took = leader_within(a2.url, TTL + 10)
        print(f"takeover after kill -9: {took:.2f} s")
        assert TTL / 3 <= took <= TTL + TTL / 3 + 2.0, took  # waited for the lease, then took it

        nodes[0].kill()  # the new leader repairs: ls-r0's copy moves to the spare node
        chunk = wait_for(
            lambda: (ch := manifest(a2.url, vid)["ls-r0"]) and urls[0] not in ch["replicas"] and ch, 40
        )
        assert chunk["epoch"] == 1 and urls[3] in chunk["replicas"]
        assert httpx.get(f"{urls[3]}/chunk/ls-r0").content == data
        assert state(a2.url)["repaired"] >= 1
    finally:
        for p in reversed(procs):
            p.stop()
