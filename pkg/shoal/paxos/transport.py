"""How a proposer reaches acceptors: over HTTP (the real thing), or in-process (unit tests
that run real Acceptors on real stores without sockets)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Protocol

import aiohttp
import msgspec
from yarl import URL

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

# (method, request target, body) -> headers that prove the caller is a cluster node
Signer = Callable[[str, str, bytes], Mapping[str, str]]


class HttpTransport:
    """A pooled aiohttp session (created on first use, in the running loop); every failure
    becomes Unreachable: the acceptor simply did not vote.

    aiohttp rather than httpx here: a commit fans out to every acceptor twice, and httpcore's
    pool scans all its connections per request (measured: ~20 ms CPU per commit at 16 commits
    in flight, most of the metadata service's time), while aiohttp's pool is O(1).

    With `signer` (shoal.storage.nodeauth.NodeCredentials.headers) every message is signed: a
    storage node with an auth dir refuses unsigned, forged, expired or replayed prepare/accept.
    `ssl` verifies the acceptors' HTTPS (--tls-ca).
    """

    def __init__(
        self, timeout: float = 2.0, signer: Signer | None = None, ssl: ssl.SSLContext | bool = True
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(1.0, timeout))
        self.signer = signer
        self.ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(
                    limit=256, limit_per_host=64, keepalive_timeout=30, ssl=self.ssl
                ),
            )
        return self._session

    async def _call(self, method: str, url: str, body: bytes | None, decoder: msgspec.json.Decoder):
        headers = dict(_JSON) if body else {}
        if self.signer is not None:
            headers.update(self.signer(method, URL(url).raw_path_qs, body or b""))
        try:
            async with self._client().request(method, url, data=body, headers=headers or None) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        if status != 200:
            raise Unreachable(f"{url}: HTTP {status}: {raw[:200]!r}")
        try:
            return decoder.decode(raw)
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
        if self._session is not None:
            await self._session.close()


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
