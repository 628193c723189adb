"""/health of the metadata service when its store hangs: a SIGSTOPped etcd gives a prompt
`degraded` answer (HTTP 200, so a liveness probe does not restart the metadata service for its
store's fault) with the reason, and `healthy` again after SIGCONT. Also the node counts: a
registered node that stops heartbeating is counted as down. Real etcd and real processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from shoal.testing.etcd import EtcdCluster
from shoal.testing.metadata import metadata_service


def timed_health(url: str) -> tuple[dict, float]:
    began = time.monotonic()
    r = httpx.get(url + "/health", timeout=10)
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - began


def test_hung_etcd_is_a_prompt_degraded_health(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd") as etcd:
        args = ("--store", "etcd", "--etcd", etcd.url, "--etcd-namespace", "health")
        with metadata_service(tmp_path / "meta", *args, "--maintenance-interval", "0") as meta:
            body, _ = timed_health(meta.url)
            assert body["status"] == "healthy" and body["reasons"] == [], body
            member = etcd.members[0]
            assert member.proc is not None
            os.killpg(member.proc.pid, signal.SIGSTOP)
            try:
                for _ in range(2):  # and again: nothing is left stuck by the first one
                    body, took = timed_health(meta.url)
                    assert body["status"] == "degraded", body
                    assert body["database_status"] == "unhealthy: no answer within 1 s", body
                    assert body["reasons"] == ["etcd store: no answer within 1 s"], body
                    assert took < 3.0, f"/health took {took:.1f} s with etcd stopped"
            finally:
                os.killpg(member.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 15
            while (body := timed_health(meta.url)[0])["status"] != "healthy":
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
            assert body["database_status"] == "healthy" and body["reasons"] == []


def test_health_counts_registered_nodes_that_went_down(tmp_path: Path) -> None:
    thresholds = ("--degraded-after", "0.5", "--down-after", "1", "--maintenance-interval", "0")
    with metadata_service(tmp_path / "meta", *thresholds) as meta:
        for i in range(2):
            r = httpx.post(
                meta.url + "/nodes/register",
                params={"node_url": f"http://127.0.0.1:{9 + i}", "node_id": f"gone-{i}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while (body := timed_health(meta.url)[0])["down_nodes"] != 2:
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        assert body["total_nodes"] == 2 and body["healthy_nodes"] == 0, body
        assert body["status"] == "healthy", body  # down nodes are reported, the service itself works
