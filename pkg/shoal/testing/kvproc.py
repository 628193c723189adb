"""Child processes for the kv multi-process tests: `python -m shoal.testing.kvproc <job> ...`.

Jobs (each opens its own store on the shared file):
  writer BACKEND PATH            write pairs of keys in transactions forever, printing "ack N" after
                                 each acknowledged write (the crash test kills it mid-load)
  race BACKEND PATH ROUNDS GO    wait for file GO, then each round try compare_and_set("/race", round);
                                 print "round R won|lost"
  burst BACKEND PATH N           write N keys /burst/<i> with the wall-clock time as value
  fill BACKEND PATH N SIZE       write N keys /fill/<i> of SIZE bytes (grows an LMDB map)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from shoal.kv import KvStore, LmdbStore, SqliteStore, TransactionOp, VersionConflict


async def open_store(backend: str, path: str, durable: bool = True) -> KvStore:
    if backend == "sqlite":
        return await SqliteStore.open(path, durable=durable)
    if backend == "lmdb":
        return await LmdbStore.open(path, durable=durable, map_size=1 << 20)  # small: growth under load
    raise SystemExit(f"unknown backend {backend}")


async def writer(backend: str, path: str) -> None:
    store = await open_store(backend, path)
    n = 0
    payload = b"p" * 200
    while True:
        value = b"%d:" % n + payload
        await store.transaction(
            [TransactionOp.set(f"/crash/{n}/a", value), TransactionOp.set(f"/crash/{n}/b", value)]
        )
        sys.stdout.write(f"ack {n}\n")
        sys.stdout.flush()
        n += 1


async def writers(backend: str, path: str, tasks: int) -> None:
    """`tasks` concurrent writers of pair transactions (durable: they share group commits)."""
    store = await open_store(backend, path)
    payload = b"p" * 200

    async def one(t: int) -> None:
        n = 0
        while True:
            value = b"%d:%d:" % (t, n) + payload
            await store.transaction(
                [TransactionOp.set(f"/crash/{t}/{n}/a", value), TransactionOp.set(f"/crash/{t}/{n}/b", value)]
            )
            sys.stdout.write(f"ack {t} {n}\n")
            sys.stdout.flush()
            n += 1

    await asyncio.gather(*(one(t) for t in range(tasks)))


async def race(backend: str, path: str, rounds: int, go: str) -> None:
    store = await open_store(backend, path, durable=False)
    while not await asyncio.to_thread(os.path.exists, go):
        await asyncio.sleep(0.001)
    pid = str(os.getpid()).encode()
    for r in range(rounds):
        try:
            await store.compare_and_set("/race", r, pid)
            print(f"round {r} won", flush=True)
        except VersionConflict:
            print(f"round {r} lost", flush=True)
        while await store.version("/race") <= r:  # wait for this round's winner
            await asyncio.sleep(0.0005)
    await store.close()


async def burst(backend: str, path: str, n: int) -> None:
    store = await open_store(backend, path, durable=False)
    for i in range(n):
        await store.set(f"/burst/{i}", repr(time.time()).encode())
        if i % 10 == 0:
            await asyncio.sleep(0.001)  # a realistic trickle, so delivery latency means something
    await store.close()


async def fill(backend: str, path: str, n: int, size: int) -> None:
    store = await open_store(backend, path, durable=False)
    for i in range(n):
        await store.set(f"/fill/{i}", bytes([i % 251]) * size)
    await store.close()


def main(argv: list[str]) -> None:
    job, backend, path, *rest = argv
    if job == "writer":
        asyncio.run(writer(backend, path))
    elif job == "writers":
        asyncio.run(writers(backend, path, int(rest[0])))
    elif job == "race":
        asyncio.run(race(backend, path, int(rest[0]), rest[1]))
    elif job == "burst":
        asyncio.run(burst(backend, path, int(rest[0])))
    elif job == "fill":
        asyncio.run(fill(backend, path, int(rest[0]), int(rest[1])))
    else:
        raise SystemExit(f"unknown job {job}")


if __name__ == "__main__":
    main(sys.argv[1:])
