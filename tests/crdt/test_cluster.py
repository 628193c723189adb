"""Three real `shoal serve state` processes on loopback replicating with each other."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from shoal.testing.crdt import StateCluster, listing, wait_converged

pytestmark = pytest.mark.slow


def create_cidrs(url: str, prefix: int, n: int, start: int = 0) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for j in range(start, start + n):
            r = http.post(
                "/cidrs/create", json={"cidr": f"10.{prefix}.{j}.0/24", "name": f"c{j}", "owner": "o"}
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["cidr_id"])
    return ids


@pytest.fixture
def trio(tmp_path):
    c = StateCluster(tmp_path, 3, sync_interval=0.3)
    c.start()
    yield c
    c.stop()


def test_concurrent_writes_partition_and_restart_converge(trio):
    urls = trio.urls()
    threads = [threading.Thread(target=create_cidrs, args=(u, i, 15)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = wait_converged(urls, timeout=15, min_items=45)
    assert len(state["cidrs"]) == 45

    # concurrent updates of the same document on every node: one winner, everywhere
    target = state["cidrs"][0]["id"]
    for i, u in enumerate(urls):
        r = httpx.post(u + "/cidrs/update", json={"id": target, "name": f"from-node-{i}"})
        assert r.status_code == 200, r.text
    state = wait_converged(urls, timeout=15)
    names = {c["name"] for c in state["cidrs"] if c["id"] == target}
    assert len(names) == 1 and names.pop().startswith("from-node-")

    # partition: node 2 is down while the others keep writing, and deletes happen
    trio.nodes[2].stop()
    create_cidrs(urls[0], 50, 10)
    create_cidrs(urls[1], 51, 10)
    r = httpx.delete(f"{urls[0]}/cidrs/{target}")
    assert r.status_code == 200, r.text
    wait_converged(urls[:2], timeout=15, min_items=64)
    trio.nodes[2].start()
    trio.wait_ready(nodes=[2])  # it refuses writes until it has read its peers' logs
    create_cidrs(urls[2], 52, 3)
    state = wait_converged(urls, timeout=20, min_items=67)
    assert len(state["cidrs"]) == 67 and all(c["id"] != target for c in state["cidrs"])
    statuses = [httpx.get(u + "/replication/status").json() for u in urls]
    assert len({s["ops"] for s in statuses}) == 1 and all(s["rejected"] == 0 for s in statuses)
    assert all(s["buffered"] == 0 for s in statuses)


def test_node_that_lost_its_data_resyncs(trio):
    urls = trio.urls()
    for i, u in enumerate(urls):
        create_cidrs(u, i, 20)
    before = wait_converged(urls, timeout=15, min_items=60)
    trio.nodes[1].kill()
    shutil.rmtree(trio.nodes[1].data_dir)
    trio.nodes[1].start()  # same key (kept outside the data dir), empty store
    trio.wait_ready(nodes=[1])
    after = wait_converged(urls, timeout=20, min_items=60)
    assert after == before
    # and it takes writes again, which reach the others
    create_cidrs(urls[1], 9, 2)
    assert len(wait_converged(urls, timeout=15, min_items=62)["cidrs"]) == 62


def test_acknowledged_write_survives_kill_and_still_replicates(trio):
    urls = trio.urls()
    trio.nodes[2].stop()
    ids = create_cidrs(urls[0], 7, 5)  # claimed on nodes 0 and 1 (a majority); node 0 then dies
    trio.nodes[0].kill()
    trio.nodes[1].stop()
    trio.nodes[0].start()
    trio.wait_ready(nodes=[0])  # its peers are down: ready after --catch-up-grace
    assert {c["id"] for c in listing(urls[0])["cidrs"]} == set(ids)
    trio.nodes[1].start()
    trio.nodes[2].start()
    state = wait_converged(urls, timeout=20, min_items=5)
    assert {c["id"] for c in state["cidrs"]} == set(ids)


def test_a_minority_refuses_unique_creates_and_writes_nothing(trio):
    """A node cut off from the majority answers 503 NO_QUORUM for a create of a unique value, and
    nothing of it appears later; with the majority back, the value is taken once, everywhere."""
    urls = trio.urls()
    trio.nodes[1].stop()
    trio.nodes[2].stop()
    key = "0x" + "ab" * 20
    a = httpx.post(urls[0] + "/peers/create", json={"name": "A", "public_key": key, "peer_type": "user"})
    assert a.status_code == 503 and a.json()["code"] == "NO_QUORUM", a.text
    assert "majority" in a.json()["error"]
    trio.nodes[1].start()
    trio.wait_ready(nodes=[1])
    b = httpx.post(urls[1] + "/peers/create", json={"name": "B", "public_key": key, "peer_type": "user"})
    assert b.status_code == 200, b.text
    trio.nodes[2].start()
    trio.wait_ready(nodes=[2])
    state = wait_converged(urls, timeout=20, min_items=1)
    assert [p["id"] for p in state["peers"]] == [b.json()["peer_id"]]
    for u in urls:  # the value is taken, on every node
        r = httpx.post(u + "/peers/create", json={"name": "C", "public_key": key, "peer_type": "user"})
        assert r.status_code == 409, r.text
    assert httpx.delete(f"{urls[2]}/peers/{b.json()['peer_id']}").status_code == 200
    wait_converged(urls, timeout=20)
    r = httpx.post(urls[0] + "/peers/create", json={"name": "D", "public_key": key, "peer_type": "user"})
    assert r.status_code == 200, r.text  # free again once deleted


def _peers(url: str) -> dict[str, dict]:
    return {p["url"]: p for p in httpx.get(url + "/replication/status").json()["peers"]}


def _caught_up(url: str, others: list[str]) -> bool:
    peers = _peers(url)
    return all(
        peers[o]["lag"] == 0 and peers[o]["since"] > 0 and peers[o]["last_error"] is None for o in others
    )


def test_sync_positions_survive_a_restart(trio):
    """A restarted node reads its peers' logs on from where it stopped, not from 0."""
    urls = trio.urls()
    create_cidrs(urls[0], 1, 30)
    create_cidrs(urls[1], 2, 30)
    wait_converged(urls, timeout=15, min_items=60)
    deadline = time.monotonic() + 15
    while not _caught_up(urls[2], urls[:2]):  # a full round with each peer after the writes
        assert time.monotonic() < deadline, _peers(urls[2])
        time.sleep(0.2)
    time.sleep(1.0)  # rounds are saved at their end; let one more finish with each peer
    before = {u: p["since"] for u, p in _peers(urls[2]).items()}
    trio.nodes[2].stop()
    trio.nodes[2].start()
    after = _peers(urls[2])
    assert {u: p["since_restored"] for u, p in after.items()} == before
    assert all(before[u] >= 30 for u in urls[:2])
    create_cidrs(urls[0], 3, 2)  # and it goes on from there
    state = wait_converged(urls, timeout=15, min_items=62)
    assert len(state["cidrs"]) == 62
    assert all(p["received"] <= 2 for p in _peers(urls[2]).values())  # nothing resent


def test_emptied_node_bootstraps_from_a_snapshot(tmp_path):
    """--bootstrap snapshot: a node that lost its data adopts a peer's snapshot, then its log."""
    c = StateCluster(tmp_path, 3, sync_interval=0.3, extra_args=("--insecure-dev", "--bootstrap", "snapshot"))
    c.start()
    try:
        urls = c.urls()
        for i, u in enumerate(urls):
            create_cidrs(u, i, 15)
        target = listing(urls[0])["cidrs"][0]["id"]
        assert (
            httpx.post(urls[0] + "/cidrs/update", json={"id": target, "name": "renamed"}).status_code == 200
        )
        before = wait_converged(urls, timeout=15, min_items=45)
        c.nodes[1].kill()
        shutil.rmtree(c.nodes[1].data_dir)
        c.nodes[1].start()
        after = wait_converged(urls, timeout=20, min_items=45)
        assert after == before
        status = httpx.get(urls[1] + "/replication/status").json()
        # 45 documents + the update's two field registers (name, updated_at)
        assert status["base"] is not None and status["base"]["winners"] == 47, status
        assert status["ops"] == 47 and status["rejected"] == 0
        create_cidrs(urls[1], 9, 2)  # it writes on top of the snapshot, and the others take it
        assert len(wait_converged(urls, timeout=15, min_items=47)["cidrs"]) == 47
        c.nodes[1].stop()  # and restarts from its base plus its log
        c.nodes[1].start()
        assert len(wait_converged(urls, timeout=15, min_items=47)["cidrs"]) == 47
        assert httpx.get(urls[1] + "/replication/status").json()["ops"] == 49
    finally:
        c.stop()


def test_compacting_cluster_converges_restarts_and_bootstraps(tmp_path):
    """--compact-interval: superseded ops leave every log once all peers have them; nodes still
    converge, restart from their compacted logs, and an emptied node bootstraps from a snapshot."""
    args = ("--insecure-dev", "--compact-interval", "0.5", "--bootstrap", "snapshot")
    c = StateCluster(tmp_path, 3, sync_interval=0.3, extra_args=args)
    c.start()
    try:
        urls = c.urls()
        ids = [i for n, u in enumerate(urls) for i in create_cidrs(u, n, 8)]
        wait_converged(urls, timeout=15, min_items=24)
        for round_ in range(2):  # every document updated twice, from different nodes
            for k, i in enumerate(ids):
                r = httpx.post(urls[(k + round_) % 3] + "/cidrs/update", json={"id": i, "name": f"r{round_}"})
                assert r.status_code == 200, r.text
        before = wait_converged(urls, timeout=20, min_items=24)
        deadline = time.monotonic() + 20
        while not all(httpx.get(u + "/replication/status").json()["compacted"] >= 40 for u in urls):
            assert time.monotonic() < deadline, [httpx.get(u + "/replication/status").json() for u in urls]
            time.sleep(0.3)
        c.nodes[0].stop()
        c.nodes[0].start()
        assert wait_converged(urls, timeout=15, min_items=24) == before
        c.nodes[2].kill()
        shutil.rmtree(c.nodes[2].data_dir)
        c.nodes[2].start()
        assert wait_converged(urls, timeout=20, min_items=24) == before
        winners = httpx.get(urls[2] + "/replication/status").json()["base"]["winners"]
        assert winners == 24 * 3  # each document, and its name and updated_at field registers
        create_cidrs(urls[2], 7, 1)
        assert len(wait_converged(urls, timeout=15, min_items=25)["cidrs"]) == 25
    finally:
        c.stop()
