"""Video life cycle against a real metadata service and real storage nodes: a video is
`uploading` until every chunk 0..n-1 is committed and it is completed, then `active`; a failed,
abandoned or deleted video's chunks are collected (pieces gone from the nodes, records and
sums gone from the service); listings and manifests show active videos unless asked;
counters survive a restart."""

from __future__ import annotations

import time

import httpx

from shoal.testing.metadata import Cluster

from .conftest import blob, commit


def new_video(m: str, title: str = "v", video_id: str | None = None) -> str:
    body = {"title": title, "duration_sec": 9}
    if video_id:
        body["video_id"] = video_id
    r = httpx.post(m + "/video", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["video_id"]


def store(c: Cluster, vid: str, seq: int, duration: float = 3.0, size: int = 32 * 1024) -> tuple[str, bytes]:
    """Put chunk `seq` on the 3 nodes and commit it; returns (chunk id, bytes)."""
    cid, data = f"{vid}-chunk-{seq:03d}", blob(seq, size)
    for u in c.urls:
        c.put(u, cid, data)
    r = commit(c.meta.url, cid, vid, seq, data, c.urls, start_sec=seq * 3.0, duration_sec=duration)
    assert r.status_code == 200, r.text
    return cid, data


def held(c: Cluster, cid: str) -> int:
    return sum(httpx.head(f"{u}/chunk/{cid}", timeout=5).status_code == 200 for u in c.urls)


def run_maintenance(m: str) -> dict:
    r = httpx.post(m + "/maintenance/run", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_complete_only_when_every_chunk_is_committed(tmp_path):
    with Cluster(tmp_path, nodes=3) as c:
        m = c.meta.url
        vid = new_video(m, "three chunks")
        store(c, vid, 0, duration=2.5, size=40_000)
        store(c, vid, 2, duration=0.4, size=9_000)
        # uploading: hidden from the default listing and manifest, shown when asked
        assert vid not in [v["video_id"] for v in httpx.get(m + "/videos").json()]
        listed = httpx.get(m + "/videos", params={"status": "uploading"}).json()
        assert [v["status"] for v in listed if v["video_id"] == vid] == ["uploading"]
        r = httpx.get(f"{m}/manifest/{vid}")
        assert r.status_code == 409 and "uploading" in r.json()["detail"]
        assert httpx.get(f"{m}/manifest/{vid}", params={"status": "uploading"}).status_code == 200
        # chunk 1 missing: refused, naming it
        r = httpx.post(f"{m}/video/{vid}/complete", json={"total_chunks": 3})
        assert r.status_code == 409, r.text
        assert r.json()["errors"]["missing"] == [1] and "1 of 3 chunks" in r.json()["detail"]
        r = httpx.post(f"{m}/video/{vid}/complete", json={})  # as many as committed: 2, but seq 2 > 1
        assert r.status_code == 409 and r.json()["errors"]["missing"] == [1]
        store(c, vid, 1, duration=3.1, size=70_000)
        r = httpx.post(f"{m}/video/{vid}/complete", json={"total_chunks": 3})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "active" and r.json()["total_chunks"] == 3
        again = httpx.post(f"{m}/video/{vid}/complete", json={"total_chunks": 3})
        assert again.status_code == 200  # idempotent (a retried completion)
        assert httpx.post(f"{m}/video/{vid}/complete", json={"total_chunks": 4}).status_code == 409
        # active: listed, manifest with the real sizes and durations
        assert vid in [v["video_id"] for v in httpx.get(m + "/videos").json()]
        man = httpx.get(f"{m}/manifest/{vid}").json()
        assert man["status"] == "active" and man["total_chunks"] == 3
        assert [ch["duration_sec"] for ch in man["chunks"]] == [2.5, 3.1, 0.4]
        assert [ch["size_bytes"] for ch in man["chunks"]] == [40_000, 70_000, 9_000]
        assert man["chunk_duration_sec"] == 3.1 and man["chunk_size_bytes"] == 70_000  # the max
        assert abs(man["chunk_duration_mean_sec"] - 2.0) < 1e-9
        assert man["chunk_size_mean_bytes"] == 39_667 and man["total_bytes"] == 119_000
        assert abs(man["chunks_duration_sec"] - 6.0) < 1e-9
        # an active video takes no new chunk and cannot fail
        cid, data = f"{vid}-chunk-003", blob(3)
        for u in c.urls:
            c.put(u, cid, data)
        r = commit(m, cid, vid, 3, data, c.urls)
        assert r.status_code == 409 and "active" in r.json()["detail"]
        assert httpx.post(f"{m}/video/{vid}/fail", json={"reason": "x"}).status_code == 409


def test_failed_and_deleted_videos_are_collected(tmp_path):
    with Cluster(tmp_path, nodes=3) as c:
        m = c.meta.url
        before = httpx.get(m + "/stats").json()
        # a failed upload: marked by its uploader, then its chunks are collected
        bad = new_video(m, "fails", video_id="failing-upload-1")
        cid0, _ = store(c, bad, 0)
        cid1, _ = store(c, bad, 1)
        r = httpx.post(f"{m}/video/{bad}/fail", json={"reason": "node died mid-way"})
        assert r.status_code == 200 and r.json()["status"] == "failed", r.text
        assert httpx.post(f"{m}/video/{bad}/fail", json={}).status_code == 200  # idempotent
        assert httpx.post(f"{m}/video/{bad}/complete", json={}).status_code == 409
        r = httpx.get(f"{m}/manifest/{bad}")
        assert r.status_code == 409 and "node died mid-way" in r.json()["detail"]
        listed = httpx.get(m + "/videos", params={"status": "failed"}).json()
        assert [v.get("reason") for v in listed if v["video_id"] == bad] == ["node died mid-way"]
        cid2, data2 = f"{bad}-chunk-002", blob(2)
        for u in c.urls:
            c.put(u, cid2, data2)
        assert commit(m, cid2, bad, 2, data2, c.urls).status_code == 409  # takes no new chunk
        assert held(c, cid0) == 3
        maint = run_maintenance(m)
        assert held(c, cid0) == 0 and held(c, cid1) == 0
        assert maint["video_chunks_collected"] == 2 and maint["video_pieces_deleted"] == 6
        man = httpx.get(f"{m}/manifest/{bad}", params={"status": "failed"}).json()
        assert man["chunks"] == [] and man["total_chunks"] == 0
        # a complete video, deleted
        vid = new_video(m, "deleted later")
        cid, _ = store(c, vid, 0)
        assert httpx.post(f"{m}/video/{vid}/complete", json={"total_chunks": 1}).status_code == 200
        mid = httpx.get(m + "/stats").json()
        assert mid["total_videos"] == before["total_videos"] + 1 and mid["total_chunks"] == 1
        r = httpx.delete(f"{m}/video/{vid}")
        assert r.status_code == 200 and r.json()["previous_status"] == "active", r.text
        assert httpx.delete(f"{m}/video/{vid}").status_code == 404
        assert httpx.get(f"{m}/manifest/{vid}", params={"status": "any"}).status_code == 404
        assert vid not in [v["video_id"] for v in httpx.get(m + "/videos", params={"status": "any"}).json()]
        run_maintenance(m)
        assert held(c, cid) == 0
        after = httpx.get(m + "/stats").json()
        assert after["total_chunks"] == 0 and after["total_replicas"] == 0
        assert after["total_videos"] == before["total_videos"] and after["failed_videos"] == 1
        # a deleted id is never reused (its chunks' Paxos instances live on in the acceptors)
        r = httpx.post(m + "/video", json={"title": "deleted later", "duration_sec": 9, "video_id": vid})
        assert r.status_code == 409 and "deleted" in r.json()["detail"]


def test_abandoned_upload_fails_after_grace_and_counters_persist(tmp_path):
    args = ("--maintenance-interval", "0", "--upload-grace", "1.5")
    with Cluster(tmp_path, nodes=3, meta_args=args) as c:
        m = c.meta.url
        idle = new_video(m, "abandoned")
        cid, _ = store(c, idle, 0)
        busy = new_video(m, "still going")
        run_maintenance(m)
        assert httpx.get(f"{m}/manifest/{idle}", params={"status": "uploading"}).status_code == 200
        time.sleep(1.0)
        store(c, busy, 0)  # progress: its grace starts again
        time.sleep(0.8)
        maint = run_maintenance(m)
        assert maint["uploads_abandoned"] == 1
        man = httpx.get(f"{m}/manifest/{idle}", params={"status": "failed"}).json()
        assert man["reason"].startswith("abandoned: no progress") and man["chunks"] == []
        assert held(c, cid) == 0
        assert httpx.get(f"{m}/manifest/{busy}", params={"status": "uploading"}).status_code == 200
        stats = httpx.get(m + "/stats").json()
        assert stats["commits"] == 2 and stats["paxos_messages"] >= 2 * 6  # 2n each
        c.meta.stop()
        c.meta.start()
        again = httpx.get(m + "/stats").json()
        assert (again["commits"], again["paxos_messages"]) == (stats["commits"], stats["paxos_messages"])
        assert again["failed_videos"] == 1 and again["uploading_videos"] == 1
