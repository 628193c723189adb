"""Upload bytes per key per day on a real `shoal serve uploader` (--upload-quota): 429 with
Retry-After (seconds to midnight UTC) in `{"detail"}`, charged as the body arrives (a streamed
upload is cut off where it crosses, nothing of it kept), per key, and kept across a restart."""

from __future__ import annotations

import os
import socket
import time

import httpx

from shoal.testing.authstack import bearer
from shoal.testing.uploader import uploader_service
from shoal.web.auth import AuthDir

UNREACHABLE = "http://127.0.0.1:9"
QUOTA = 300_000


def to_midnight() -> float:
    return 86400 - time.time() % 86400


def assert_quota_refusal(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert set(r.json()) == {"detail"} and "quota" in r.json()["detail"]
    assert abs(int(r.headers["retry-after"]) - to_midnight()) <= 5


def upload(url: str, key: str, content, headers: dict | None = None) -> httpx.Response:
    hdrs = {**bearer(key), "Content-Type": "multipart/form-data; boundary=BOUNDARY", **(headers or {})}
    return httpx.post(f"{url}/upload", content=content, headers=hdrs, timeout=60)


def multipart(size: int) -> bytes:
    return (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="title"\r\n\r\nt\r\n'
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n\r\n'
        + os.urandom(size)
        + b"\r\n--BOUNDARY--\r\n"
    )


def test_upload_quota_per_key_per_day(tmp_path):
    d = AuthDir(tmp_path / "auth")
    d.init()
    a, b = (d.create_key("uploader", name)[1] for name in ("a", "b"))
    data = tmp_path / "up"
    args = ["--auth-dir", str(tmp_path / "auth"), "--upload-quota", f"{QUOTA}/day"]
    svc = uploader_service(data, UNREACHABLE, *args)
    with svc:
        body = multipart(200_000)
        r = upload(svc.url, a, body)  # within the quota: judged on its own merits (not a video)
        assert r.status_code in (400, 503), r.text
        r = upload(svc.url, a, body)  # declares more than is left: refused before it is read
        assert_quota_refusal(r)
        assert "declares" in r.json()["detail"]

        # Chunked, no length, and never finished: the 429 comes while the client is still sending.
        with socket.create_connection(("127.0.0.1", svc.port), timeout=15) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=BOUNDARY\r\n"
                + f"Authorization: Bearer {a}\r\n\r\n".encode()
            )
            head = multipart(0)[: -len(b"\r\n--BOUNDARY--\r\n")]  # the form's head, then the video
            cut = False
            for piece in [head] + [os.urandom(16_384) for _ in range(20)]:  # 320 KiB > what is left
                try:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    cut = True  # the node answered and closed while we were still sending
                    break
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                try:
                    got = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not got:
                    break
                answer += got
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 429"), (cut, answer[:300])
        hdrs, _, payload = rest.partition(b"\r\n\r\n")
        assert b"retry-after:" in hdrs.lower() and b"quota" in payload
        assert list((data / "incoming").iterdir()) == []  # nothing of it kept
        r = upload(svc.url, b, body)  # another key has its own count
        assert r.status_code in (400, 503), r.text
    svc = uploader_service(data, UNREACHABLE, *args, port=svc.port)
    with svc:  # the count survived the restart
        r = upload(svc.url, a, multipart(10))
        assert_quota_refusal(r)
        assert "used up" in r.json()["detail"]
        r = upload(svc.url, b, multipart(10))
        assert r.status_code in (400, 503), r.text
