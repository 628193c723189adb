"""The smart client's dashboard: live status, charts and the video itself, on port 8888.

    shoal serve dashboard --port 8888 --metadata-url URL [--video-id ID]   # or POST /api/play
    shoal play ID --metadata-url URL --dashboard                          # the same app

The Player runs inside the app's event loop (one worker), so every answer is read from the
live session. GET / is a page that polls the /api routes, draws its charts with canvas, and
feeds the reassembled fMP4 segments (GET /api/segment/{n}) to a <video> element through
Media Source Extensions. Nothing is loaded from outside this server.

With `--auth-dir D` every /api route needs a viewer key (the page asks for one and keeps it in
the browser's localStorage, or takes it from the URL as `#key=...`); the page and its script
stay open. Towards the metadata service and the storage nodes the player uses `--api-key`
(default $SHOAL_API_KEY), or without one, a node token minted from the auth dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.client.models import Metrics, Performance, PlayRequest, Stats, Status, Stream
from shoal.client.scheduler import STRATEGIES
from shoal.client.session import Player, PlayerError
from shoal.storage.nodeauth import NodeCredentials
from shoal.web import DETAIL_ENVELOPE, Api, ApiError
from shoal.web import create_app as web_app
from shoal.web.api import Endpoint
from shoal.web.auth import VIEWER, AuthLayer, Requirement, add_auth_arguments, check_startup
from shoal.web.tls import add_client_tls_argument, options_verify

TITLE = "Smart client dashboard"
MAX_WORKERS = 1  # the session lives in the worker's memory

log = logging.getLogger("shoal.client")
# "." and ".." are path segments, never ids: a URL with them names another resource
VIDEO_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.:-]{1,128}$")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--metadata-url", default=None, help="metadata service (needed to play anything)")
    parser.add_argument("--video-id", default=None, help="start playing this video at start-up")
    parser.add_argument("--strategy", choices=STRATEGIES, default="smart", help="chunk scheduling")
    parser.add_argument("--speed", type=float, default=1.0, help="playback clock speed (tests: 10, 20)")
    parser.add_argument("--parallel", type=int, default=4, help="chunk downloads in flight")
    parser.add_argument("--output", default=None, help="also write the stream to this file")
    parser.add_argument(
        "--api-key",
        default=None,
        help="viewer API key for the metadata service and storage nodes (default $SHOAL_API_KEY)",
    )
    add_auth_arguments(parser)
    add_client_tls_argument(parser)


def check_options(options: dict) -> None:
    check_startup(options, "dashboard")


def policy(ep: Endpoint) -> Requirement | None:
    """The page and its script are open (they hold nothing); every /api route needs a viewer."""
    return VIEWER if ep.path.startswith("/api/") else None


def outbound_credential(options: dict) -> str | None:
    """What the player sends upstream: --api-key, $SHOAL_API_KEY, or a node token (auth dir)."""
    key = options.get("api_key") or os.environ.get("SHOAL_API_KEY")
    if key:
        return key
    creds = NodeCredentials.from_options(options, "dashboard")
    return creds.token(ttl=86400) if creds else None


def _static(name: str) -> bytes:
    return resources.files("shoal.client").joinpath("static", name).read_bytes()


class Dashboard:
    """Holds the current Player; a new POST /api/play replaces it."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.player = Player.idle()

    def new_player(self, video_id: str, strategy: str, speed: float, output: str | None = None) -> Player:
        return Player(
            video_id,
            self.options.get("metadata_url"),
            strategy=strategy,
            speed=speed,
            parallel=int(self.options.get("parallel") or 4),
            output=output,
            api_key=outbound_credential(self.options) or "",
            ssl=options_verify(self.options),
        )

    async def play(self, player: Player) -> None:
        await self.player.stop()
        self.player = player
        task = player.start()
        task.add_done_callback(_log_end)


def _log_end(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("playback failed: %s", exc)
    else:
        log.info("playback finished: %s", task.result())


def make_api(d: Dashboard) -> Api:
    api = Api(tags=["dashboard"])

    @api.get("/", summary="Dashboard page (HTML)", media_type="text/html")
    async def page(request: Request) -> Response:
        return Response(_static("dashboard.html"), media_type="text/html; charset=utf-8")

    @api.get("/static/dashboard.js", summary="Dashboard script", media_type="application/javascript")
    async def script(request: Request) -> Response:
        return Response(_static("dashboard.js"), media_type="application/javascript; charset=utf-8")

    @api.get("/api/status", response=Status, summary="Current client status")
    async def status(request: Request) -> dict:
        return d.player.status()

    @api.get("/api/stats", response=Stats, summary="Detailed statistics")
    async def stats(request: Request) -> dict:
        return d.player.stats()

    @api.get("/api/metrics", response=Metrics, summary="Historical metrics for charting")
    async def metrics(request: Request) -> dict:
        return d.player.metrics()

    @api.get("/api/performance", response=Performance, summary="Performance summary")
    async def performance(request: Request) -> dict:
        return d.player.performance()

    @api.get(
        "/api/stream", response=Stream, summary="Codec type and available segments, for the page's player"
    )
    async def stream(request: Request) -> dict:
        return d.player.stream()

    @api.get(
        "/api/segment/{seq:int}",
        summary="Segment (chunk) n of the reassembled fMP4 stream",
        media_type="application/octet-stream",
        extra_responses={404: "not downloaded yet, or dropped from memory"},
    )
    async def segment(request: Request, seq: int) -> Response:
        data = d.player.segments.get(seq)
        if data is None:
            raise ApiError(404, f"segment {seq} is not available")
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @api.post(
        "/api/play",
        body=PlayRequest,
        response=Status,
        summary="Start playing a video (replaces the current session)",
        extra_responses={
            404: "no such video",
            409: "no metadata service configured",
            502: "metadata unreachable",
        },
    )
    async def play(request: Request, body: PlayRequest) -> dict:
        if not VIDEO_ID.match(body.video_id):
            raise ApiError(400, "video_id must be 1-128 characters of [A-Za-z0-9_.:-], not . or ..")
        if body.strategy not in STRATEGIES:
            raise ApiError(400, f"strategy must be one of {', '.join(STRATEGIES)}")
        if not 0.1 <= body.speed <= 100:
            raise ApiError(400, "speed must be between 0.1 and 100")
        if not d.options.get("metadata_url"):
            raise ApiError(409, "this dashboard has no --metadata-url: it cannot look videos up")
        player = d.new_player(body.video_id, body.strategy, body.speed)
        try:
            await player.prepare()
        except PlayerError as exc:
            status = 404 if "not found" in str(exc) else 502
            raise ApiError(status, str(exc)) from None
        await d.play(player)
        return player.status()

    return api


def create_app(options: dict) -> Any:
    d = Dashboard(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        video_id = options.get("video_id")
        if video_id:
            player = d.new_player(
                video_id,
                options.get("strategy") or "smart",
                float(options.get("speed") or 1.0),
                options.get("output"),
            )
            await d.play(player)
        try:
            yield
        finally:
            await d.player.stop()

    return build_app(d, lifespan)


def build_app(d: Dashboard, lifespan: Any = None) -> Any:
    """The app around a Dashboard (tests build their own around a Player they control)."""
    layer = AuthLayer.from_options(d.options, DETAIL_ENVELOPE)
    app = web_app(
        title=TITLE, apis=layer.secure([make_api(d)], policy), envelope=DETAIL_ENVELOPE, lifespan=lifespan
    )
    app.state.dashboard = d
    return layer.wrap(app)
