"""Test and bench helpers for storage nodes: start one, and record what it tells a metadata service."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shoal.testing import ServiceProcess, free_port


def storage_node(data_dir: str | Path, *args: str, port: int | None = None, **kw: Any) -> ServiceProcess:
    """`shoal serve storage` on 127.0.0.1 (not started yet: use `with` or .start())."""
    port = port or free_port()
    return ServiceProcess("storage", data_dir, ["--node-id", f"node-{port}", *args], port=port, **kw)


class MetadataRecorder:
    """A stand-in for the metadata service's node endpoints (POST /nodes/register and
    /nodes/{id}/heartbeat) that records every call. Used only until the real metadata
    service exists; it answers what the spec documents.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.calls: list[dict] = []
        self.forget = False  # answer heartbeats with 404, as a restarted metadata service would
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = {"path": url.path, "query": {k: v[0] for k, v in parse_qs(url.query).items()}}
                call["json"] = json.loads(raw) if raw else None
                recorder.calls.append(call)
                if url.path == "/nodes/register":
                    body = {"status": "registered", "node_id": call["query"].get("node_id")}
                    status = 200
                elif url.path.endswith("/heartbeat") and not recorder.forget:
                    body, status = {"status": "ok", "message": "Heartbeat updated"}, 200
                else:
                    body, status = {"detail": "node not found"}, 404
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._handler = Handler
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MetadataRecorder:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, suffix: str) -> list[dict]:
        return [c for c in self.calls if c["path"].endswith(suffix)]

    def __enter__(self) -> MetadataRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
