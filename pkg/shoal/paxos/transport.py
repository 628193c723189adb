"""How a proposer reaches acceptors: over HTTP (the real thing), or in-process (unit tests
that run real Acceptors on real stores without sockets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx
import msgspec

from .acceptor import Acceptor
from .messages import Accept, Accepted, AcceptorState, Prepare, Promise


class Unreachable(Exception):
    """The acceptor did not answer (down, timed out, or answered with an error status)."""


class Transport(Protocol):
    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise: ...
    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted: ...
    async def state(self, node_url: str, chunk_id: str) -> AcceptorState: ...


_enc = msgspec.json.Encoder()
_promise = msgspec.json.Decoder(Promise)
_accepted = msgspec.json.Decoder(Accepted)
_state = msgspec.json.Decoder(AcceptorState)
_JSON = {"content-type": "application/json"}


class HttpTransport:
    """One pooled httpx client; every failure becomes Unreachable (the acceptor simply did not vote)."""

    def __init__(self, client: httpx.AsyncClient | None = None, timeout: float = 2.0) -> None:
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(1.0, timeout)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def _call(self, method: str, url: str, body: bytes | None, decoder: msgspec.json.Decoder):
        try:
            r = await self.client.request(method, url, content=body, headers=_JSON if body else None)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise Unreachable(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            return decoder.decode(r.content)
        except msgspec.DecodeError as exc:
            raise Unreachable(f"{url}: bad reply: {exc}") from None

    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise:
        url = f"{node_url.rstrip('/')}/paxos/{chunk_id}/prepare"
        return await self._call("POST", url, _enc.encode(msg), _promise)

    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted:
        url = f"{node_url.rstrip('/')}/paxos/{chunk_id}/accept"
        return await self._call("POST", url, _enc.encode(msg), _accepted)

    async def state(self, node_url: str, chunk_id: str) -> AcceptorState:
        return await self._call("GET", f"{node_url.rstrip('/')}/paxos/{chunk_id}", None, _state)

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalTransport:
    """Real Acceptor objects addressed by URL, in this process; `down` URLs do not answer."""

    def __init__(self, acceptors: Mapping[str, Acceptor]) -> None:
        self.acceptors = dict(acceptors)
        self.down: set[str] = set()

    def _get(self, node_url: str) -> Acceptor:
        if node_url in self.down or node_url not in self.acceptors:
            raise Unreachable(node_url)
        return self.acceptors[node_url]

    async def prepare(self, node_url: str, chunk_id: str, msg: Prepare) -> Promise:
        # round-trip through JSON as the wire would
        msg = msgspec.json.decode(_enc.encode(msg), type=Prepare)
        return await self._get(node_url).prepare(chunk_id, msg)

    async def accept(self, node_url: str, chunk_id: str, msg: Accept) -> Accepted:
        msg = msgspec.json.decode(_enc.encode(msg), type=Accept)
        return await self._get(node_url).accept(chunk_id, msg)

    async def state(self, node_url: str, chunk_id: str) -> AcceptorState:
        return await self._get(node_url).state(chunk_id)
