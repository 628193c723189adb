"""The uploader with --auth-dir (issue #19), against a metadata service and storage nodes that
also run with it, all real processes: uploads need an uploader key; the uploader's own calls
(metadata, chunk PUTs, commits that run signed Paxos) are signed as a node, so an upload only
completes if every one of them was accepted. schemathesis with credentials finds no 5xx.
"""

from __future__ import annotations

import time

import httpx
import pytest

from shoal.testing.authstack import auth_dir_with_keys, signed_video_cluster
from shoal.testing.fuzz import run_schemathesis
from shoal.testing.uploader import make_video, uploader_service


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("authstack")
    auth_dir, keys = auth_dir_with_keys(root, ("viewer", "uploader"))
    with signed_video_cluster(root, auth_dir, keys["viewer"]) as (meta, _nodes):
        with uploader_service(root / "up", meta.url, "--auth-dir", auth_dir) as up:
            video = make_video(root / "v.mp4", size="320x240", seconds=3, bitrate="1M")
            yield {"meta": meta, "up": up, "keys": keys, "video": video}


def h(stack, role: str) -> dict:
    return {"Authorization": f"Bearer {stack['keys'][role]}"}


def post_upload(stack, headers: dict) -> httpx.Response:
    with open(stack["video"], "rb") as f:
        return httpx.post(
            stack["up"].url + "/upload",
            data={"title": "auth"},
            files={"video": ("v.mp4", f, "video/mp4")},
            headers=headers,
            timeout=60,
        )


def test_upload_needs_an_uploader_and_completes_signed(stack):
    assert httpx.get(stack["up"].url + "/health").status_code == 200
    r = post_upload(stack, {})
    assert r.status_code == 401 and "detail" in r.json()
    r = post_upload(stack, h(stack, "viewer"))
    assert r.status_code == 403 and "uploader" in r.json()["detail"]
    r = post_upload(stack, h(stack, "uploader"))
    assert r.status_code == 200, r.text
    status_url = stack["up"].url + r.json()["status_url"]
    assert httpx.get(status_url).status_code == 401
    assert httpx.get(status_url, headers=h(stack, "viewer")).status_code == 403
    deadline = time.monotonic() + 90
    st: dict = {}
    while time.monotonic() < deadline:
        st = httpx.get(status_url, headers=h(stack, "uploader")).json()
        if st["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert st["status"] == "completed", st
    # what it stored went through signed PUTs and a signed commit: the manifest names 3 nodes each
    manifest = httpx.get(f"{stack['meta'].url}/manifest/{r.json()['video_id']}", headers=h(stack, "viewer"))
    assert manifest.status_code == 200
    chunks = manifest.json()["chunks"]
    assert chunks and all(len(c["replicas"]) == 3 for c in chunks)
    node = chunks[0]["replicas"][0]
    got = httpx.get(f"{node}/chunk/{chunks[0]['chunk_id']}", headers=h(stack, "viewer"))
    assert got.status_code == 200 and len(got.content) == chunks[0]["size_bytes"]


def test_openapi_declares_security(stack):
    doc = httpx.get(stack["up"].url + "/openapi.json").json()
    assert doc["paths"]["/upload"]["post"]["x-shoal-role"] == "uploader"
    assert doc["paths"]["/upload/status/{upload_session_id}"]["get"]["x-shoal-role"] == "uploader"
    assert "security" not in doc["paths"]["/health"]["get"]


def test_schemathesis_with_credentials_finds_no_server_error(stack):
    result = run_schemathesis(
        stack["up"].url,
        max_examples=20,
        max_time=40,
        headers=[f"Authorization: Bearer {stack['keys']['uploader']}"],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
