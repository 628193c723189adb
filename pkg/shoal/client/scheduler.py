"""Where each chunk is downloaded from, and what happens when that goes wrong.

`smart`: every attempt goes to the best-scored node (native scoring: latency, throughput and
success rate as EWMAs, divided by a penalty for downloads already in flight there). A node no
download has measured yet is scored optimistically, with the best throughput measured on any
node, and, when its ping is within two latency scales, just ahead of the best measured node's
latency: it gets one probe download (and a measure); a slow-pinging one does not. A node's
latency is never taken as lower than its unanswered ping has waited, and nodes that are down
(last ping failed, or the metadata service says so) go last, as a last resort only. Before a
chunk's first attempt the scheduler waits (at most `first_ping_sec`) for one of its nodes to
answer a ping, not for every node. An attempt whose answer has not started within
`first_byte_factor` x the node's latency (at least `first_byte_min_sec`), or that runs well
past its expected transfer time, gets a hedged second request on the next best node (first
verified answer wins, the other is cancelled); a failure fails over at once to the next best;
erasure-coded chunks ask all 5 fragment holders and decode from the first 3 verified.

`round-robin`: the naive client, same code path otherwise: chunk i starts at replica
i mod n and walks the manifest order on failure; no scores, no hedging; erasure-coded chunks
read fragments 0, 1, 2 and move to 3, 4 only on failure.

Both verify every chunk's SHA-256 and retry a chunk (backing off, re-reading the manifest)
until it lands: the buffer never has a silent gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shoal.client.fetch import Fetched, FetchError, Timeouts, fetch, verify
from shoal.client.manifest import ERASURE, ChunkRef

log = logging.getLogger("shoal.client")


def _scoring():
    from shoal import _native

    return _native.load("scoring")


SMART = "smart"
ROUND_ROBIN = "round-robin"
STRATEGIES = (SMART, ROUND_ROBIN)


class ChunkUnavailable(Exception):
    """No node served a chunk for `give_up_sec`: the message names it and the last errors."""


@dataclass
class Hedging:
    """Hedge when an attempt runs `factor` x its expected time, within [min_sec, max_sec], or
    when its answer has not even started (no headers) after `first_byte_factor` x the node's
    latency, within [first_byte_min_sec, max_sec]: a hung node costs a fraction of a second,
    not the read timeout. Before a chunk's first attempt the smart client waits up to
    `first_ping_sec` for one of its nodes to answer a ping (not for every node)."""

    factor: float = 3.0
    min_sec: float = 0.3
    max_sec: float = 1.2
    max_parallel: int = 3  # attempts in flight for one chunk
    first_byte_factor: float = 4.0
    first_byte_min_sec: float = 0.15
    first_ping_sec: float = 0.05


@dataclass
class Failover:
    """A chunk served by another node after an attempt on `failed_node` failed or stalled."""

    sequence_num: int
    failed_node: str
    reason: str
    attempt_started: float  # time.monotonic()
    detected_at: float
    served_at: float
    served_by: str

    def as_dict(self) -> dict:
        return {
            "sequence_num": self.sequence_num,
            "failed_node": self.failed_node,
            "reason": self.reason,
            "served_by": self.served_by,
            "seconds": round(self.served_at - self.attempt_started, 4),
        }


@dataclass
class NodeCounters:
    attempts: int = 0
    served: int = 0  # chunks or fragments delivered and verified
    failures: int = 0
    bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Piece:
    """Something to download: a replica of a chunk, or one fragment."""

    node: str
    stored_id: str
    checksum: str
    index: int


@dataclass
class Served:
    """A chunk that landed: its bytes and who delivered them."""

    data: bytes
    nodes: list[str]
    seconds: float
    attempts: int


class Scheduler:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        scores: Any,
        strategy: str = SMART,
        timeouts: Timeouts | None = None,
        hedging: Hedging | None = None,
        refresh: Callable[[ChunkRef], Awaitable[ChunkRef | None]] | None = None,
        is_down: Callable[[str], bool] | None = None,
        give_up_sec: float | None = None,
        latency_floor: Callable[[str], float] | None = None,
        first_answer: Callable[[list[str], float], Awaitable[None]] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        self.http = http
        self.scores = scores
        self.strategy = strategy
        self.timeouts = timeouts or Timeouts()
        self.hedging = hedging or Hedging()
        self.refresh = refresh
        self.is_down = is_down or (lambda node: False)
        self.latency_floor = latency_floor or (lambda node: 0.0)
        self.first_answer = first_answer
        self.give_up_sec = give_up_sec  # None: retry until the chunk lands
        self.last_errors: dict[int, list[str]] = {}  # sequence number -> last failures
        self.inflight: dict[str, int] = {}
        self.nodes: dict[str, NodeCounters] = {}
        self.failovers: list[Failover] = []
        self.attempts = 0
        self.successful = 0
        self.failed = 0
        self.hedges = 0
        self.retry_rounds = 0
        self.bytes = 0
        self.completions: list[tuple[float, int]] = []  # (monotonic, bytes) of each verified piece
        self.first_request_at: float | None = None  # monotonic: the first attempt sent
        self.first_headers_at: float | None = None  # monotonic: the first answer's headers
        self.stopped = False

    @property
    def smart(self) -> bool:
        return self.strategy == SMART

    def rank(self, nodes: list[str]) -> list[str]:
        """`nodes` best first: the native scores, with an unmeasured node's throughput taken
        as the best one measured anywhere (exploration: optimism until a download measures it),
        a latency no lower than its unanswered ping has waited, and nodes that are down (last
        ping failed, or reported down by the metadata service) last, as a last resort only."""
        if len(nodes) < 2:
            return list(nodes)
        for n in nodes:
            self.scores.add(n)  # idempotent: a node a refreshed manifest brought in
        measured = [st["bandwidth_mbps"] for st in map(self.scores.stats, self.scores.nodes) if st["samples"]]
        best = max(measured, default=0.0)
        stats = [self.scores.stats(n) for n in nodes]
        bandwidth = [
            st["bandwidth_mbps"] if st["samples"] else max(best, st["bandwidth_mbps"]) for st in stats
        ]
        latency = [max(st["latency_ms"], self.latency_floor(n)) for n, st in zip(nodes, stats, strict=True)]
        # probe: an unmeasured node whose ping is within 2 latency scales (not a slow pinger) is
        # taken to be just ahead of the best measured one, so it gets one download and a measure
        near = 2.0 * self.scores.latency_scale_ms
        best_lat = min((st["latency_ms"] for st in stats if st["samples"]), default=None)
        if best_lat is not None:
            latency = [
                min(lat, best_lat * 0.99) if not st["samples"] and lat < near and not self.is_down(n) else lat
                for n, st, lat in zip(nodes, stats, latency, strict=True)
            ]
        order, _ = _scoring().rank_arrays(
            latency,
            bandwidth,
            [st["success_rate"] for st in stats],
            [st["inflight"] for st in stats],
            self.scores.penalty,
            self.scores.latency_scale_ms,
        )
        ranked = [nodes[i] for i in order]
        return [n for n in ranked if not self.is_down(n)] + [n for n in ranked if self.is_down(n)]

    # -- one attempt --------------------------------------------------------------------------
    def _counters(self, node: str) -> NodeCounters:
        return self.nodes.setdefault(node, NodeCounters())

    async def _attempt(
        self, node: str, stored_id: str, checksum: str, on_headers: Callable[[], None] | None = None
    ) -> Fetched:
        c = self._counters(node)
        c.attempts += 1
        self.attempts += 1
        self.inflight[node] = self.inflight.get(node, 0) + 1
        self.scores.set_inflight(node, self.inflight[node])
        t0 = time.monotonic()
        if self.first_request_at is None:
            self.first_request_at = t0
        try:
            got = await fetch(self.http, node, stored_id, checksum, self.timeouts, on_headers)
        except FetchError as exc:
            self.failed += 1
            c.failures += 1
            c.reasons[exc.reason] = c.reasons.get(exc.reason, 0) + 1
            self.scores.record_download(node, time.monotonic() - t0, 0, False)
            raise
        except asyncio.CancelledError:
            raise
        finally:
            self.inflight[node] -= 1
            self.scores.set_inflight(node, self.inflight[node])
        if self.first_headers_at is None or got.headers_at < self.first_headers_at:
            self.first_headers_at = got.headers_at
        self.successful += 1
        c.served += 1
        c.bytes += len(got.data)
        self.bytes += len(got.data)
        self.completions.append((time.monotonic(), len(got.data)))
        self.scores.record_download(node, got.seconds, len(got.data), True)
        return got

    def _hedge_after(self, node: str, nbytes: int, answering: bool = True) -> float:
        """Seconds after its start an attempt on `node` gets a hedge: `factor` x the expected
        transfer once the answer has started, `first_byte_factor` x the latency before."""
        s = self.scores.stats(node)
        h = self.hedging
        latency = max(s["latency_ms"], self.latency_floor(node)) / 1000.0
        if not answering:
            return min(h.max_sec, max(h.first_byte_min_sec, h.first_byte_factor * latency))
        expected = latency + nbytes * 8.0 / max(s["bandwidth_mbps"], 1e-3) / 1e6
        return min(h.max_sec, max(h.min_sec, h.factor * expected))

    # -- a whole chunk ------------------------------------------------------------------------
    async def get(self, chunk: ChunkRef) -> Served:
        """The chunk's verified bytes; retries (with backoff, re-reading the manifest) until they land."""
        rounds = 0
        t0 = time.monotonic()
        while True:
            if chunk.mode == ERASURE:
                served = await self._erasure_round(chunk)
            else:
                served = await self._replicated_round(chunk)
            if served is not None:
                served.seconds = time.monotonic() - t0
                return served
            rounds += 1
            self.retry_rounds += 1
            waited = time.monotonic() - t0
            if self.give_up_sec is not None and waited >= self.give_up_sec:
                errors = "; ".join(self.last_errors.get(chunk.sequence_num, [])[-5:]) or "no source"
                raise ChunkUnavailable(
                    f"chunk {chunk.sequence_num} ({chunk.chunk_id}) could not be read from any of its "
                    f"{len(chunk.nodes)} nodes for {waited:.0f} s (rounds: {rounds}); last errors: {errors}"
                )
            delay = min(2.0, 0.1 * 2**rounds)
            log.warning(
                "chunk %s: every source failed (round %d); retrying in %.1f s", chunk.chunk_id, rounds, delay
            )
            await asyncio.sleep(delay)
            if self.refresh is not None:
                with contextlib.suppress(Exception):
                    newer = await self.refresh(chunk)
                    if newer is not None:
                        chunk = newer

    async def _replicated_round(self, chunk: ChunkRef) -> Served | None:
        pieces = [Piece(n, chunk.chunk_id, chunk.checksum, i) for i, n in enumerate(chunk.replicas)]
        won = await self._race(chunk, pieces, 1)
        if won is None:
            return None
        ((piece, data),) = won.items()
        return Served(data, [piece.node], 0.0, 0)

    async def _erasure_round(self, chunk: ChunkRef) -> Served | None:
        from shoal import erasure

        pieces = [Piece(f.node_url, f.fragment_id, f.checksum, f.index) for f in chunk.fragments]
        won = await self._race(chunk, pieces, erasure.K)
        if won is None:
            return None
        try:
            data = await asyncio.to_thread(erasure.decode, {p.index: d for p, d in won.items()})
        except erasure.ErasureError as exc:
            log.warning("chunk %s: fragments do not decode: %s", chunk.chunk_id, exc)
            return None
        if not await verify(data, chunk.checksum):
            log.warning("chunk %s: decoded bytes fail the chunk checksum", chunk.chunk_id)
            return None
        return Served(data, [p.node for p in won], 0.0, 0)

    def _candidates(self, chunk: ChunkRef, pieces: list[Piece]) -> list[Piece]:
        """Initial order: best score first (smart), or the fixed naive order."""
        if self.smart:
            ranked = self.rank(list(dict.fromkeys(p.node for p in pieces)))
            return sorted(pieces, key=lambda p: ranked.index(p.node))
        if chunk.mode == ERASURE:
            return sorted(pieces, key=lambda p: p.index)  # data fragments first
        k = chunk.sequence_num % len(pieces)
        return pieces[k:] + pieces[:k]

    async def _race(self, chunk: ChunkRef, pieces: list[Piece], need: int) -> dict[Piece, bytes] | None:
        """Verified bytes of `need` distinct pieces, or None when every candidate failed.

        Starts `need` attempts; a failure starts the next candidate at once; (smart) an attempt
        past its hedge deadline starts one more, and the first `need` verified answers win.
        """
        if self.smart and self.first_answer is not None:
            await self.first_answer([p.node for p in pieces], self.hedging.first_ping_sec)
        candidates = self._candidates(chunk, pieces)
        pending: dict[asyncio.Task, tuple[Piece, float]] = {}
        answering: set[Piece] = set()  # attempts whose answer has started (headers in)
        got: dict[Piece, bytes] = {}
        failed: list[tuple[str, str, float, float]] = []  # node, reason, started, detected
        hedged: set[asyncio.Task] = set()  # attempts that already caused a hedge

        def launch() -> None:
            nonlocal candidates
            if self.smart and len(candidates) > 1:  # re-rank: scores and in-flight counts moved
                ranked = self.rank(list(dict.fromkeys(p.node for p in candidates)))
                candidates = sorted(candidates, key=lambda p: ranked.index(p.node))
            piece = candidates.pop(0)
            task = asyncio.ensure_future(
                self._attempt(piece.node, piece.stored_id, piece.checksum, lambda: answering.add(piece))
            )
            pending[task] = (piece, time.monotonic())

        size = chunk.size_bytes // need + 1
        limit = need + self.hedging.max_parallel - 1  # attempts in flight at most

        def refill() -> None:
            # keep need - len(got) attempts that have not stalled
            while candidates and len(pending) - len(hedged) < need - len(got):
                launch()

        refill()
        try:
            while pending and len(got) < need:
                timeout = None
                watch: asyncio.Task | None = None
                if self.smart and candidates and len(pending) < limit:
                    due_at = {
                        t: started + self._hedge_after(p.node, size, p in answering)
                        for t, (p, started) in pending.items()
                        if t not in hedged
                    }
                    if due_at:
                        watch = min(due_at, key=due_at.__getitem__)
                        timeout = max(0.0, due_at[watch] - time.monotonic())
                done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done and watch is not None:
                    p, started = pending[watch]
                    if time.monotonic() >= started + self._hedge_after(p.node, size, p in answering) - 1e-3:
                        hedged.add(watch)  # (headers that came in meanwhile moved the deadline)
                        self.hedges += 1
                for task in done:
                    piece, started = pending.pop(task)
                    hedged.discard(task)
                    try:
                        got[piece] = task.result().data
                    except FetchError as exc:
                        failed.append((piece.node, exc.reason, started, time.monotonic()))
                        errs = self.last_errors.setdefault(chunk.sequence_num, [])
                        errs.append(str(exc)[:200])
                        del errs[:-10]
                        log.info("chunk %s: %s", chunk.sequence_num, exc)
                refill()
            if len(got) < need:
                return None
            now = time.monotonic()
            for task, (piece, started) in pending.items():
                if task in hedged:  # it stalled and a hedge beat it: a failover in all but name
                    failed.append((piece.node, "slow", started, now))
            if failed:
                node, reason, started, detected = min(failed, key=lambda f: f[2])
                served_by = next(p.node for p in got)
                self.failovers.append(
                    Failover(chunk.sequence_num, node, reason, started, detected, now, served_by)
                )
            return dict(list(got.items())[:need])
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    def empty_stats(strategy: str) -> dict:
        return {
            "strategy": strategy,
            "total_downloads": 0,
            "successful": 0,
            "failed": 0,
            "success_rate": 1.0,
            "failover_count": 0,
            "hedged_requests": 0,
            "retry_rounds": 0,
            "bytes": 0,
        }

    def stats(self) -> dict:
        total = self.successful + self.failed
        return {
            "strategy": self.strategy,
            "total_downloads": total,
            "successful": self.successful,
            "failed": self.failed,
            "success_rate": round(self.successful / total, 4) if total else 1.0,
            "failover_count": len(self.failovers),
            "hedged_requests": self.hedges,
            "retry_rounds": self.retry_rounds,
            "bytes": self.bytes,
        }
