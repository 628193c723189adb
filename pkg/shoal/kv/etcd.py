"""EtcdStore: the KvStore contract on an etcd v3 cluster, so services on several machines share state.

Layout and envelope: see etcd_codec. Semantics, and how etcd provides them:

- Revisions: store revision = etcd revision - the namespace's base revision. When the namespace is
  the only writer of the cluster this counts write transactions exactly like the other backends;
  with other writers (other namespaces, other tools) it still only grows, with gaps.
- Writes are optimistic etcd transactions: read (or guess from a cache) every touched key, plan
  with the shared planner (base.plan_transaction), then commit guarded by `mod_revision ==` what
  was read for every key. A failed guard returns the keys' current state in the same round trip
  and the plan is redone, so a write costs one round trip when the guess was right. A check that
  fails is reported only once confirmed against etcd, so it is linearizable.
- A write whose answer was lost (member died mid-request) is looked up by its commit id in the
  change log before anything is retried: it is applied exactly once.
- Watch: a mirror of the namespace's commits fed by one etcd watch stream (etcd_log), read by the
  same WatchHub as the other backends. `limits.history` revisions are kept for watches. etcd
  compaction is cluster-wide (it drops every client's history), so the store compacts only when
  told to (compact=True, `--etcd-compact`); by default the cluster's own policy applies.
- Writers of one key inside one process queue on a per-key lock, so contention on a hot key
  costs optimistic retries only between processes (which back off with jitter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import NamedTuple

from aetcd import rpc

from .base import KvStore, Mutation, check_expected, check_list_args, plan_transaction, validate_ops
from .errors import Compacted, LimitExceeded, StoreBusy, StoreUnavailable, VersionConflict
from .etcd_client import Ambiguous, EtcdClient
from .etcd_codec import (
    RecordEvent,
    namespace_prefix,
    pack_record,
    pack_value,
    prefix_end,
    unpack_value,
)
from .etcd_log import ChangeMirror, Follower, closed_floor
from .keys import check_key, parse_pattern
from .model import EVENT_CODES, Entry, EventType, Limits, TransactionOp, TxnResult
from .watch import Watch, WatchHub

log = logging.getLogger(__name__)

MOD = rpc.Compare.CompareTarget.Value("MOD")
CREATE = rpc.Compare.CompareTarget.Value("CREATE")
EQUAL = rpc.Compare.CompareResult.Value("EQUAL")
MAX_ATTEMPTS = 64  # optimistic retries of one write under contention
CACHE_SIZE = 16_384
LIST_BATCH = 10_000  # keys per range request when listing without a limit
ENTRY_BATCH = 128  # entries per range request (values up to 1 MiB each)
CREATED, UPDATED, DELETED = (
    EVENT_CODES[t] for t in (EventType.Created, EventType.Updated, EventType.Deleted)
)


class KeyState(NamedTuple):
    """What a write needs to know of a key: its etcd mod_revision (0: absent), version, created_at."""

    mod: int
    version: int
    created: float


ABSENT = KeyState(0, 0, 0.0)


class EtcdStore(KvStore):
    """A KvStore in one namespace of an etcd cluster. Open with `await EtcdStore.open(endpoints)`."""

    poll_interval = None  # the follower wakes the hub; nothing to poll
    durable = True  # etcd acknowledges a write once a quorum has it on disk

    def __init__(self) -> None:  # use open()
        self._client: EtcdClient
        self._cache: dict[str, KeyState] = {}
        self._known = 0  # the newest store revision any etcd answer has shown us
        self._compacted = 0
        self._key_locks: dict[str, list] = {}  # key -> [lock, users]
        self._compact_task: asyncio.Task[None] | None = None
        self.ambiguous_writes = 0  # writes whose answer was lost and that were looked up by id

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str],
        *,
        namespace: str = "kv",
        limits: Limits | None = None,
        compact: bool = False,
        timeout: float = 30.0,
        call_timeout: float = 5.0,
        max_request_bytes: int = 1_572_864,
        max_txn_ops: int = 128,
    ) -> EtcdStore:
        """Connect and open (creating if needed) `namespace`.

        endpoints: "http://h1:2379,http://h2:2379" or a list; requests move to the next one when
        one fails. timeout: how long an operation keeps trying while etcd is unreachable (then
        StoreUnavailable). max_request_bytes / max_txn_ops: the etcd server's --max-request-bytes
        and --max-txn-ops, checked before sending (a transaction uses one op per written key plus
        one for the commit record). compact: compact etcd to keep `limits.history` revisions (off by
        default: etcd compaction removes other clients' history too).
        """
        self = cls()
        self.limits = limits or Limits()
        self.namespace = namespace
        self.prefix = namespace_prefix(namespace)
        self.compact = compact
        self.max_request_bytes = max_request_bytes
        self.etcd_max_txn_ops = max_txn_ops
        self._client = EtcdClient(endpoints, call_timeout=call_timeout, timeout=timeout)
        try:
            await self._open()
        except BaseException:
            await self._client.close()
            raise
        return self

    async def _open(self) -> None:
        head = self.prefix
        resp = await self._client.call(
            "Txn",
            rpc.TxnRequest(
                compare=[rpc.Compare(key=head, target=CREATE, result=EQUAL, create_revision=0)],
                success=[_put(head, pack_record(b"", None))],
                failure=[_range(head)],
            ),
        )  # not write=True: a lost answer is harmless here, the retry reads the head key
        if resp.succeeded:
            self.base = resp.header.revision
        else:
            self.base = resp.responses[0].response_range.kvs[0].create_revision
        current = self._seen(resp.header.revision)
        floor = max(1, closed_floor(current, self.limits.history))
        self._compacted = floor
        self._mirror = ChangeMirror(self.limits.history, floor, self._hold)
        self._follower = Follower(
            self._client, head, self.base, self._mirror, self._notify, self._key_seen, self._restarted
        )
        self._follower.start()

    # -- plumbing ------------------------------------------------------------------------------
    def _ekey(self, key: str) -> bytes:
        return self.prefix + check_key(key)

    def _seen(self, etcd_revision: int) -> int:
        rev = etcd_revision - self.base
        if rev > self._known:
            self._known = rev
        return rev

    def _remember(self, key: str, state: KeyState) -> None:
        cache = self._cache
        if len(cache) >= CACHE_SIZE and key not in cache:
            cache.clear()
        cache[key] = state

    def _key_seen(self, key: str, mod: int, version: int, created: float) -> None:
        """The follower saw a commit to `key`: refresh its cached state (never move it back)."""
        cur = self._cache.get(key)
        if cur is not None and cur.mod < mod:
            self._cache[key] = KeyState(mod, version, created) if version else ABSENT

    def _entry(self, key: str, kv) -> Entry:
        version, created, updated, value = unpack_value(kv.value, kv.version)
        self._remember(key, KeyState(kv.mod_revision, version, created))
        return Entry(key, value, version, created, updated, kv.mod_revision - self.base)

    def _state_of(self, kvs) -> KeyState:
        if not kvs:
            return ABSENT
        kv = kvs[0]
        version, created, _, _ = unpack_value(kv.value, kv.version)
        return KeyState(kv.mod_revision, version, created)

    # -- reads ------------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        self._check_open()
        ekey = self._ekey(key)
        resp = await self._client.call("Range", rpc.RangeRequest(key=ekey))
        self._seen(resp.header.revision)
        if not resp.kvs:
            self._remember(key, ABSENT)
            return None
        return self._entry(key, resp.kvs[0])

    async def version(self, key: str) -> int:
        entry = await self.get(key)
        return 0 if entry is None else entry.version

    def _bounds(self, prefix: str, start_after: str | None) -> tuple[bytes, bytes]:
        if prefix:
            start = self.prefix + check_key(prefix)
            end = self.prefix + prefix_end(prefix.encode())
        else:
            start, end = self.prefix + b"/", self.prefix + b"0"
        if start_after is not None and start_after >= prefix:
            after = self.prefix + start_after.encode("utf-8", "surrogatepass") + b"\0"
            start = max(start, after)
        return start, end

    async def _scan(self, prefix: str, start_after: str | None, limit: int | None, keys_only: bool) -> list:
        check_list_args(prefix, start_after, limit)
        self._check_open()
        start, end = self._bounds(prefix, start_after)
        batch = LIST_BATCH if keys_only else ENTRY_BATCH
        out: list = []
        pinned = 0  # later pages read at the first page's revision: one consistent snapshot
        while start < end and (limit is None or len(out) < limit):
            want = batch if limit is None else min(batch, limit - len(out))
            req = rpc.RangeRequest(key=start, range_end=end, limit=want, keys_only=keys_only, revision=pinned)
            resp = await self._client.call("Range", req)
            if not pinned:
                pinned = resp.header.revision
                self._seen(pinned)
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                break
            start = resp.kvs[-1].key + b"\0"
        return out

    async def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        n = len(self.prefix)
        return [kv.key[n:].decode() for kv in await self._scan(prefix, start_after, limit, True)]

    async def entries(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[Entry]:
        n = len(self.prefix)
        return [
            self._entry(kv.key[n:].decode(), kv) for kv in await self._scan(prefix, start_after, limit, False)
        ]

    async def revision(self) -> int:
        self._check_open()
        resp = await self._client.call("Range", rpc.RangeRequest(key=self.prefix, count_only=True))
        return self._seen(resp.header.revision)

    async def _head(self) -> int:
        """The store revision of the namespace's newest commit (the head key's mod_revision)."""
        resp = await self._client.call("Range", rpc.RangeRequest(key=self.prefix, keys_only=True))
        self._seen(resp.header.revision)
        return resp.kvs[0].mod_revision - self.base if resp.kvs else 0

    # -- writes -----------------------------------------------------------------------------
    async def set(self, key: str, value: bytes) -> int:
        self._check_open()
        check_key(key)
        value = self.limits.check_value(value)
        return (await self._commit([TransactionOp("set", key, value)])).versions[0]

    async def delete(self, key: str) -> bool:
        self._check_open()
        check_key(key)
        return (await self._commit([TransactionOp("delete", key)])).deleted[0]

    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        self._check_open()
        check_key(key)
        check_expected(expected_version)
        value = self.limits.check_value(value)
        ops = [TransactionOp("check", key, None, expected_version), TransactionOp("set", key, value)]
        return (await self._commit(ops)).versions[1]

    async def transaction(self, ops: Sequence[TransactionOp]) -> TxnResult:
        self._check_open()
        return await self._commit(validate_ops(ops, self.limits))

    async def _commit(self, ops: list[TransactionOp]) -> TxnResult:
        """Writers of the same keys in this process take turns (per-key locks, in key order so
        two transactions never wait on each other); then the optimistic commit below."""
        if all(op.kind == "check" for op in ops):
            return await self._commit_optimistic(ops)
        keys = sorted({op.key for op in ops if op.kind != "check"})
        locks = [self._key_lock(k) for k in keys]
        try:
            for lock in locks:
                await lock.acquire()
            return await self._commit_optimistic(ops)
        finally:
            for k, lock in zip(keys, locks, strict=True):
                if lock.locked():
                    lock.release()
                self._key_unlock(k)

    def _key_lock(self, key: str) -> asyncio.Lock:
        entry = self._key_locks.get(key)
        if entry is None:
            entry = self._key_locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        return entry[0]

    def _key_unlock(self, key: str) -> None:
        entry = self._key_locks[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._key_locks[key]

    async def _commit_optimistic(self, ops: list[TransactionOp]) -> TxnResult:
        """Plan against the keys' state and commit guarded by it; redo on a stale state."""
        keys = list(dict.fromkeys(op.key for op in ops))
        ekeys = [self.prefix + k.encode() for k in keys]
        cache = self._cache
        state = {k: cache.get(k, ABSENT) for k in keys}
        read_at: int | None = None  # the revision `state` was read at, once it comes from etcd
        txn_id = os.urandom(12)
        sent = False  # a commit with txn_id may have reached etcd
        failure = [_range(k) for k in ekeys]
        client = self._client
        for attempt in range(MAX_ATTEMPTS):
            if attempt >= 2:  # another process keeps winning: back off, with jitter
                await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
            conflict: VersionConflict | None = None
            writes: list[Mutation] = []
            try:
                versions, deleted, writes = plan_transaction(ops, lambda k, s=state: s[k].version)
            except VersionConflict as err:
                if read_at is not None:
                    raise
                conflict = err
            compare = [
                rpc.Compare(key=ek, target=MOD, result=EQUAL, mod_revision=state[k].mod)
                for k, ek in zip(keys, ekeys, strict=True)
            ]
            if not writes:  # a conflict or a read-only transaction: confirm the state it saw
                if read_at is not None:
                    return TxnResult(read_at, versions, deleted)
                resp = await client.call("Txn", rpc.TxnRequest(compare=compare, failure=failure))
                rev = self._seen(resp.header.revision)
                if resp.succeeded:
                    if conflict is not None:
                        raise conflict
                    return TxnResult(rev, versions, deleted)
            else:
                success, finals = self._plan_writes(writes, state, txn_id)
                req = rpc.TxnRequest(compare=compare, success=success, failure=failure)
                self._check_request(req)
                try:
                    resp = await client.call("Txn", req, write=True)
                except Ambiguous as err:
                    sent = True
                    self.ambiguous_writes += 1
                    rev = await self._resolve(txn_id, err)
                    if rev is not None:
                        return self._committed(rev, finals, versions, deleted)
                    resp = await client.call("Txn", rpc.TxnRequest(success=failure))
                    state = {
                        k: self._state_of(r.response_range.kvs)
                        for k, r in zip(keys, resp.responses, strict=True)
                    }
                    read_at = self._seen(resp.header.revision)
                    continue
                rev = self._seen(resp.header.revision)
                if resp.succeeded:
                    return self._committed(rev, finals, versions, deleted)
                if sent:  # the lost commit may have landed since: it would be in the log
                    found = await self._resolve(txn_id, None)
                    if found is not None:
                        return self._committed(found, finals, versions, deleted)
            state = {
                k: self._state_of(r.response_range.kvs) for k, r in zip(keys, resp.responses, strict=True)
            }
            for k, s in state.items():
                self._remember(k, s)
            read_at = rev
        raise StoreBusy(f"etcd: gave up after {MAX_ATTEMPTS} conflicting attempts on {keys[:4]}")

    def _plan_writes(
        self, writes: list[Mutation], state: dict[str, KeyState], txn_id: bytes
    ) -> tuple[list, dict[str, KeyState]]:
        """etcd ops for the planned writes: the last write of each key, plus the commit record."""
        now = time.time()
        created = {k: (s.created if s.mod else None) for k, s in state.items()}
        final: dict[str, tuple[bytes | None, int, float | None]] = {}
        events: list[RecordEvent] = []
        for key, value, version in writes:
            if value is None:
                created[key] = None
                events.append((key, DELETED, 0, None))
            else:
                if created[key] is None:
                    created[key] = now
                events.append((key, CREATED if version == 1 else UPDATED, version, value))
            final[key] = (value, version, created[key])
        repeated = len(final) < len(writes)
        if repeated:  # etcd keeps only the last write of a key: record the others' values
            last = {key: i for i, (key, _, _) in enumerate(writes)}
            events = [
                (k, code, v, None if last[k] == i or code == DELETED else val)
                for i, (k, code, v, val) in enumerate(events)
            ]
        success = []
        finals: dict[str, KeyState] = {}
        for key, (value, version, made) in final.items():
            ekey = self.prefix + key.encode()
            if value is None:
                finals[key] = ABSENT
                if state[key].mod:
                    success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=ekey)))
            else:
                assert made is not None
                finals[key] = KeyState(-1, version, made)  # mod filled in on commit
                success.append(_put(ekey, pack_value(version, made, now, value)))
        success.append(_put(self.prefix, pack_record(txn_id, events if repeated else None)))
        return success, finals

    def _check_request(self, req: rpc.TxnRequest) -> None:
        ops = max(len(req.compare), len(req.success), len(req.failure))
        if ops > self.etcd_max_txn_ops:
            raise LimitExceeded(
                "etcd operations in one transaction (etcd --max-txn-ops)", self.etcd_max_txn_ops, ops
            )
        size = req.ByteSize()
        if size > self.max_request_bytes:
            raise LimitExceeded(
                "etcd request size in bytes, values included (etcd --max-request-bytes)",
                self.max_request_bytes,
                size,
            )

    def _committed(
        self, rev: int, finals: dict[str, KeyState], versions: list[int], deleted: list[bool]
    ) -> TxnResult:
        mod = rev + self.base
        for key, s in finals.items():
            self._remember(key, s if not s.version else KeyState(mod, s.version, s.created))
        self._maybe_compact(rev)
        return TxnResult(rev, versions, deleted)

    async def _resolve(self, txn_id: bytes, err: Ambiguous | None) -> int | None:
        """The revision a commit with this id landed at, or None if it did not (yet)."""
        head = await self._head()
        if not await self._mirror.wait(head, self._client.timeout):
            raise StoreUnavailable(f"etcd: could not learn whether a write was applied ({err})")
        return self._mirror.txns.get(txn_id)

    # -- compaction -------------------------------------------------------------------------------
    def _maybe_compact(self, rev: int) -> None:
        if not self.compact:
            return
        # Never past what this store's follower has read: its own compaction must not cut its log.
        floor = min(closed_floor(rev, self.limits.history), self._mirror.position + 1)
        task = self._compact_task
        if floor > self._compacted and (task is None or task.done()):
            self._compacted = floor
            self._compact_task = asyncio.get_running_loop().create_task(self._compact(floor))

    async def _compact(self, floor: int) -> None:
        """Let etcd drop history before `floor` (it keeps revision floor - 1's state, and all after)."""
        try:
            await self._client.call("Compact", rpc.CompactionRequest(revision=self.base + floor - 1))
        except Exception as err:
            if "compacted" not in str(err) and not self._closed:
                log.warning("etcd compaction to %d failed: %s", self.base + floor - 1, err)

    # -- watch ------------------------------------------------------------------------------
    def watch(self, pattern: str, from_revision: int | None = None) -> Watch:
        self._check_open()
        target, is_prefix = parse_pattern(pattern)
        if from_revision is None:
            start = self._known + 1  # after every write this process has seen acknowledged
        else:
            if type(from_revision) is not int or from_revision < 1:
                raise ValueError("from_revision starts at 1")
            if from_revision <= self._known:
                oldest = self._oldest_revision()
                if from_revision < oldest:
                    raise Compacted(from_revision, oldest)
            start = from_revision
        if self._hub is None:
            self._hub = WatchHub(self)
        return self._hub.add(target, is_prefix, start)

    async def flush_watches(self) -> None:
        """Wait until the follower has every commit made so far (by anyone), then dispatch it."""
        self._check_open()
        head = await self._head()
        if not await self._mirror.wait(head, self._client.timeout):
            raise StoreUnavailable("etcd: the watch stream did not catch up")
        if self._hub is not None:
            self._hub.poll()

    def _restarted(self, floor: int) -> None:
        """etcd compacted revisions the follower had not read: watchers that needed them fail."""
        if self._hub is not None:
            self._hub.skip_to(floor - 1, self._oldest_revision())
        self._notify()

    def _hold(self) -> int:
        """The oldest revision the watch hub still has to read from the mirror."""
        hub = self._hub
        return hub.last_seen + 1 if hub is not None and hub.watchers else 1 << 62

    def _current_revision(self) -> int:
        return self._mirror.position

    def _complete_from(self) -> int:
        """Where the mirror holds every commit from (it has gaps: other namespaces' revisions)."""
        return self._mirror.kept_from

    def _oldest_revision(self) -> int:
        return max(1, closed_floor(self._known, self.limits.history), self._mirror.floor)

    def _changes(self, after: int, upto: int) -> list:
        return self._mirror.changes(after, upto)

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        await self._follower.stop()
        task = self._compact_task
        if task is not None and not task.done():
            task.cancel()
        await self._client.close()


def _put(key: bytes, value: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def _range(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
