"""Dashboard API: the documented shapes with real values, errors in the {"detail"} envelope, and
schemathesis over /openapi.json against a served dashboard (no 5xx, schemas respected)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from shoal.client import Player
from shoal.client.dashboard import Dashboard, build_app
from shoal.client.models import Metrics, Performance, Stats, Status, Stream
from shoal.testing import ServiceProcess, asgi_client
from shoal.testing.fuzz import run_schemathesis
from shoal.testing.metadata import metadata_service
from tests.client.conftest import build_manifest

SHAPES = {
    "/api/status": Status,
    "/api/stats": Stats,
    "/api/metrics": Metrics,
    "/api/performance": Performance,
    "/api/stream": Stream,
}


async def test_idle_dashboard_answers_every_shape() -> None:
    async with asgi_client(build_app(Dashboard({}))) as c:
        for path, shape in SHAPES.items():
            r = await c.get(path)
            assert r.status_code == 200, (path, r.text)
            msgspec.convert(r.json(), shape)
        assert (await c.get("/api/status")).json()["video_id"] is None
        page = await c.get("/")
        assert page.status_code == 200 and "<canvas" in page.text and "<video" in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
        js = await c.get("/static/dashboard.js")
        assert "MediaSource" in js.text and "//cdn" not in js.text
        r = await c.get("/api/segment/0")
        assert r.status_code == 404 and "detail" in r.json()


async def test_shapes_carry_real_values_after_playback(nodes, fmp4: bytes, tmp_path: Path) -> None:
    m = build_manifest("dashv", fmp4, nodes, chunk_size=len(fmp4) // 4 + 1, seconds_per_chunk=3.0)
    d = Dashboard({})
    d.player = Player("dashv", manifest=m, speed=20.0, record_view=False, sample_every=0.05)
    async with asgi_client(build_app(d)) as c:
        await asyncio.wait_for(d.player.play(), 60)
        got = {path: (await c.get(path)).json() for path in SHAPES}
        for path, shape in SHAPES.items():
            msgspec.convert(got[path], shape)
        status, stats, perf = got["/api/status"], got["/api/stats"], got["/api/performance"]
        assert status["video_id"] == "dashv" and status["buffer"]["state"] == "finished"
        assert status["buffer_stats"]["total_chunks_played"] == 4
        assert (
            status["scheduler_stats"]["successful"] == 4 and status["scheduler_stats"]["success_rate"] == 1.0
        )
        served = {u for u, n in stats["nodes"].items() if n["downloads"]}
        assert served <= {n.url for n in nodes} and sum(stats["nodes"][u]["downloads"] for u in served) == 4
        assert all(status["network_stats"][u]["bandwidth_mbps"] > 0 for u in served)
        assert perf["startup_latency_sec"] > 0 and perf["chunks_played"] == 4
        assert perf["average_throughput_mbps"] > 0
        metrics = got["/api/metrics"]
        assert len(metrics["buffer_history"]) >= 2 and max(p["level"] for p in metrics["buffer_history"]) > 0
        assert set(metrics["node_score_history"]) == set(status["node_scores"])
        stream = got["/api/stream"]
        assert stream["available"] == 4 and stream["mime"].startswith('video/mp4; codecs="avc1.')
        seg = await c.get("/api/segment/2")
        assert (
            seg.status_code == 200
            and seg.content == fmp4[2 * (len(fmp4) // 4 + 1) : 3 * (len(fmp4) // 4 + 1)]
        )


async def test_play_validates_its_input() -> None:
    async with asgi_client(build_app(Dashboard({}))) as c:
        assert (await c.post("/api/play", json={"video_id": "x"})).status_code == 409  # no metadata URL
        for bad in (
            {"video_id": "a/b"},
            {"video_id": "x", "strategy": "fastest"},
            {"video_id": "x", "speed": 0},
            {},
        ):
            r = await c.post("/api/play", json=bad)
            assert r.status_code in (400, 409) and "detail" in r.json(), (bad, r.text)
        r = await c.post("/api/play", content=b"{not json")
        assert r.status_code == 400


@pytest.fixture(scope="module")
def served_dashboard(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dash")
    with (
        metadata_service(root / "meta") as meta,
        ServiceProcess("dashboard", root / "dash", ["--metadata-url", meta.url]) as d,
    ):
        yield d


def test_play_unknown_video_is_404(served_dashboard: ServiceProcess) -> None:
    import httpx

    r = httpx.post(f"{served_dashboard.url}/api/play", json={"video_id": "no-such-video"}, timeout=10)
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_schemathesis(served_dashboard: ServiceProcess) -> None:
    r = run_schemathesis(
        served_dashboard.url,
        checks="not_a_server_error,response_schema_conformance",
        max_examples=30,
        max_time=25,
    )
    assert r.returncode == 0, r.stdout[-4000:]
