"""POST /video with a caller-chosen video_id (the uploader's, so a create retried after a
timeout is the same create): a replay returns the same record and makes no second video; the
same id with another title is 409; a malformed id is 400. A real metadata process."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from shoal.testing.metadata import metadata_service


def test_create_with_video_id_is_idempotent(tmp_path: Path) -> None:
    with metadata_service(tmp_path / "meta", "--maintenance-interval", "0") as meta:
        vid = str(uuid.uuid4())
        body = {"title": "once", "duration_sec": 12.5, "video_id": vid}
        first = httpx.post(meta.url + "/video", json=body, timeout=10)
        again = httpx.post(meta.url + "/video", json=body, timeout=10)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert first.json() == again.json() == {"video_id": vid, "upload_url": f"/upload/{vid}"}
        videos = httpx.get(meta.url + "/videos", params={"status": "any"}, timeout=10).json()
        assert [v["video_id"] for v in videos] == [vid]  # one record, still uploading

        other = httpx.post(meta.url + "/video", json={**body, "title": "another"}, timeout=10)
        assert other.status_code == 409 and vid in other.json()["detail"], other.text
        bad = httpx.post(meta.url + "/video", json={**body, "video_id": "a/b"}, timeout=10)
        assert bad.status_code == 400 and "detail" in bad.json(), bad.text

        plain = httpx.post(meta.url + "/video", json={"title": "no id"}, timeout=10)
        assert plain.status_code == 200 and plain.json()["video_id"] != vid
        assert len(httpx.get(meta.url + "/videos", params={"status": "any"}, timeout=10).json()) == 2
        assert httpx.get(meta.url + "/videos", timeout=10).json() == []  # neither is active yet
