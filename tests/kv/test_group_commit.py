"""Durable stores commit concurrent writes in groups (kv/group_commit.py): one transaction and
one fsync for many writes, with every write's outcome exactly as if they had committed alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shoal.kv import KvStore, LmdbStore, SqliteStore, TransactionOp, VersionConflict

BACKENDS = ["sqlite", "lmdb"]


async def durable(backend: str, path: Path) -> KvStore:
    if backend == "sqlite":
        return await SqliteStore.open(path / "kv.db", durable=True)
    return await LmdbStore.open(path / "kv.lmdb", durable=True)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_writes_share_commits_and_keep_their_own_outcomes(backend, tmp_path):
    store = await durable(backend, tmp_path)
    try:
        await store.set("/race", b"0")
        watch = store.watch("/*", from_revision=2)
        sets = [store.set(f"/k/{i:03d}", b"v%d" % i) for i in range(200)]
        cas = [store.compare_and_set("/race", 1, b"%d" % i) for i in range(20)]
        failing_txn = store.transaction(
            [TransactionOp.set("/t/a", b"a"), TransactionOp.check_version("/race", 7)]
        )
        deletes = [store.delete("/absent"), store.delete(f"/k/{199:03d}")]
        out = await asyncio.gather(*sets, *cas, failing_txn, *deletes, return_exceptions=True)

        assert out[:200] == [1] * 200
        cas_out = out[200:220]
        assert cas_out.count(2) == 1  # exactly one compare-and-set wins ...
        assert all(
            isinstance(r, VersionConflict) and r.found == 2 for r in cas_out if r != 2
        )  # ... the rest see it
        assert isinstance(out[220], VersionConflict)  # failed alone: its set of /t/a did not happen
        assert await store.get("/t/a") is None
        assert out[221:] == [False, True]
        assert (await store.get("/race")).value == b"%d" % cas_out.index(2)
        assert len(await store.list("/k/")) == 199

        group = store._group
        assert group is not None and group.batches < group.writes  # they really were grouped
        events = [await asyncio.wait_for(anext(watch), 5) for _ in range(202)]
        revs = [e.revision for e in events]
        assert revs == list(range(2, 204))  # one revision per write that took effect, in order
    finally:
        await store.close()

    again = await durable(backend, tmp_path)  # all of it was committed
    try:
        assert len(await again.list("/k/")) == 199
        assert await again.revision() == 203
    finally:
        await again.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_group_that_fails_to_commit_fails_every_write_in_it(backend, tmp_path):
    """An error committing the group reaches every waiter in it, and none of its writes happened."""
    store = await durable(backend, tmp_path)
    await store.set("/a", b"1")
    group = store._group
    assert group is not None
    real = group._commit_batch

    def broken(items):
        raise RuntimeError("disk on fire")

    group._commit_batch = broken
    try:
        out = await asyncio.gather(*(store.set(f"/x/{i}", b"x") for i in range(10)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in out)
        group._commit_batch = real
        assert await store.list("/x/") == []
        assert await store.set("/a", b"2") == 2  # the writer thread carries on
    finally:
        group._commit_batch = real
        await store.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_writes_racing_close_fail_cleanly_instead_of_hanging(backend, tmp_path):
    from shoal.kv import StoreClosed

    store = await durable(backend, tmp_path)
    pending = [asyncio.ensure_future(store.set(f"/c/{i}", b"x")) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    late = await asyncio.gather(store._group.write(lambda *a: None), return_exceptions=True)
    assert isinstance(late[0], StoreClosed)
    done = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    assert all(r == 1 or isinstance(r, StoreClosed) for r in done)  # committed, or refused: never hung
    again = await durable(backend, tmp_path)
    try:
        assert len(await again.list("/c/")) == sum(r == 1 for r in done)  # acknowledged ones are there
    finally:
        await again.close()
