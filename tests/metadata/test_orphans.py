"""Copies of uploads that never commit, with real storage nodes: kept while younger than
--orphan-grace (and while a node's acceptor state for them is newer than it), deleted after;
a copy committed in time is never touched."""

from __future__ import annotations

import time

import httpx

from shoal.testing.metadata import Cluster

from .conftest import blob, commit, new_video
from .test_maintenance import status_of, wait_for

GRACE = 2.5


def counters(m: str) -> dict:
    return httpx.get(f"{m}/maintenance", timeout=10).json()


def test_copies_of_uncommitted_uploads_are_deleted_after_the_grace_only(tmp_path):
    args = (
        "--maintenance-interval", "0.3", "--gc-interval", "0.5", "--gc-grace", "0.5",
        "--orphan-grace", str(GRACE), "--repair-grace", "600", "--migrate-settle", "600",
    )  # fmt: skip
    with Cluster(tmp_path, nodes=3, meta_args=args, heartbeat=0.3) as c:
        m = c.meta.url
        vid = new_video(m)
        late = blob(81, 30_000)
        t0 = time.time()
        c.put(c.urls[0], "or-lost", blob(80, 30_000))  # an upload whose client went away
        c.put(c.urls[1], "or-lost", blob(80, 30_000))
        c.put(c.urls[2], "or-gone-frag-1", blob(82, 10_000))  # a fragment of one
        c.put(c.urls[0], "or-prep", blob(83, 10_000))
        for u in c.urls:
            c.put(u, "or-late", late)  # committed, in time
        # a proposal for or-prep reached node 0's acceptor: it must sit still for a grace first
        prep = {"epoch": 0, "ballot": {"round": 3, "proposer": "elsewhere.1"}}
        assert httpx.post(f"{c.urls[0]}/paxos/or-prep/prepare", json=prep, timeout=10).json()["ok"]
        time.sleep(1.0)
        assert commit(m, "or-late", vid, 0, late, c.urls).status_code == 200

        wait_for(lambda: counters(m)["orphans_waiting"] >= 4)  # seen, and waiting for their grace
        while time.time() < t0 + GRACE - 0.4:  # scans run every 0.5 s meanwhile
            assert status_of(c.urls[0], "or-lost") == 200 and status_of(c.urls[1], "or-lost") == 200
            assert status_of(c.urls[2], "or-gone-frag-1") == 200
            time.sleep(0.2)
        assert counters(m)["orphans_collected"] == 0

        wait_for(lambda: status_of(c.urls[0], "or-lost") == 404 and status_of(c.urls[1], "or-lost") == 404)
        wait_for(lambda: status_of(c.urls[2], "or-gone-frag-1") == 404)
        assert time.time() - t0 >= GRACE
        assert status_of(c.urls[0], "or-prep") == 200  # acceptor state seen for less than a grace
        got = counters(m)
        assert got["orphans_collected"] == 3 and got["collected"] == 0, got

        wait_for(lambda: status_of(c.urls[0], "or-prep") == 404)
        time.sleep(1.0)
        assert all(httpx.get(f"{u}/chunk/or-late").content == late for u in c.urls)  # never touched
        got = counters(m)
        assert got["orphans_collected"] == 4 and got["orphans_waiting"] == 0, got
        assert any("never committed" in e for e in got["events"])
