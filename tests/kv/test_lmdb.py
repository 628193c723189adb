"""LMDB specifics: the map grows when full, and a map grown by another process is adopted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shoal.kv import Limits, LmdbStore, TransactionOp


@pytest.mark.parametrize("durable", [True, False], ids=["writer-thread", "inline"])
async def test_full_map_grows_and_retries(durable, tmp_path):
    store = await LmdbStore.open(
        tmp_path / "kv.lmdb", durable=durable, map_size=128 << 10, limits=Limits(history=50)
    )
    async with store:
        start = store._env.info()["map_size"]
        watch = store.watch("/big/*")
        for i in range(150):
            assert await store.set(f"/big/{i}", bytes([i]) * 8000) == 1
            await store.flush_watches()  # keep the hub within the 50 revisions of history
        await store.transaction([TransactionOp.set(f"/big/t{i}", b"t" * 8000) for i in range(40)])
        assert store._env.info()["map_size"] > start
        for i in range(150):
            assert (await store.get(f"/big/{i}")).value == bytes([i]) * 8000
        assert len(await store.list("/big/")) == 190
        await store.flush_watches()
        assert len(watch.pending()) == 190


async def test_map_grown_by_another_process_is_adopted(tmp_path):
    path = tmp_path / "kv.lmdb"
    store = await LmdbStore.open(path, durable=False, map_size=256 << 10)
    async with store:
        await store.set("/mine", b"1")
        watch = store.watch("/fill/*")
        small = store._env.info()["map_size"]
        adopted = []
        resize = store._resize

        async def spy(size: int) -> None:  # records that the MapResizedError path really ran
            adopted.append(size)
            await resize(size)

        store._resize = spy
        # The child starts at 1 MiB and grows far beyond our 256 KiB map.
        proc = subprocess.run(
            [sys.executable, "-m", "shoal.testing.kvproc", "fill", "lmdb", str(path), "200", "20000"],
            timeout=60,
        )
        assert proc.returncode == 0
        assert (await store.get("/fill/199")).value == bytes([199]) * 20000  # read: MapResizedError path
        assert await store.set("/mine", b"2") == 2  # write: adopt, then commit
        assert store._env.info()["map_size"] > small
        assert adopted and adopted[0] == 0
        assert len(await store.list("/fill/")) == 200
        await store.flush_watches()
        assert len(watch.pending()) == 200
