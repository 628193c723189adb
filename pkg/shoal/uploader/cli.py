"""`shoal upload FILE --title T (--uploader-url URL | --metadata-url URL)`.

Through an uploader service: stream the file to POST /upload and follow its status. Direct:
run the same pipeline in this process (probe, FFmpeg, storage nodes, commits) against the
metadata service. Either way it shows progress and prints the video id on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import httpx


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the video file (MP4, AVI, MOV, MKV, WebM or FLV)")
    p.add_argument("--title", required=True, help="video title")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--uploader-url", help="upload through this uploader service")
    where.add_argument("--metadata-url", help="direct mode: chunk and distribute from this process")
    p.add_argument("--redundancy", choices=["replication", "erasure_coding"], help="force a mode")
    p.add_argument("--concurrency", type=int, default=4, help="direct mode: chunks in parallel")
    p.add_argument("--quiet", action="store_true", help="print only the video id")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SHOAL_API_KEY"),
        help="uploader API key for an uploader started with --auth-dir (default $SHOAL_API_KEY)",
    )
    p.add_argument(
        "--auth-dir",
        default=None,
        help="direct mode against services with --auth-dir: sign as a cluster node with its secret",
    )
    p.add_argument(
        "--tls-ca", default=None, help="CA certificate (PEM) the services' HTTPS is verified against"
    )


class Progress:
    """One line redrawn in place on a terminal, or a line per change otherwise."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self.last: tuple[str, int] | None = None

    def show(self, status: str, progress: int, detail: str = "") -> None:
        if self.quiet or (status, progress) == self.last:
            return
        self.last = (status, progress)
        filled = progress * 30 // 100
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {progress:3d}% {status} {detail}".rstrip()
        if self.tty:
            self.out.write("\r" + line.ljust(79))
            if status in ("completed", "failed"):
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()


def _via_service(args: argparse.Namespace, bar: Progress) -> str:
    import httpx

    base = args.uploader_url.rstrip("/")
    path = Path(args.file)
    size = path.stat().st_size
    sent = 0

    def chunks():
        nonlocal sent
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                sent += len(piece)
                bar.show("uploading", sent * 10 // max(size, 1))
                yield piece

    data = {"title": args.title}
    if args.redundancy:
        data["redundancy_mode"] = args.redundancy
    # httpx streams the file object; wrap it so progress shows while it goes out
    files = {"video": (path.name, _Reader(chunks()), "application/octet-stream")}
    from shoal.web.auth import BearerAuth
    from shoal.web.tls import client_verify

    auth = BearerAuth(args.api_key) if args.api_key else None
    with httpx.Client(
        timeout=httpx.Timeout(600.0, connect=5.0), auth=auth, verify=client_verify(args.tls_ca)
    ) as client:
        r = client.post(f"{base}/upload", data=data, files=files)
        if r.status_code != 200:
            raise SystemExit(f"shoal upload: {r.status_code}: {_detail(r)}")
        body = r.json()
        status_url = base + body["status_url"]
        while True:
            st = client.get(status_url).json()
            bar.show(st["status"], st["progress"], _chunks(st))
            if st["status"] == "completed":
                return body["video_id"]
            if st["status"] == "failed":
                raise SystemExit(f"shoal upload: failed: {st.get('error')}")
            time.sleep(0.25)


class _Reader:
    """A file-like object over a generator of byte strings (httpx reads it piece by piece)."""

    def __init__(self, gen) -> None:
        self.gen = gen
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            piece = next(self.gen, None)
            if piece is None:
                break
            self.buf += piece
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return r.text[:200]


def _chunks(st: dict) -> str:
    total = st.get("total_chunks")
    return f"({st.get('chunks_uploaded', 0)}/{total} chunks)" if total else ""


async def _direct(args: argparse.Namespace, bar: Progress) -> str:
    import httpx

    from shoal.kv import MemoryStore
    from shoal.uploader.media import InvalidVideo
    from shoal.uploader.metaclient import MetadataClient
    from shoal.uploader.pipeline import Pipeline, Settings
    from shoal.uploader.sessions import SessionStore

    source = Path(args.file)
    from shoal.storage.nodeauth import auth_for
    from shoal.web.tls import client_verify

    async with httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=3.0),
        auth=auth_for({"auth_dir": args.auth_dir}, "shoal-upload"),
        verify=client_verify(args.tls_ca),
    ) as http:
        sessions = SessionStore(MemoryStore())
        with tempfile.TemporaryDirectory(prefix="shoal-upload-") as work:
            pipeline = Pipeline(
                MetadataClient(args.metadata_url, http),
                http,
                sessions,
                work,
                Settings(concurrency=max(1, args.concurrency), keep_work_files=True),
            )
            s = await sessions.create(args.title, source.name)
            try:
                await pipeline.check_and_register(s, source, args.redundancy)
            except InvalidVideo as exc:
                raise SystemExit(f"shoal upload: {exc}") from None
            task = asyncio.create_task(pipeline.process(s, source))
            while not task.done():
                bar.show(
                    s.status,
                    s.progress,
                    _chunks({"total_chunks": s.total_chunks, "chunks_uploaded": s.chunks_uploaded}),
                )
                await asyncio.sleep(0.1)
            await task
            bar.show(s.status, s.progress)
            if s.status != "completed":
                raise SystemExit(f"shoal upload: failed: {s.error}")
            assert s.video_id is not None
            return s.video_id


def run_upload(args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        print(f"shoal upload: no such file: {args.file}", file=sys.stderr)
        return 2
    bar = Progress(sys.stderr, args.quiet)
    try:
        if args.uploader_url:
            video_id = _via_service(args, bar)
        else:
            video_id = asyncio.run(_direct(args, bar))
    except SystemExit as exc:
        print(exc.code, file=sys.stderr)
        return 1
    except Exception as exc:  # MetadataError, connection errors: say what, no traceback
        print(f"shoal upload: {exc}", file=sys.stderr)
        return 1
    print(video_id)
    return 0
