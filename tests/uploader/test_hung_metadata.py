"""A metadata service that is alive but never answers (SIGSTOP of its main process and its
granian worker), or whose etcd store hangs: the uploader's /health says degraded and names it,
POST /upload answers 503 in its {"detail"} envelope within 10 s, and once things resume /health
is healthy again and a retried upload leaves exactly one video (a timed-out create that the
metadata service completes later is the same create as the retry's). Real processes throughout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal.testing import ServiceProcess
from shoal.testing.etcd import EtcdCluster
from shoal.testing.metadata import Cluster
from shoal.testing.uploader import post_upload, uploader_service, wait_upload

TITLE = "retried after the metadata service hung"


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2])


def process_tree(root: int) -> list[int]:
    """`root`, the members of its process group and all their descendants, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    found = {root} | {pid for pid, (_, pgrp) in table.items() if pgrp == root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


@contextlib.contextmanager
def frozen(service: ServiceProcess, at_least: int = 1) -> Iterator[list[int]]:
    """SIGSTOP the service's processes (main and workers); SIGCONT them whatever happens."""
    assert service.proc is not None
    pids = process_tree(service.proc.pid)
    assert len(pids) >= at_least, f"expected a main process and its workers, found {pids}"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def health(url: str) -> dict:
    r = httpx.get(url + "/health", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def wait_health(url: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body = health(url)
    while body["status"] != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"/health not {status} within {timeout} s: {body}")
        time.sleep(0.2)
        body = health(url)
    return body


# lenient heartbeat thresholds: a short freeze of the metadata service must not mark nodes down
META_ARGS = ("--maintenance-interval", "0", "--degraded-after", "30", "--down-after", "60")


@contextlib.contextmanager
def started(root: Path, *meta_args: str) -> Iterator[tuple[Cluster, ServiceProcess]]:
    """Metadata + 3 storage nodes and an uploader with the default --metadata-timeout (5 s)."""
    with Cluster(root / "cluster", nodes=3, meta_args=(*META_ARGS, *meta_args)) as cluster:
        with uploader_service(root / "up", cluster.meta.url) as up:
            yield cluster, up


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Cluster, ServiceProcess]]:
    with started(tmp_path) as both:
        yield both


def titled(meta_url: str, title: str) -> list[str]:
    videos = httpx.get(meta_url + "/videos", params={"status": "any"}, timeout=10).json()  # any state
    return [v["video_id"] for v in videos if v["title"] == title]


def upload_503_within_10_s(up: ServiceProcess, video: Path, title: str) -> str:
    began = time.monotonic()
    r = post_upload(up.url, video, title, redundancy_mode="replication")
    waited = time.monotonic() - began
    assert r.status_code == 503, r.text
    assert waited < 10.0, f"POST /upload answered after {waited:.1f} s"
    detail = r.json()["detail"]
    assert "metadata service" in detail, detail
    return detail


def retry_completes(cluster: Cluster, up: ServiceProcess, video: Path, title: str) -> str:
    cluster.wait_registered(3)
    retry = post_upload(up.url, video, title, redundancy_mode="replication")
    assert retry.status_code == 200, retry.text
    accepted = retry.json()
    assert wait_upload(up.url, accepted["upload_session_id"])[-1]["status"] == "completed"
    return accepted["video_id"]


def test_hung_metadata_is_degraded_503_then_healthy_and_one_video(stack, small: Path) -> None:
    cluster, up = stack
    body = health(up.url)
    assert body["status"] == "healthy" and body["metadata_status"] == "healthy", body
    assert body["reasons"] == []

    with frozen(cluster.meta, at_least=2):  # granian: main process + worker
        # the last probe said healthy, so this upload does send its POST /video, which times out
        detail = upload_503_within_10_s(up, small, TITLE)
        assert "no answer" in detail

        body = wait_health(up.url, "degraded", timeout=5.0)
        assert body["metadata_status"] == "no answer", body
        assert any(x.startswith("metadata service: no answer within 2 s") for x in body["reasons"]), body

        # now /health knows: the next upload is refused at once, without sending a create
        upload_503_within_10_s(up, small, TITLE)

    body = wait_health(up.url, "healthy", timeout=15.0)
    assert body["metadata_status"] == "healthy" and body["reasons"] == [], body
    video_id = retry_completes(cluster, up, small, TITLE)
    assert titled(cluster.meta.url, TITLE) == [video_id]


def test_hung_etcd_under_metadata_create_lands_late_and_retry_is_the_same_video(
    tmp_path: Path, small: Path
) -> None:
    """The metadata service answers /health (degraded: its store does not answer) but its
    POST /video hangs on etcd; the uploader gives up after 5 s, and the create completes when
    etcd resumes. The retried upload must be that video, not a second one."""
    with EtcdCluster(tmp_path / "etcd") as etcd:
        store = ("--store", "etcd", "--etcd", etcd.url, "--etcd-namespace", "hung")
        with started(tmp_path, *store) as (cluster, up):
            assert health(up.url)["status"] == "healthy"
            member = etcd.members[0]
            assert member.proc is not None
            os.killpg(member.proc.pid, signal.SIGSTOP)
            try:
                upload_503_within_10_s(up, small, TITLE)
                body = wait_health(up.url, "degraded", timeout=5.0)
                assert body["metadata_status"] == "degraded", body
                assert any(
                    x.startswith("metadata service: degraded") and "etcd store: no answer" in x
                    for x in body["reasons"]
                ), body
                upload_503_within_10_s(up, small, TITLE)  # refused at once now
            finally:
                os.killpg(member.proc.pid, signal.SIGCONT)
            wait_health(up.url, "healthy", timeout=15.0)
            # the precondition that makes this test mean something: the abandoned create landed
            deadline = time.monotonic() + 20
            while not (late := titled(cluster.meta.url, TITLE)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(late) == 1, late
            video_id = retry_completes(cluster, up, small, TITLE)
            assert video_id == late[0]
            assert titled(cluster.meta.url, TITLE) == [video_id]


def test_storage_node_that_does_not_answer_is_named(stack) -> None:
    cluster, up = stack
    wait_health(up.url, "healthy", timeout=5.0)
    node = cluster.nodes[1]
    with frozen(node):
        body = wait_health(up.url, "degraded", timeout=5.0)
        assert body["metadata_status"] == "healthy", body
        assert any(node.url in x and "no answer" in x for x in body["reasons"]), body
    wait_health(up.url, "healthy", timeout=10.0)
