"""Authentication: sign-in challenges, bearer tokens, per-request signatures, replay protection.

Bearer tokens are signed by the node that issued them (Ed25519, its node key): any node of the
cluster that trusts that key checks a token without a lookup, so a login on node a works on b at
once. A logout is a replicated revocation (shoal.crdt: an op of kind "revoked"), so it reaches
every node; each node watches the revocation keys and evicts a cached token within the store's
watch delay (milliseconds).

  /state-auth/challenge/<address>/<nonce>   a pending sign-in challenge (single use, expires)
  /state-auth/revoked/<sha256 of token>     a revoked token (replicated), kept until it expires
  /state-auth/token/<sha256 of token>       a bearer token of the previous, stored kind
  /state-auth/nonce/<sha256 of who|nonce>   a per-request nonce already seen (kept past the window)

Challenges are bounded: at most MAX_PENDING_CHALLENGES per address and MAX_CHALLENGES in all
(expired ones are deleted as new ones come), and the route is rate limited per client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from shoal.kv import Compacted, EventType, KvStore, StoreClosed, TransactionOp, VersionConflict
from shoal.state.auth import node_identity, signing
from shoal.state.auth.eth import SignatureError, canonical_address, recover_address, to_checksum_address
from shoal.state.auth.principal import Principal
from shoal.state.errors import StateError, bad_request, unauthorized
from shoal.state.store import StateStore

log = logging.getLogger("shoal.state.auth")

CHALLENGE = "/state-auth/challenge/"
TOKEN = "/state-auth/token/"
NONCE = "/state-auth/nonce/"
REVOKED = "/state-auth/revoked/"
TOKEN_KEYS = "/state-auth/token-keys/"  # shared store (etcd): the node keys of every process on it
IDEM = "/state-idem/"
TOKEN_CACHE_SECONDS = 5.0
MAX_PENDING_CHALLENGES = 16
MAX_CHALLENGES = 10_000  # pending challenges kept in all (each ~500 bytes)
TOKEN_CONTEXT = b"shoal-state-token-v1\n"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def challenge_message(domain: str, uri: str, address: str, nonce: str, issued: int, expires: int) -> str:
    """A Sign-In with Ethereum (EIP-4361) style message: what the wallet shows and signs."""
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n"
        f"{to_checksum_address(address)}\n\n"
        "Sign in to the shoal State Service.\n\n"
        f"URI: {uri}\n"
        "Version: 1\n"
        "Chain ID: 1\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {_iso(issued)}\n"
        f"Expiration Time: {_iso(expires)}"
    )


class Authenticator:
    """Issues and checks credentials; resolves principals to roles and owned identities."""

    def __init__(
        self,
        store: StateStore,
        *,
        admin_address: str | None = None,
        challenge_ttl: int = 300,
        token_ttl: int = 86_400,
        clock: Callable[[], float] = time.time,
        identity: Any = None,
        cluster: Any = None,
    ) -> None:
        self.store = store
        self.kv: KvStore = store.kv
        self.identity = identity  # NodeIdentity: signs the tokens this node issues
        self.cluster = cluster  # shoal.crdt.node.ReplicationNode: cluster id, trusted keys, rounds
        self.cluster_id: str = getattr(cluster, "cluster_id", "shoal")
        self.admin_address = canonical_address(admin_address) if admin_address else None
        self._challenges = 0  # pending challenges stored, as last counted
        # address -> (store revision, account id, peer id, role): valid while nothing was written
        self._resolved: dict[str, tuple[int, str | None, str | None, str]] = {}
        self.challenge_ttl = challenge_ttl
        self.token_ttl = token_ttl
        self.clock = clock
        self._tokens: dict[str, tuple[str, int, float]] = {}  # token -> (address, expires, cached until)
        self._hashes: dict[str, str] = {}  # sha256 of a cached token -> the token
        self._revocations: asyncio.Task | None = None
        self._shared_keys: set[str] = set()  # other processes' token keys on a shared store
        self._published = False  # this process's token key is in the shared store

    # -- sign-in ----------------------------------------------------------------------------
    async def challenge(self, address: str, domain: str, uri: str) -> dict:
        """A sign-in challenge for `domain` / `uri`: the service's configured public URL, never
        anything taken from the request."""
        addr = address.lower()
        now = int(self.clock())
        pending = await self.kv.entries(f"{CHALLENGE}{addr}/")
        live = [e for e in pending if orjson.loads(e.value)["expires_at"] > now]
        for e in pending:
            if orjson.loads(e.value)["expires_at"] <= now:
                await self.kv.delete(e.key)
        if self._challenges >= MAX_CHALLENGES:
            self._challenges = (await self._sweep_prefix(CHALLENGE, now))[1]
            if self._challenges >= MAX_CHALLENGES:
                raise StateError(
                    429,
                    "too many pending sign-in challenges on this node; retry later",
                    "TOO_MANY_CHALLENGES",
                )
        if len(live) >= MAX_PENDING_CHALLENGES:
            raise StateError(
                429, "too many pending sign-in challenges for this address; wait", "TOO_MANY_CHALLENGES"
            )
        nonce = secrets.token_hex(16)
        expires = now + self.challenge_ttl
        message = challenge_message(domain, uri, addr, nonce, now, expires)
        record = {"message": message, "issued_at": now, "expires_at": expires}
        await self.kv.set(f"{CHALLENGE}{addr}/{nonce}", orjson.dumps(record))
        self._challenges += 1
        return {
            "success": True,
            "address": to_checksum_address(addr),
            "nonce": nonce,
            "message": message,
            "issued_at": now,
            "expires_at": expires,
        }

    async def login(self, address: str, signature: str, nonce: str | None) -> dict:
        """Check a signed challenge; consume it (single use) and issue a bearer token."""
        addr = address.lower()
        now = int(self.clock())
        if nonce is not None:
            entry = await self.kv.get(f"{CHALLENGE}{addr}/{nonce}") if nonce.isalnum() else None
            candidates = [entry] if entry else []
        else:
            candidates = await self.kv.entries(f"{CHALLENGE}{addr}/")
        if not candidates:
            raise unauthorized(
                "no pending sign-in challenge for this address; POST /auth/challenge first", "NO_CHALLENGE"
            )
        live = 0
        for entry in candidates:
            record = orjson.loads(entry.value)
            if record["expires_at"] <= now:
                continue
            live += 1
            try:
                signer = recover_address(record["message"].encode(), signature)
            except SignatureError as exc:
                raise unauthorized(f"invalid signature: {exc}", "INVALID_SIGNATURE") from None
            if signer.lower() != addr:
                continue
            expires = now + self.token_ttl
            await self._publish_key()  # on a shared store the other processes must find our key
            token = self.issue_token(addr, expires)
            try:
                await self.kv.transaction(
                    [TransactionOp.check_version(entry.key, entry.version), TransactionOp.delete(entry.key)]
                )
                self._challenges = max(0, self._challenges - 1)
            except VersionConflict:
                raise unauthorized(
                    "this challenge was already used; request a new one", "CHALLENGE_USED"
                ) from None
            principal = await self.resolve(Principal("user", address=to_checksum_address(addr)))
            return {
                "success": True,
                "token": token,
                "token_type": "Bearer",
                "address": to_checksum_address(addr),
                "role": principal.role,
                "expires_at": expires,
            }
        if live == 0:
            raise unauthorized("the sign-in challenge has expired; request a new one", "CHALLENGE_EXPIRED")
        raise unauthorized(
            "signature was not made by this address over a pending challenge", "SIGNATURE_MISMATCH"
        )

    def issue_token(self, address: str, expires: int) -> str:
        """A bearer token any node of the cluster can check: claims signed with this node's key."""
        if self.identity is None:  # no node key (tests of the authenticator alone): stored token
            raise RuntimeError("an Authenticator that issues tokens needs the node identity")
        claims = orjson.dumps(
            {"a": to_checksum_address(address), "e": expires, "k": self.identity.public_key,
             "c": self.cluster_id, "j": secrets.token_hex(8)}
        )  # fmt: skip
        signature = base64.b64decode(self.identity.sign(TOKEN_CONTEXT + claims))
        return f"{_b64(claims)}.{_b64(signature)}"

    def _check_signed(self, token: str) -> tuple[str, int]:
        """(address, expires) of a signed token; 401 unless a trusted node of this cluster signed it."""
        from shoal.state.auth.node_identity import verify

        try:
            head, _, tail = token.partition(".")
            claims_raw = _unb64(head)
            claims = orjson.loads(claims_raw)
            key, address, expires = claims["k"], claims["a"], int(claims["e"])
            signature = base64.b64encode(_unb64(tail)).decode()
        except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise unauthorized("malformed bearer token; sign in again", "INVALID_TOKEN") from None
        trusted = getattr(self.cluster, "trusted_b64", None) or {self.identity.public_key}
        if (key not in trusted and key not in self._shared_keys) or claims.get("c") != self.cluster_id:
            raise unauthorized("this bearer token was not issued by a node of this cluster", "INVALID_TOKEN")
        if not verify(key, TOKEN_CONTEXT + claims_raw, signature):
            raise unauthorized("bearer token signature does not verify; sign in again", "INVALID_TOKEN")
        return address, expires

    async def logout(self, token: str) -> bool:
        """Revoke a token on every node (a replicated revocation; a stored token is deleted)."""
        self._tokens.pop(token, None)
        if "." not in token:
            return await self.kv.delete(TOKEN + _hash(token))
        if token.count(".") != 1:  # a platform JWT (--auth-dir): it ends with its API key's revocation
            return False
        _, expires = self._check_signed(token)
        key = _hash(token)
        if await self.kv.exists(REVOKED + key):
            return False
        record = orjson.dumps({"expires_at": expires})
        journal = self.store.journal
        if journal is not None:
            await journal.put_internal("revoked", key, record)
        else:  # a shared store (etcd): every node reads this very key
            await self.kv.set(REVOKED + key, record)
        return True

    async def _learn_shared_keys(self, token: str) -> None:
        """On a shared store (etcd, no replication journal) every process signs tokens with its
        own node key and publishes that key under TOKEN_KEYS: a token from another process of the
        same store is then accepted once its key is read from there (and remembered)."""
        if self.store.journal is not None or self.identity is None:
            return
        await self._publish_key()
        try:
            key = orjson.loads(_unb64(token.partition(".")[0])).get("k")
        except (ValueError, AttributeError, binascii.Error, orjson.JSONDecodeError):
            return
        if isinstance(key, str) and key not in self._shared_keys and key != self.identity.public_key:
            entry = await self.kv.get(TOKEN_KEYS + _hash(key))
            if entry is not None and entry.value.decode() == key:
                self._shared_keys.add(key)

    async def _publish_key(self) -> None:
        if not self._published and self.store.journal is None and self.identity is not None:
            key = self.identity.public_key
            await self.kv.set(TOKEN_KEYS + _hash(key), key.encode())
            self._published = True

    def _follow_revocations(self) -> None:
        if self._revocations is None or self._revocations.done():
            self._revocations = asyncio.get_running_loop().create_task(
                self._evict_revoked(), name="shoal.state token revocations"
            )

    async def _evict_revoked(self) -> None:
        """Drop a cached token as soon as it is revoked (a revocation from any node, or a stored
        token's key deleted by any worker)."""
        while True:
            try:
                async with self.kv.watch("/state-auth/*") as events:
                    self._tokens.clear()  # cached before the watch started: it may have missed a logout
                    self._hashes.clear()
                    async for event in events:
                        if event.key.startswith(TOKEN) and event.event_type == EventType.Deleted:
                            digest = event.key[len(TOKEN) :]
                        elif event.key.startswith(REVOKED) and event.event_type != EventType.Deleted:
                            digest = event.key[len(REVOKED) :]
                        else:
                            continue
                        token = self._hashes.pop(digest, None)
                        if token is not None:
                            self._tokens.pop(token, None)
            except Compacted:  # fell behind the change log: start over from now
                continue
            except (StoreClosed, asyncio.CancelledError):
                return
            except Exception:
                log.exception("token revocation watch failed; retrying")
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._revocations is not None:
            self._revocations.cancel()
            await asyncio.gather(self._revocations, return_exceptions=True)

    # -- checking credentials -------------------------------------------------------------------
    async def from_token(self, token: str) -> Principal:
        now = self.clock()
        cached = self._tokens.get(token)  # keyed by the token itself: no hashing on the hot path
        if cached is None or cached[2] < now:
            self._follow_revocations()
            digest = _hash(token)
            if "." in token and len(token) <= 1024:
                await self._learn_shared_keys(token)
                address, expires = self._check_signed(token)
                record: dict | None = {"address": address, "expires_at": expires}
                if await self.kv.exists(REVOKED + digest):
                    record = None
            else:
                record = await self.kv.get_json(TOKEN + digest) if len(token) <= 256 else None
            if record is None:
                self._tokens.pop(token, None)
                raise unauthorized("unknown or revoked bearer token; sign in again", "INVALID_TOKEN")
            if len(self._tokens) > 100_000:
                self._tokens.clear()
                self._hashes.clear()
            self._hashes[digest] = token
            cached = self._tokens[token] = (
                to_checksum_address(record["address"]),
                record["expires_at"],
                now + TOKEN_CACHE_SECONDS,
            )
        address, expires, _ = cached
        if expires <= now:
            raise unauthorized("the bearer token has expired; sign in again", "TOKEN_EXPIRED")
        return Principal("user", address=address)

    def _check_fresh(self, timestamp: str | None, nonce: str | None) -> int:
        if not timestamp or not nonce:
            raise unauthorized(
                f"signed requests carry {signing.TIMESTAMP} and {signing.NONCE}", "MISSING_SIGNATURE_FIELDS"
            )
        try:
            ts = int(timestamp)
        except ValueError:
            raise bad_request(f"{signing.TIMESTAMP} is unix seconds") from None
        if abs(ts - self.clock()) > signing.WINDOW:
            raise unauthorized(
                f"request timestamp is more than {signing.WINDOW} s off the server clock", "STALE_REQUEST"
            )
        if not (8 <= len(nonce) <= 128 and nonce.replace("-", "").replace("_", "").isalnum()):
            raise bad_request(f"{signing.NONCE} is 8-128 letters, digits, '-' or '_'")
        return ts

    def _check_audience(self, audience: str | None) -> str:
        """The node part of a request's audience: this node's key or 'any'; 401 for anything else."""
        if not audience:
            raise unauthorized(
                f"signed requests name their audience in {signing.AUDIENCE} "
                f"('<cluster id>:<node key | any>', see GET /status)",
                "MISSING_AUDIENCE",
            )
        try:
            cluster, node = signing.parse_audience(audience)
        except ValueError as exc:
            raise unauthorized(str(exc), "WRONG_AUDIENCE") from None
        own = self.identity.public_key if self.identity is not None else None
        if cluster != self.cluster_id or node not in (signing.ANY, own):
            raise unauthorized(
                f"this request is signed for {audience!r}, not for this node of cluster {self.cluster_id!r}",
                "WRONG_AUDIENCE",
            )
        return node

    async def _consume_nonce(self, who: str, nonce: str, node: str = "") -> None:
        """Single use: this node remembers it; a request for any node also claims it on a majority."""
        digest = _hash(f"{who}|{nonce}")
        key = NONCE + digest
        record = orjson.dumps({"expires_at": int(self.clock()) + 2 * signing.WINDOW})
        if not await self.kv.create_if_not_exists(key, record):
            raise unauthorized("this request nonce was already used (replay)", "REPLAYED_NONCE")
        if node == signing.ANY and self.cluster is not None and self.cluster.peers:
            from shoal.crdt.reserve import Claim

            claim = Claim(
                "nonce", digest, f"{self.identity.public_key}|{secrets.token_hex(8)}", 2 * signing.WINDOW
            )
            await self.cluster.reservations.reserve([claim], what="request nonce")

    async def from_user_signature(
        self, method: str, request_target: str, body: bytes, address: str | None, timestamp: str | None,
        nonce: str | None, signature: str, audience: str | None = None,
    ) -> Principal:  # fmt: skip
        if not address:
            raise unauthorized(f"signed requests carry {signing.ADDRESS}", "MISSING_SIGNATURE_FIELDS")
        ts = self._check_fresh(timestamp, nonce)
        assert nonce is not None
        node = self._check_audience(audience)
        message = signing.request_message("user", method, request_target, body, ts, nonce, audience or "")
        try:
            signer = recover_address(message, signature)
        except SignatureError as exc:
            raise unauthorized(f"invalid request signature: {exc}", "INVALID_SIGNATURE") from None
        if signer.lower() != address.lower():
            raise unauthorized(
                "request signature does not match the address, method, path or body", "SIGNATURE_MISMATCH"
            )
        await self._consume_nonce(address.lower(), nonce, node)
        return Principal("user", address=to_checksum_address(address))

    async def from_node_signature(
        self, method: str, request_target: str, body: bytes, public_key: str | None, timestamp: str | None,
        nonce: str | None, signature: str, audience: str | None = None,
    ) -> Principal:  # fmt: skip
        if not public_key:
            raise unauthorized(f"node requests carry {signing.NODE_KEY}", "MISSING_SIGNATURE_FIELDS")
        ts = self._check_fresh(timestamp, nonce)
        assert nonce is not None
        node = self._check_audience(audience)
        message = signing.request_message("node", method, request_target, body, ts, nonce, audience or "")
        if not node_identity.verify(public_key, message, signature):
            raise unauthorized(
                "node signature does not match the key, method, path or body", "SIGNATURE_MISMATCH"
            )
        try:
            node_id = await self.store.lookup("node", "public_key", public_key)
        except Exception:
            node_id = None
        if node_id is None:
            raise unauthorized(
                "this node key is not registered (no node has this public_key)", "UNKNOWN_NODE"
            )
        await self._consume_nonce(f"node:{public_key}", nonce, node)
        return Principal("node", node_id=node_id)

    # -- roles and identities -------------------------------------------------------------------
    async def resolve(self, principal: Principal) -> Principal:
        """Fill in role, account and peer (looked up by address) once per request."""
        if principal.resolved:
            return principal
        principal.resolved = True
        principal.role = "user"
        if principal.kind == "user" and principal.address:
            addr = principal.address = canonical_address(principal.address)
            principal.identities.add(addr)
            revision = await self.kv.revision()
            hit = self._resolved.get(addr)
            if hit is not None and hit[0] == revision:  # nothing was written since: same answer
                _, principal.account_id, principal.peer_id, principal.role = hit
            else:
                principal.account_id = await self.store.lookup("account", "ethereum_address", addr)
                principal.peer_id = await self.store.lookup("peer", "public_key", addr)
                if principal.account_id:
                    account = await self.store.get("account", principal.account_id)
                    if account and account.get("role") == "admin":
                        principal.role = "admin"
                if addr == self.admin_address:
                    principal.role = "admin"
                if len(self._resolved) > 10_000:
                    self._resolved.clear()
                self._resolved[addr] = (revision, principal.account_id, principal.peer_id, principal.role)
            if principal.account_id:
                principal.identities.add(principal.account_id)
            if principal.peer_id:
                principal.identities.add(principal.peer_id)
        elif principal.kind == "node" and principal.node_id:
            principal.identities.add(principal.node_id)
            record = await self.store.get("node", principal.node_id)
            principal.trusted = bool(record and record.get("trusted"))
        return principal

    # -- housekeeping -----------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Delete expired challenges, tokens, nonces, revocations and idempotency records; how many."""
        now = int(self.clock())
        removed = 0
        for prefix in (CHALLENGE, TOKEN, NONCE, IDEM, REVOKED):
            gone, left = await self._sweep_prefix(prefix, now)
            removed += gone
            if prefix == CHALLENGE:
                self._challenges = left
        return removed

    async def _sweep_prefix(self, prefix: str, now: int) -> tuple[int, int]:
        """Delete the expired records under `prefix`: (how many were deleted, how many are left)."""
        removed = left = 0
        start: str | None = None
        while True:
            batch = await self.kv.entries(prefix, start_after=start, limit=500)
            if not batch:
                break
            for entry in batch:
                try:
                    expires = orjson.loads(entry.value).get("expires_at", 0)
                except (orjson.JSONDecodeError, AttributeError):
                    expires = 0
                if expires > now:
                    left += 1
                    continue
                ops = [TransactionOp.check_version(entry.key, entry.version), TransactionOp.delete(entry.key)]
                try:
                    await self.kv.transaction(ops)
                    removed += 1
                except VersionConflict:
                    pass
            start = batch[-1].key
        return removed, left
