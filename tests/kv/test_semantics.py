"""The store contract, held against every backend (and both threading modes of the disk ones)."""

from __future__ import annotations

import asyncio

import pytest

from shoal.kv import (
    Compacted,
    EventType,
    InvalidKey,
    KvStore,
    LimitExceeded,
    Limits,
    NotFound,
    StoreClosed,
    TransactionOp,
    VersionConflict,
)

from .conftest import open_store

BAD_KEYS = ["", "a/b", "no-slash", "/a\0b", "/" + "x" * 1024, "/\ud800", None, b"/bytes", 7]


# -- keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
async def test_bad_keys_are_rejected_up_front(store: KvStore, bad):
    for call in (
        store.get(bad),
        store.set(bad, b"v"),
        store.delete(bad),
        store.version(bad),
        store.exists(bad),
        store.compare_and_set(bad, 0, b"v"),
        store.create_if_not_exists(bad, b"v"),
    ):
        with pytest.raises(InvalidKey) as info:
            await call
        assert "invalid key" in str(info.value)
    with pytest.raises(InvalidKey):
        await store.transaction([TransactionOp.set("/ok", b"1"), TransactionOp.set(bad, b"2")])
    assert await store.version("/ok") == 0  # nothing of the transaction was applied
    assert await store.revision() == 0


async def test_longest_key_and_unicode_keys(store: KvStore):
    longest = "/" + "é" * 511 + "x"  # 1 + 1022 + 1 = 1024 bytes
    assert len(longest.encode()) == 1024
    assert await store.set(longest, b"a") == 1
    assert await store.set(longest[:-1] + "y", b"b") == 1
    assert await store.set(longest[:300], b"c") == 1  # shares a long prefix with the two above
    assert (await store.get(longest)).value == b"a"
    assert await store.list("/é") == sorted([longest, longest[:-1] + "y", longest[:300]])
    assert await store.delete(longest)
    assert await store.get(longest) is None
    assert (await store.get(longest[:-1] + "y")).value == b"b"
    with pytest.raises(InvalidKey, match="at most 1024 bytes"):
        await store.set(longest + "z", b"x")


# -- versions --------------------------------------------------------------------------------------
async def test_versions_start_at_one_and_grow_by_one(store: KvStore):
    assert await store.version("/k") == 0
    assert not await store.exists("/k")
    assert [await store.set("/k", b"%d" % i) for i in range(3)] == [1, 2, 3]
    e = await store.get("/k")
    assert (e.key, e.value, e.version) == ("/k", b"2", 3)
    assert e.created_at <= e.updated_at
    assert await store.exists("/k")


async def test_delete_is_hard(store: KvStore):
    await store.set("/k", b"1")
    await store.set("/k", b"2")
    created = (await store.get("/k")).created_at
    assert await store.delete("/k") is True
    assert await store.delete("/k") is False
    assert await store.version("/k") == 0
    assert await store.get("/k") is None
    await asyncio.sleep(0.002)
    assert await store.set("/k", b"3") == 1
    assert (await store.get("/k")).created_at > created


async def test_updated_at_moves_created_at_stays(store: KvStore):
    await store.set("/k", b"1")
    first = await store.get("/k")
    await asyncio.sleep(0.002)
    await store.set("/k", b"2")
    second = await store.get("/k")
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at


async def test_compare_and_set(store: KvStore):
    assert await store.compare_and_set("/k", 0, b"a") == 1
    with pytest.raises(VersionConflict) as info:
        await store.compare_and_set("/k", 0, b"b")
    assert (info.value.key, info.value.expected, info.value.found) == ("/k", 0, 1)
    assert "expected version 0, found 1" in str(info.value)
    with pytest.raises(VersionConflict) as info:
        await store.compare_and_set("/k", 5, b"b")
    assert (info.value.expected, info.value.found) == (5, 1)
    assert await store.compare_and_set("/k", 1, b"b") == 2
    assert (await store.get("/k")).value == b"b"
    with pytest.raises(VersionConflict) as info:
        await store.compare_and_set("/missing", 1, b"x")
    assert info.value.found == 0
    assert await store.version("/missing") == 0
    with pytest.raises(ValueError):
        await store.compare_and_set("/k", -1, b"x")


async def test_create_if_not_exists(store: KvStore):
    assert await store.create_if_not_exists("/k", b"a") is True
    assert await store.create_if_not_exists("/k", b"b") is False
    e = await store.get("/k")
    assert (e.value, e.version) == (b"a", 1)


async def test_json_and_require(store: KvStore):
    doc = {"name": "api", "replicas": 3, "tags": ["a", "ü"]}
    assert await store.set_json("/w/api", doc) == 1
    assert await store.get_json("/w/api") == doc
    assert await store.get_json("/w/none") is None
    assert await store.get_json("/w/none", default={}) == {}
    assert (await store.require("/w/api")).version == 1
    with pytest.raises(NotFound, match="/w/none"):
        await store.require("/w/none")


async def test_values_are_bytes_and_limited(kind, tmp_path):
    store = await open_store(kind, tmp_path, Limits(max_value_bytes=100, max_txn_ops=3))
    async with store:
        assert await store.set("/k", bytearray(b"x" * 100)) == 1
        assert (await store.get("/k")).value == b"x" * 100
        assert await store.set("/empty", b"") == 1
        assert (await store.get("/empty")).value == b""
        with pytest.raises(LimitExceeded) as info:
            await store.set("/k", b"x" * 101)
        assert (info.value.limit, info.value.actual) == (100, 101)
        assert "over the limit of 100" in str(info.value)
        with pytest.raises(LimitExceeded):
            await store.compare_and_set("/k", 1, b"x" * 101)
        with pytest.raises(TypeError, match="bytes"):
            await store.set("/k", "text")
        with pytest.raises(LimitExceeded, match="operations in one transaction"):
            await store.transaction([TransactionOp.set(f"/t{i}", b"") for i in range(4)])
        with pytest.raises(LimitExceeded):
            await store.transaction([TransactionOp.set("/t", b"x" * 101)])
        assert await store.version("/t0") == 0
        assert (await store.get("/k")).version == 1


# -- list --------------------------------------------------------------------------------------------
async def test_list_is_an_ordered_range_scan(store: KvStore):
    keys = ["/a/b", "/a/%", "/a/_x", "/a/B", "/a", "/ab", "/a/b/c", "/a/\U0010ffff", "/a/é", "/b", "/a/"]
    for k in keys:
        await store.set(k, b"")
    assert await store.list("/a/") == sorted(k for k in keys if k.startswith("/a/"))
    assert await store.list("") == sorted(keys)
    assert await store.list("/a/%") == ["/a/%"]  # % and _ are plain characters
    assert await store.list("/a/_") == ["/a/_x"]
    assert await store.list("/a/b") == ["/a/b", "/a/b/c"]  # case matters
    assert await store.list("/A") == []
    assert await store.list("/a/\U0010ffff") == ["/a/\U0010ffff"]
    assert await store.list("/zzz") == []
    # pages
    under = sorted(k for k in keys if k.startswith("/a"))
    assert await store.list("/a", limit=3) == under[:3]
    assert await store.list("/a", start_after=under[2], limit=3) == under[3:6]
    assert await store.list("/a", start_after=under[-1]) == []
    assert await store.list("/a", limit=0) == []
    entries = await store.entries("/a/b")
    assert [(e.key, e.version) for e in entries] == [("/a/b", 1), ("/a/b/c", 1)]
    with pytest.raises(InvalidKey):
        await store.list("a")


# -- transactions -------------------------------------------------------------------------------------
async def test_transaction_all_or_nothing(store: KvStore):
    await store.set("/a", b"1")
    await store.set("/b", b"1")
    await store.set("/b", b"2")
    rev = await store.revision()
    with pytest.raises(VersionConflict) as info:
        await store.transaction(
            [
                TransactionOp.set("/c", b"new"),
                TransactionOp.check_version("/a", 1),
                TransactionOp.delete("/a"),
                TransactionOp.check_version("/b", 1),  # fails: /b is at 2
            ]
        )
    assert (info.value.key, info.value.expected, info.value.found) == ("/b", 1, 2)
    assert await store.revision() == rev
    assert await store.version("/c") == 0
    assert await store.version("/a") == 1

    result = await store.transaction(
        [
            TransactionOp.check_version("/a", 1),
            TransactionOp.check_version("/b", 2),
            TransactionOp.check_version("/missing", 0),
            TransactionOp.set("/a", b"A"),
            TransactionOp.delete("/b"),
            TransactionOp.set("/c", b"C"),
            TransactionOp.delete("/never"),
        ]
    )
    assert result.revision == rev + 1 == await store.revision()
    assert result.versions == [1, 2, 0, 2, 0, 1, 0]
    assert result.deleted == [False, False, False, False, True, False, False]
    assert (await store.get("/a")).revision == rev + 1
    assert await store.version("/b") == 0
    assert (await store.get("/c")).value == b"C"


async def test_checks_see_the_state_before_the_transaction(store: KvStore):
    # The check comes after a set of the same key in op order but is evaluated first.
    result = await store.transaction(
        [TransactionOp.set("/k", b"1"), TransactionOp.set("/k", b"2"), TransactionOp.check_version("/k", 0)]
    )
    assert result.versions == [1, 2, 0]
    assert (await store.get("/k")).value == b"2"
    # set then delete then set again in one transaction
    result = await store.transaction(
        [TransactionOp.delete("/k"), TransactionOp.set("/k", b"3"), TransactionOp.set("/k", b"4")]
    )
    assert result.versions == [0, 1, 2]
    assert (await store.get("/k")).version == 2


async def test_read_only_transaction_writes_nothing(store: KvStore):
    await store.set("/a", b"")
    result = await store.transaction([TransactionOp.check_version("/a", 1), TransactionOp.delete("/none")])
    assert result.revision == 1 == await store.revision()
    assert result.deleted == [False, False]
    empty = await store.transaction([])
    assert (empty.revision, empty.versions) == (1, [])
    with pytest.raises(TypeError):
        await store.transaction([("set", "/a", b"")])


async def test_revision_is_stamped_on_entries(store: KvStore):
    assert await store.revision() == 0
    await store.set("/a", b"")
    await store.set("/b", b"")
    await store.delete("/missing")  # no change, no revision
    await store.set("/a", b"")
    assert await store.revision() == 3
    assert (await store.get("/a")).revision == 3
    assert (await store.get("/b")).revision == 2


# -- watch -------------------------------------------------------------------------------------------
async def next_events(w, n: int) -> list:
    return [await asyncio.wait_for(anext(w), 5) for _ in range(n)]


async def test_watch_prefix_and_exact(store: KvStore):
    await store.set("/w/before", b"")
    prefix = store.watch("/w/*")
    exact = store.watch("/w/a")
    await store.set("/w/a", b"1")
    await store.set("/other", b"x")
    await store.set("/w/a", b"2")
    await store.transaction([TransactionOp.set("/w/b", b"b"), TransactionOp.delete("/w/a")])
    got = await next_events(prefix, 4)
    assert [(e.event_type, e.key, e.value, e.version) for e in got] == [
        (EventType.Created, "/w/a", b"1", 1),
        (EventType.Updated, "/w/a", b"2", 2),
        (EventType.Created, "/w/b", b"b", 1),
        (EventType.Deleted, "/w/a", None, 0),
    ]
    assert [e.revision for e in got] == [2, 4, 5, 5]
    got = await next_events(exact, 3)
    assert [e.event_type for e in got] == [EventType.Created, EventType.Updated, EventType.Deleted]
    await store.flush_watches()
    assert prefix.pending() == [] and exact.pending() == []
    prefix.close()
    exact.close()
    with pytest.raises(StopAsyncIteration):
        await anext(prefix)


async def test_watch_patterns_are_validated(store: KvStore):
    for bad in ["", "*", "w/*", "/a\0*", None]:
        with pytest.raises(InvalidKey):
            store.watch(bad)
    store.watch("/*").close()


async def test_watch_from_revision_replays_history(kind, tmp_path):
    store = await open_store(kind, tmp_path, Limits(history=5))
    async with store:
        for i in range(8):
            await store.set(f"/h/{i % 3}", b"%d" % i)
        # revisions 1..8; history 5 keeps 4..8
        with pytest.raises(Compacted) as info:
            store.watch("/h/*", from_revision=3)
        assert info.value.oldest == 4
        assert "oldest retained revision is 4" in str(info.value)
        w = store.watch("/h/*", from_revision=4)
        got = await next_events(w, 5)
        assert [e.revision for e in got] == [4, 5, 6, 7, 8]
        assert [e.value for e in got] == [b"3", b"4", b"5", b"6", b"7"]
        await store.set("/h/x", b"live")
        assert (await next_events(w, 1))[0].value == b"live"
        future = store.watch("/h/*", from_revision=11)
        await store.set("/h/y", b"10")
        await store.set("/h/y", b"11")
        assert [e.revision for e in await next_events(future, 1)] == [11]
        with pytest.raises(ValueError):
            store.watch("/h/*", from_revision=0)


async def test_slow_watcher_catches_up_from_the_log(store: KvStore):
    w = store.watch("/s/*")
    n = 3000  # more than a watcher buffers
    for start in range(0, n, 100):
        await store.transaction([TransactionOp.set(f"/s/{i:05d}", b"") for i in range(start, start + 100)])
        await store.flush_watches()
    got = await next_events(w, n)
    assert [e.key for e in got] == [f"/s/{i:05d}" for i in range(n)]
    await store.flush_watches()
    assert w.pending() == []


async def test_slow_watcher_past_history_gets_compacted(kind, tmp_path):
    store = await open_store(kind, tmp_path, Limits(history=10))
    async with store:
        w = store.watch("/s/*")
        for i in range(1100):  # the buffer fills at 1024 events, then history moves on
            await store.set("/s/k", b"%d" % i)
            await store.flush_watches()  # the hub keeps up; only this watcher's consumer is slow
        got = 0
        with pytest.raises(Compacted):
            while True:
                await asyncio.wait_for(anext(w), 5)
                got += 1
        assert got == 1024
        with pytest.raises(StopAsyncIteration):
            await anext(w)


async def test_close_ends_watches_and_operations(kind, tmp_path):
    store = await open_store(kind, tmp_path)
    w = store.watch("/*")
    waiter = asyncio.ensure_future(anext(w))
    await asyncio.sleep(0.01)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 5)
    with pytest.raises(StoreClosed):
        await store.get("/a")
    with pytest.raises(StoreClosed):
        await store.set("/a", b"")
    with pytest.raises(StoreClosed):
        store.watch("/*")
    await store.close()  # idempotent


async def test_reopen_keeps_data_and_revision(kind, tmp_path):
    if kind == "memory":
        pytest.skip("by design: memory has nothing to reopen")
    async with await open_store(kind, tmp_path) as store:
        await store.set("/p", b"persist")
        await store.set("/p", b"persist2")
    async with await open_store(kind, tmp_path) as store:
        e = await store.get("/p")
        assert (e.value, e.version, e.revision) == (b"persist2", 2, 2)
        assert await store.revision() == 2
        w = store.watch("/p", from_revision=1)
        assert [ev.version for ev in await next_events(w, 2)] == [1, 2]
