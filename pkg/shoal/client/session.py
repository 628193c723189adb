"""One playback: manifest, network monitor, scheduler, buffer and output, and what they report.

    player = Player(video_id, metadata_url="http://127.0.0.1:8080", output="out.mp4")
    summary = await player.play()        # returns when the video has played to its end

The downloader keeps up to `parallel` chunks in flight, in sequence order, inside the buffer's
window (refill below 15 s, up to 30 s ahead); verified chunks go to the buffer, to the output
in order, and to the dashboard's segment store. status()/stats()/metrics()/performance() are
the dashboard's documented shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from typing import Any

import aiohttp

from shoal.client.buffer import Buffer
from shoal.client.fetch import Timeouts
from shoal.client.manifest import ChunkRef, Manifest, ManifestError, parse_manifest
from shoal.client.monitor import NetworkMonitor, new_scores
from shoal.client.mse import mse_type
from shoal.client.scheduler import SMART, ChunkUnavailable, Hedging, Scheduler
from shoal.client.sink import OrderedWriter

log = logging.getLogger("shoal.client")

HISTORY = 1200  # points kept per chart series
# A ping 25 ms slower halves a node's score (the scoring default is 10 ms): a loaded host's
# ping jitter (10-20 ms on loopback) does not decide alone which healthy node gets a chunk,
# while a node 50+ ms away (the throttled one in the scenarios) still ranks far below.
LATENCY_SCALE_MS = 25.0


async def _detail(r: aiohttp.ClientResponse) -> str:
    """The {"detail"} of an error answer (or the start of its body)."""
    text = (await r.text())[:500]
    try:
        body = json.loads(text)
    except ValueError:
        return text or r.reason or str(r.status)
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


class PlayerError(Exception):
    """The video cannot be played (no such video, not active, chunks missing, metadata service
    unreachable or silent past its deadline, a chunk no node could serve)."""


class Player:
    def __init__(
        self,
        video_id: str | None,
        metadata_url: str | None = None,
        *,
        manifest: Manifest | dict | None = None,
        strategy: str = SMART,
        parallel: int = 4,
        speed: float = 1.0,
        output: str | None = None,
        timeouts: Timeouts | None = None,
        hedging: Hedging | None = None,
        start_sec: float = 10.0,
        refill_sec: float = 15.0,
        target_sec: float = 30.0,
        ping_interval: float = 3.0,
        sample_every: float = 0.5,
        keep_segments: int = 256,
        api_key: str | None = None,
        ssl: Any = True,
        record_view: bool = True,
        metadata_timeout: float = 5.0,
        give_up_sec: float | None = 30.0,
        node_report_wait: float = 0.2,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.video_id = video_id
        self.metadata_url = metadata_url.rstrip("/") if metadata_url else None
        self.manifest = parse_manifest(manifest) if isinstance(manifest, dict) else manifest
        self.strategy = strategy
        self.parallel = parallel
        self.speed = speed
        self.timeouts = timeouts or Timeouts()
        self.hedging = hedging or Hedging()
        self.buffer_args = {"start_sec": start_sec, "refill_sec": refill_sec, "target_sec": target_sec}
        self.ping_interval = ping_interval
        self.sample_every = sample_every
        self.keep_segments = keep_segments
        self.record_view = record_view
        # every call to the metadata service ends within this (retries included), with a reason
        self.metadata_timeout = metadata_timeout
        self.give_up_sec = give_up_sec  # a chunk no node serves for this long ends the playback
        # a viewer credential for the metadata service and the storage nodes (issue #19)
        key = api_key if api_key is not None else os.environ.get("SHOAL_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.ssl = ssl
        self.writer = OrderedWriter(output) if output else None
        self.scores = new_scores(latency_scale_ms=LATENCY_SCALE_MS)
        self.monitor: NetworkMonitor | None = None
        self.scheduler: Scheduler | None = None
        self.buffer: Buffer | None = None
        self.segments: dict[int, bytes] = {}
        self.mime: str | None = None
        self.started_at = time.monotonic()  # reset by play()
        self.started_wall = time.time()
        self.finished_at: float | None = None
        self.error: str | None = None
        self.view_recorded = False
        self.arrivals: list[dict] = []  # per chunk: seq, at (monotonic), nodes, seconds
        self.requested: list[tuple[int, float]] = []  # (seq, monotonic) as each chunk was asked for
        self.buffer_history: deque = deque(maxlen=HISTORY)
        self.throughput_history: deque = deque(maxlen=HISTORY)
        self.score_history: dict[str, deque] = {}
        self._chunk_rates: list[float] = []
        self._task: asyncio.Task | None = None
        self.marks: dict[str, float] = {}  # startup timeline: event -> monotonic time
        # (smart) nodes the metadata service reports down; startup waits this long for the report
        self.reported_down: set[str] = set()
        self.node_report_wait = node_report_wait
        self._down_report: asyncio.Future | None = None

    @classmethod
    def idle(cls) -> Player:
        """A placeholder with nothing to play: its reports are the documented shapes, all zero."""
        return cls(None, record_view=False)

    async def prepare(self) -> Manifest:
        """Fetch the manifest now (PlayerError if the video cannot be played), before play()."""
        if self.manifest is None:
            async with aiohttp.ClientSession(
                headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl)
            ) as http:
                self.manifest = await self._fetch_manifest(http)
        return self.manifest

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Play in the background (the dashboard does this); returns the task."""
        if self._task is None:
            self._task = asyncio.create_task(self.play())
        return self._task

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @property
    def done(self) -> bool:
        return self.buffer is not None and self.buffer.finished

    async def play(self) -> dict:
        """Play the video to its end; returns performance()."""
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=self.ssl)
        async with aiohttp.ClientSession(connector=connector, headers=self.headers) as http:
            self._down_report = asyncio.get_running_loop().create_future()
            down = asyncio.create_task(self._watch_down(http)) if self.strategy == SMART else None
            try:
                if self.manifest is None:
                    self.manifest = await self._fetch_manifest(http)
                self.marks["manifest"] = time.monotonic()
                await self._run(http, self.manifest)
            except Exception as exc:
                self.error = str(exc)
                raise
            finally:
                if down is not None:
                    down.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await down
                if self.monitor is not None:
                    await self.monitor.stop()
                if self.writer is not None:
                    await self.writer.close()
        return self.performance()

    async def _fetch_manifest(self, http: aiohttp.ClientSession) -> Manifest:
        """GET /manifest/{id}, retried on network errors and 5xx, all within `metadata_timeout`
        seconds; PlayerError with the reason otherwise (a hung service included)."""
        if self.metadata_url is None or self.video_id is None:
            raise PlayerError("nothing to play: need a video id and a metadata URL (or a manifest)")
        url = f"{self.metadata_url}/manifest/{self.video_id}"
        limit = self.metadata_timeout
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        last = "no attempt made"
        attempt = 0
        while (remaining := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    timeout = aiohttp.ClientTimeout(total=remaining, connect=min(2.0, remaining))
                    async with http.get(url, timeout=timeout) as r:
                        if r.status == 200:
                            return parse_manifest(await r.json())
                        detail = await _detail(r)
                        if r.status == 404:
                            raise PlayerError(f"video {self.video_id} not found at {self.metadata_url}")
                        if r.status < 500:  # 409: not active (uploading, failed), with the reason
                            raise PlayerError(f"video {self.video_id} cannot be played: {detail}")
                        last = f"answered {r.status}: {detail}"
            except ManifestError as exc:
                raise PlayerError(f"video {self.video_id} cannot be played: {exc}") from None
            except TimeoutError:
                last = f"no answer to GET /manifest/{self.video_id} within {limit:g} s"
                break
            except aiohttp.ClientError as exc:
                last = f"unreachable ({type(exc).__name__}: {exc})"
            attempt += 1
            pause = min(0.2 * 2**attempt, end - loop.time())
            if pause <= 0:
                break
            await asyncio.sleep(pause)
        raise PlayerError(f"metadata service {self.metadata_url}: {last}")

    async def _refresh(self, http: aiohttp.ClientSession, chunk: ChunkRef) -> ChunkRef | None:
        """The chunk's current placement (repair or migration may have moved it)."""
        if self.metadata_url is None:
            return None
        try:
            fresh = await self._fetch_manifest(http)
        except (PlayerError, ManifestError):
            return None
        for c in fresh.chunks:
            if c.sequence_num == chunk.sequence_num:
                c.start_sec, c.duration_sec = chunk.start_sec, chunk.duration_sec
                for n in c.nodes:
                    if self.monitor is not None:
                        self.monitor.add(n)
                return c
        return None

    async def _record_view(self, http: aiohttp.ClientSession) -> None:
        if not (self.record_view and self.metadata_url):
            return
        try:
            async with http.post(
                f"{self.metadata_url}/video/{self.video_id}/view",
                timeout=aiohttp.ClientTimeout(total=self.metadata_timeout),
            ) as r:
                self.view_recorded = r.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not record the view: %s", exc)

    async def _run(self, http: aiohttp.ClientSession, m: Manifest) -> None:
        self.monitor = NetworkMonitor(
            self.scores, m.nodes, self.ping_interval, self.timeouts, headers=self.headers, ssl=self.ssl
        )
        self.monitor.reported_down = set(self.reported_down)
        self.scheduler = Scheduler(
            http,
            self.scores,
            self.strategy,
            self.timeouts,
            self.hedging,
            refresh=lambda c: self._refresh(http, c),
            is_down=self.monitor.down,
            give_up_sec=self.give_up_sec,
            latency_floor=self.monitor.latency_floor_ms,
            first_answer=self.monitor.first_answer,
        )
        self.buffer = Buffer(
            [(c.start_sec, c.end_sec) for c in m.chunks], speed=self.speed, **self.buffer_args
        )
        self.buffer.created = self.started_at  # startup latency counts from play(), manifest included
        await self.monitor.start()
        self.marks["monitor_ready"] = time.monotonic()
        view = asyncio.create_task(self._record_view(http))
        if self.strategy == SMART and self._down_report is not None:
            # the node report was asked for with the manifest: it is usually in already
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._down_report), self.node_report_wait)
            self.marks["node_report"] = time.monotonic()
        tasks: dict[asyncio.Task, int] = {}
        next_seq = 0
        refilling = True
        next_sample = time.monotonic()
        last_bytes = 0
        try:
            while not self.buffer.finished:
                self.buffer.tick()
                refilling = self.buffer.refilling(refilling)
                while (
                    len(tasks) < self.parallel
                    and self.buffer.wants(next_seq, refilling)
                    and (self.strategy != SMART or self.buffer.needed_to_play(next_seq))
                ):
                    tasks[asyncio.create_task(self.scheduler.get(m.chunks[next_seq]))] = next_seq
                    self.requested.append((next_seq, time.monotonic()))
                    next_seq += 1
                if tasks:
                    done, _ = await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(0.05)
                    done = set()
                for task in done:
                    seq = tasks.pop(task)
                    try:
                        served = task.result()
                    except ChunkUnavailable as exc:
                        raise PlayerError(str(exc)) from None
                    await self._landed(m.chunks[seq], served)
                now = time.monotonic()
                if now >= next_sample:
                    interval = self.sample_every + (now - next_sample)
                    last_bytes = self._sample(interval, last_bytes)
                    next_sample = now + self.sample_every
            self.finished_at = time.monotonic()
            self._sample(self.sample_every, last_bytes)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await view

    async def _watch_down(self, http: aiohttp.ClientSession, every: float = 5.0) -> None:
        """(smart) Which nodes the metadata service reports down, now and every `every` s, so
        they drop to the end of every candidate list (a node killed seconds ago is found by
        its failed ping or connection first; this covers the ones it has known about)."""
        if self.metadata_url is None:
            if self._down_report is not None and not self._down_report.done():
                self._down_report.set_result(None)
            return
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=self.metadata_timeout, connect=1.0)
                async with http.get(f"{self.metadata_url}/nodes/all", timeout=timeout) as r:
                    if r.status == 200:
                        body = await r.json()
                        rows = body.get("nodes", []) if isinstance(body, dict) else []
                        down = {
                            str(n.get("node_url", "")).rstrip("/")
                            for n in rows
                            if isinstance(n, dict) and n.get("status") == "down"
                        }
                        self.reported_down = down
                        if self.monitor is not None:
                            self.monitor.report_down(down)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("node status from the metadata service: %s", exc)
            if self._down_report is not None and not self._down_report.done():
                self._down_report.set_result(None)  # answered or not: startup waits no longer
            await asyncio.sleep(every)

    async def _landed(self, chunk: ChunkRef, served: Any) -> None:
        assert self.buffer is not None
        seq = chunk.sequence_num
        now = time.monotonic()
        self.arrivals.append({"seq": seq, "at": now, "nodes": served.nodes, "seconds": served.seconds})
        if served.seconds > 0:
            self._chunk_rates.append(len(served.data) * 8 / served.seconds / 1e6)
        if seq == 0:
            self.mime = mse_type(served.data)
        self.marks.setdefault("first_chunk", now)
        self.segments[seq] = served.data
        for old in [s for s in self.segments if s < seq - self.keep_segments]:
            del self.segments[old]
        self.buffer.chunk_ready(seq)
        if self.writer is not None:
            await self.writer.put(seq, served.data)

    def _sample(self, interval: float, last_bytes: int) -> int:
        assert self.buffer is not None and self.scheduler is not None
        ts = round(time.time(), 3)
        self.buffer_history.append({"timestamp": ts, "level": round(self.buffer.level, 3)})
        total = self.scheduler.bytes
        mbps = (total - last_bytes) * 8 / max(interval, 1e-3) / 1e6
        self.throughput_history.append({"timestamp": ts, "mbps": round(mbps, 3)})
        for node in self.scores.nodes:
            self.score_history.setdefault(node, deque(maxlen=HISTORY)).append(
                {"timestamp": ts, "score": round(self.scores.score(node), 3)}
            )
        return total

    # -- reports (the dashboard's documented shapes) ------------------------------------------
    def _node_stats(self) -> dict[str, dict]:
        out = {}
        for node in self.scores.nodes:
            s = self.scores.stats(node)
            last = self.monitor.last.get(node) if self.monitor else None
            out[node] = {
                "latency_ms": round(s["latency_ms"], 3),
                "bandwidth_mbps": round(s["bandwidth_mbps"], 3),
                "success_rate": round(s["success_rate"], 4),
                "inflight": int(s["inflight"]),
                "reachable": None if last is None else last["ok"],
                "last_ping_ms": None if last is None else last["ms"],
            }
        return out

    def _scores(self) -> dict[str, float]:
        return {n: round(self.scores.score(n), 3) for n in self.scores.nodes}

    def _startup(self) -> float | None:
        b = self.buffer
        return None if b is None or b.startup_latency is None else round(b.startup_latency, 4)

    def status(self) -> dict:
        b, sch = self.buffer, self.scheduler
        return {
            "video_id": self.video_id,
            "playing": bool(b and b.playing),
            "state": "error" if self.error else (b.state if b else "loading"),
            "strategy": self.strategy,
            "startup_latency": self._startup(),
            "playback_duration": round(b.playback_duration(), 3) if b else 0.0,
            "buffer": {
                "state": b.state if b else "loading",
                "buffer_level_sec": round(b.level, 3) if b else 0.0,
                "target_buffer_sec": self.buffer_args["target_sec"],
                "buffer_health_percent": b.health_percent if b else 0.0,
                "current_position": b.current_chunk if b else 0,
                "position_sec": round(b.position, 3) if b else 0.0,
                "duration_sec": round(b.duration, 3) if b else 0.0,
            },
            "buffer_stats": {
                "total_chunks_played": b.chunks_played if b else 0,
                "rebuffering_events": b.rebuffer_events if b else 0,
                "total_stall_sec": round(b.stall_time(), 3) if b else 0.0,
                "average_buffer_level": round(b.average_level, 3) if b else 0.0,
            },
            "scheduler_stats": sch.stats() if sch else Scheduler.empty_stats(self.strategy),
            "network_stats": self._node_stats(),
            "node_scores": self._scores(),
            "error": self.error,
        }

    def stats(self) -> dict:
        b, sch = self.buffer, self.scheduler
        st = sch.stats() if sch else Scheduler.empty_stats(self.strategy)
        nodes = {}
        for node, ns in self._node_stats().items():
            c = sch.nodes.get(node) if sch else None
            nodes[node] = {
                "score": round(self.scores.score(node), 3),
                "downloads": c.served if c else 0,
                "failures": c.failures if c else 0,
                **ns,
            }
        return {
            "session": {
                "video_id": self.video_id,
                "strategy": self.strategy,
                "startup_latency": self._startup(),
                "playback_duration": round(b.playback_duration(), 3) if b else 0.0,
                "total_chunks_played": b.chunks_played if b else 0,
                "total_chunks": len(b.bounds) if b else 0,
            },
            "buffer": {
                "current_level_sec": round(b.level, 3) if b else 0.0,
                "target_sec": self.buffer_args["target_sec"],
                "health_percent": b.health_percent if b else 0.0,
                "rebuffering_events": b.rebuffer_events if b else 0,
                "total_stall_sec": round(b.stall_time(), 3) if b else 0.0,
            },
            "downloads": {
                "total": st["total_downloads"],
                "successful": st["successful"],
                "failed": st["failed"],
                "success_rate": st["success_rate"],
                "failovers": st["failover_count"],
                "hedged_requests": st["hedged_requests"],
            },
            "nodes": nodes,
            "failovers": [f.as_dict() for f in sch.failovers[-50:]] if sch else [],
        }

    def metrics(self) -> dict:
        return {
            "buffer_history": list(self.buffer_history),
            "throughput_history": list(self.throughput_history),
            "node_score_history": {n: list(h) for n, h in self.score_history.items()},
        }

    def stream(self) -> dict:
        b = self.buffer
        return {
            "video_id": self.video_id,
            "mime": self.mime,
            "total_chunks": len(b.bounds) if b else 0,
            "available": b.contiguous if b else 0,
            "first_kept": min(self.segments) if self.segments else 0,
            "duration_sec": round(b.duration, 3) if b else 0.0,
            "finished": bool(b and b.finished),
        }

    def startup_timeline(self) -> dict[str, float]:
        """Seconds from play() to each startup event (manifest, monitor_ready, node_report, first_request,
        first_headers, first_chunk, playing): where a slow startup spends its time."""
        marks = dict(self.marks)
        sch, b = self.scheduler, self.buffer
        if sch is not None and sch.first_request_at is not None:
            marks["first_request"] = sch.first_request_at
        if sch is not None and sch.first_headers_at is not None:
            marks["first_headers"] = sch.first_headers_at
        if b is not None and b.started_at is not None:
            marks["playing"] = b.started_at
        order = (
            "manifest",
            "monitor_ready",
            "node_report",
            "first_request",
            "first_headers",
            "first_chunk",
            "playing",
        )
        return {k: round(marks[k] - self.started_at, 4) for k in order if k in marks}

    def performance(self) -> dict:
        b, sch = self.buffer, self.scheduler
        st = sch.stats() if sch else Scheduler.empty_stats(self.strategy)
        rates = self._chunk_rates
        return {
            "startup_latency_sec": self._startup(),
            "average_throughput_mbps": round(sum(rates) / len(rates), 3) if rates else 0.0,
            "rebuffering_events": b.rebuffer_events if b else 0,
            "total_stall_sec": round(b.stall_time(), 3) if b else 0.0,
            "average_buffer_level_sec": round(b.average_level, 3) if b else 0.0,
            "playback_duration_sec": round(b.playback_duration(), 3) if b else 0.0,
            "chunks_played": b.chunks_played if b else 0,
            "download_success_rate": st["success_rate"],
            "failover_count": st["failover_count"],
            "strategy": self.strategy,
        }
