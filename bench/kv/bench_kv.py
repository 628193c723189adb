"""shoal.kv next to the raw engine it wraps (sqlite3 / lmdb / dict), measured in the same run.

Each benchmark call runs a batch of operations (one event-loop entry per batch, so the loop's
own start-up is not charged to the store); the raw baseline runs the same batch as plain calls
with the same durability settings and the engine's defaults otherwise. `python bench/run.py
--only kv` prints the ratios; this module also prints a per-operation table (µs/op and
store/raw) at the end of the run.

The store tunes its engines: LMDB with MDB_WRITEMAP, SQLite with WAL checkpoints on a
background thread instead of inside commits. So the set group also has `raw, tuned` (a bare
write with the same tuning) and `raw+log, tuned` (the store's two writes, record and change
log, as raw calls with the same tuning): store / raw is the target's ratio, store / raw+log
the cost of the store's own code. A set batch is SET_OPS writes, so that SQLite's periodic
checkpoints (every 1000 WAL pages) fall inside every round, for the raw baselines too.

Groups: get, set (non-durable: inline), set durable (fsync: writer thread vs inline, the
measurement behind the threading choice), compare_and_set, a 10-op transaction, a 1000-key list.
"""

from __future__ import annotations

import functools
import sqlite3
import struct
import tempfile
from pathlib import Path

import lmdb
import pytest
import uvloop

from shoal.kv import LmdbStore, MemoryStore, SqliteStore, TransactionOp
from shoal.kv.sqlite_checkpoint import BACKSTOP, Checkpointer

N = 500  # ops per benchmark call
SET_OPS = 4000  # set: 8 passes over the N keys per call (see the module docstring)
N_DURABLE = 40
VALUE = b"v" * 100
KEYS = [f"/bench/{i:04d}" for i in range(1000)]
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def tmp():
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as d:
        yield Path(d)


def fill_raw_sqlite(path: Path, durable: bool, tuned: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    if tuned:  # the store's setting: checkpoints on a thread (see below), not in commits
        db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID"
    )
    db.execute("BEGIN")
    for k in KEYS + [f"/other/{i}" for i in range(1000)]:
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 1)", (k, VALUE))
    db.execute("COMMIT")
    return db


def raw_lmdb(path: Path, durable: bool, tuned: bool = False) -> lmdb.Environment:
    env = lmdb.open(
        str(path),
        subdir=False,
        map_size=1 << 30,
        sync=durable,
        metasync=durable,
        max_spare_txns=4,
        writemap=tuned,  # the store's setting
    )
    with env.begin(write=True) as txn:
        for k in KEYS + [f"/other/{i}" for i in range(1000)]:
            txn.put(k.encode(), struct.pack("<Q", 1) + VALUE)
    return env


async def fill_store(store) -> None:
    for start in range(0, 1000, 100):
        await store.transaction([TransactionOp.set(k, VALUE) for k in KEYS[start : start + 100]])
        await store.transaction([TransactionOp.set(f"/other/{i}", VALUE) for i in range(start, start + 100)])


def record(benchmark, group: str, who: str, baseline: bool, ops: int) -> None:
    benchmark.group = group
    benchmark.extra_info["baseline"] = baseline
    benchmark.extra_info["ops_per_call"] = ops
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        # min, as timeit does: on a shared 2-core machine the fastest round is the code's cost and
        # slower rounds measure whatever else ran; the median is kept in pytest-benchmark's table.
        RESULTS.setdefault(group, {})[who] = stats.min / ops


def run_store(benchmark, loop, group: str, who: str, batch, ops: int) -> None:
    benchmark.group = group  # before the run: pytest-benchmark files the result under it then
    benchmark(lambda: loop.run_until_complete(batch()))
    record(benchmark, group, who, False, ops)


def run_raw(benchmark, group: str, batch, ops: int) -> None:
    benchmark.group = group
    benchmark(batch)
    record(benchmark, group, "raw", True, ops)


# --------------------------------------------------------------------------------------------------
# stores and raw engines, opened once per module


@pytest.fixture(scope="module")
def stores(loop, tmp):
    out = {
        "memory": MemoryStore(),
        "sqlite": loop.run_until_complete(SqliteStore.open(tmp / "s.db", durable=False)),
        "lmdb": loop.run_until_complete(LmdbStore.open(tmp / "s.lmdb", durable=False, map_size=1 << 30)),
        "sqlite-durable": loop.run_until_complete(SqliteStore.open(tmp / "sd.db", durable=True)),
        "sqlite-durable-inline": loop.run_until_complete(
            SqliteStore.open(tmp / "sdi.db", durable=True, offload_writes=False)
        ),
        "lmdb-durable": loop.run_until_complete(
            LmdbStore.open(tmp / "sd.lmdb", durable=True, map_size=1 << 30)
        ),
        "lmdb-durable-inline": loop.run_until_complete(
            LmdbStore.open(tmp / "sdi.lmdb", durable=True, map_size=1 << 30, offload_writes=False)
        ),
    }
    for name in ("memory", "sqlite", "lmdb"):
        loop.run_until_complete(fill_store(out[name]))
    yield out
    for s in out.values():
        loop.run_until_complete(s.close())


@pytest.fixture(scope="module")
def raw(tmp):
    out = {
        "sqlite": fill_raw_sqlite(tmp / "r.db", False),
        "sqlite-durable": fill_raw_sqlite(tmp / "rd.db", True),
        "lmdb": raw_lmdb(tmp / "r.lmdb", False),
        "lmdb-durable": raw_lmdb(tmp / "rd.lmdb", True),
        "memory": {k: (1, VALUE) for k in KEYS + [f"/other/{i}" for i in range(1000)]},
        "sqlite-tuned": fill_raw_sqlite(tmp / "rt.db", False, tuned=True),
        "sqlite-tuned-log": fill_raw_sqlite(tmp / "rtl.db", False, tuned=True),
        "lmdb-tuned": raw_lmdb(tmp / "rt.lmdb", False, tuned=True),
        "lmdb-tuned-log": raw_lmdb(tmp / "rtl.lmdb", False, tuned=True),
    }
    checkpointers = {
        name: Checkpointer(lambda f=tmp / f"{f}.db": sqlite3.connect(f, check_same_thread=False))
        for name, f in (("sqlite-tuned", "rt"), ("sqlite-tuned-log", "rtl"))
    }
    out["checkpointers"] = checkpointers
    yield out
    for c in checkpointers.values():
        c.close()
    for name in ("sqlite", "sqlite-durable", "sqlite-tuned", "sqlite-tuned-log"):
        out[name].close()


BACKENDS = ["memory", "sqlite", "lmdb"]


def raw_ops(kind: str, raw: dict):
    """The raw engine's get / set / cas / txn10 / list, with the same work the store must do."""
    if kind == "sqlite":
        db = raw["sqlite"]

        def get(k):
            return db.execute("SELECT value, version FROM kv WHERE key = ?", (k,)).fetchone()

        def set_(k, v, db=db):
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 1)", (k, v))

        def cas(k, v):
            db.execute(
                "UPDATE kv SET value = ?, version = version + 1 WHERE key = ? AND version >= ?", (v, k, 0)
            )

        def txn10(keys):
            db.execute("BEGIN")
            for k in keys:
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 1)", (k, VALUE))
            db.execute("COMMIT")

        def list_(p):
            return [
                r[0]
                for r in db.execute(
                    "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                    (p, p[:-1] + chr(ord(p[-1]) + 1)),
                )
            ]

        return get, set_, cas, txn10, list_
    if kind == "lmdb":
        env = raw["lmdb"]

        def get(k):
            with env.begin() as txn:
                return txn.get(k.encode())

        def set_(k, v, env=env):
            with env.begin(write=True) as txn:
                txn.put(k.encode(), v)

        def cas(k, v):
            with env.begin(write=True) as txn:
                raw_k = k.encode()
                cur = txn.get(raw_k)
                version = struct.unpack_from("<Q", cur)[0]
                txn.put(raw_k, struct.pack("<Q", version + 1) + v)

        def txn10(keys):
            with env.begin(write=True) as txn:
                for k in keys:
                    txn.put(k.encode(), VALUE)

        def list_(p):
            pb = p.encode()
            out = []
            with env.begin() as txn:
                cur = txn.cursor()
                if cur.set_range(pb):
                    for k in cur.iternext(values=False):
                        if not k.startswith(pb):
                            break
                        out.append(k.decode())
            return out

        return get, set_, cas, txn10, list_
    d = raw["memory"]

    def get(k):
        return d.get(k)

    def set_(k, v, d=d):
        d[k] = (1, v)

    def cas(k, v):
        cur = d.get(k)
        d[k] = (cur[0] + 1, v)

    def txn10(keys):
        for k in keys:
            d[k] = (1, VALUE)

    def list_(p):
        return sorted(k for k in d if k.startswith(p))

    return get, set_, cas, txn10, list_


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["raw", "store"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_get(benchmark, loop, stores, raw, kind, who):
    group = f"kv get: {kind}"
    keys = KEYS[:N]
    if who == "raw":
        get = raw_ops(kind, raw)[0]
        run_raw(benchmark, group, lambda: [get(k) for k in keys], N)
        return
    store = stores[kind]

    async def batch():
        for k in keys:
            await store.get(k)

    run_store(benchmark, loop, group, who, batch, N)


def raw_logged_set(kind: str, raw: dict):
    """The engine work a store set must do, as raw calls: a versioned write plus a change-log record.

    The change log (event, version, key, value at a store-wide revision) is what lets watchers in
    other processes see a write and replay history from a revision; it is a second B-tree write
    in the same transaction. With the store's engine tuning (writemap, background checkpoints).
    """
    if kind == "sqlite":
        db = raw["sqlite-tuned-log"]
        checkpointer = raw["checkpointers"]["sqlite-tuned-log"]
        db.execute(
            "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, key TEXT, event INTEGER, version INTEGER, value BLOB)"
        )

        def set_logged(k, v):
            db.execute("BEGIN IMMEDIATE")
            seq = (db.execute("SELECT max(seq) FROM log").fetchone()[0] or 0) + 1
            version = db.execute(
                "INSERT INTO kv VALUES (?, ?, 1) ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "version = version + 1 RETURNING version",
                (k, v),
            ).fetchone()[0]
            db.execute("INSERT INTO log VALUES (?, ?, 2, ?, ?)", (seq, k, version, v))
            db.execute("COMMIT")
            checkpointer.dirty = True

        return set_logged
    if kind == "lmdb":
        env = raw["lmdb-tuned-log"]

        def set_logged(k, v):
            with env.begin(write=True) as txn:
                raw_k = k.encode()
                cur = txn.get(raw_k)
                version = struct.unpack_from("<Q", cur)[0] + 1 if cur else 1
                c = txn.cursor()
                seq = struct.unpack(">Q", c.key()[1:])[0] + 1 if c.last() and c.key()[:1] == b"\xfe" else 1
                txn.put(raw_k, struct.pack("<Q", version) + v)
                txn.put(
                    b"\xfe" + struct.pack(">Q", seq), struct.pack("<BQH", 2, version, len(raw_k)) + raw_k + v
                )

        return set_logged
    d = raw["memory"]
    log: list = []

    def set_logged(k, v):
        cur = d.get(k)
        version = cur[0] + 1 if cur else 1
        d[k] = (version, v)
        log.append((2, k, version, v))
        del log[:-1000]

    return set_logged


def raw_tuned_set(kind: str, raw: dict):
    """A bare write with the store's engine tuning (memory has none: the plain dict write)."""
    if kind == "sqlite":
        db, checkpointer = raw["sqlite-tuned"], raw["checkpointers"]["sqlite-tuned"]

        def set_(k, v):
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 1)", (k, v))
            checkpointer.dirty = True

        return set_
    if kind == "lmdb":
        return functools.partial(raw_ops(kind, raw)[1], env=raw["lmdb-tuned"])
    return raw_ops(kind, raw)[1]


@pytest.mark.parametrize("who", ["raw", "raw, tuned", "raw+log, tuned", "store"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_set(benchmark, loop, stores, raw, kind, who):
    group = f"kv set: {kind}"
    keys = KEYS[:N] * (SET_OPS // N)
    if who.startswith("raw"):
        set_ = {"raw": lambda: raw_ops(kind, raw)[1], "raw, tuned": lambda: raw_tuned_set(kind, raw)}.get(
            who, lambda: raw_logged_set(kind, raw)
        )()
        benchmark.group = group
        benchmark(lambda: [set_(k, VALUE) for k in keys])
        record(benchmark, group, who, who == "raw", SET_OPS)
        return
    store = stores[kind]

    async def batch():
        for k in keys:
            await store.set(k, VALUE)

    run_store(benchmark, loop, group, who, batch, SET_OPS)


@pytest.mark.parametrize("who", ["raw", "store (writer thread)", "store (inline)"])
@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_set_durable(benchmark, loop, stores, raw, kind, who):
    group = f"kv set durable (fsync): {kind}"
    keys = KEYS[:N_DURABLE]
    if who == "raw":
        if kind == "sqlite":
            db = raw["sqlite-durable"]
            run_raw(
                benchmark,
                group,
                lambda: [db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 1)", (k, VALUE)) for k in keys],
                N_DURABLE,
            )
        else:
            env = raw["lmdb-durable"]

            def batch_raw():
                for k in keys:
                    with env.begin(write=True) as txn:
                        txn.put(k.encode(), VALUE)

            run_raw(benchmark, group, batch_raw, N_DURABLE)
        return
    store = stores[f"{kind}-durable" + ("-inline" if "inline" in who else "")]

    async def batch():
        for k in keys:
            await store.set(k, VALUE)

    run_store(benchmark, loop, group, who, batch, N_DURABLE)


@pytest.mark.parametrize("who", ["raw", "store"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_compare_and_set(benchmark, loop, stores, raw, kind, who):
    group = f"kv compare_and_set: {kind}"
    keys = KEYS[:N]
    if who == "raw":
        cas = raw_ops(kind, raw)[2]
        run_raw(benchmark, group, lambda: [cas(k, VALUE) for k in keys], N)
        return
    store = stores[kind]
    versions = {}

    async def batch():
        if not versions:
            for k in keys:
                versions[k] = await store.version(k)
        for k in keys:
            versions[k] = await store.compare_and_set(k, versions[k], VALUE)

    run_store(benchmark, loop, group, who, batch, N)


@pytest.mark.parametrize("who", ["raw", "store"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_transaction_10(benchmark, loop, stores, raw, kind, who):
    group = f"kv 10-op transaction: {kind}"
    chunks = [KEYS[i : i + 10] for i in range(0, 500, 10)]
    if who == "raw":
        txn10 = raw_ops(kind, raw)[3]
        run_raw(benchmark, group, lambda: [txn10(c) for c in chunks], len(chunks))
        return
    store = stores[kind]
    ops = [[TransactionOp.set(k, VALUE) for k in c] for c in chunks]

    async def batch():
        for o in ops:
            await store.transaction(o)

    run_store(benchmark, loop, group, who, batch, len(chunks))


@pytest.mark.parametrize("who", ["raw", "store"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_list_1000(benchmark, loop, stores, raw, kind, who):
    group = f"kv list 1000 keys: {kind}"
    if who == "raw":
        list_ = raw_ops(kind, raw)[4]
        assert len(list_("/bench/")) == 1000
        run_raw(benchmark, group, lambda: list_("/bench/"), 1)
        return
    store = stores[kind]

    async def batch():
        return await store.list("/bench/")

    assert len(loop.run_until_complete(batch())) == 1000
    run_store(benchmark, loop, group, who, batch, 1)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "lmdb"])
def test_watch_delivery(benchmark, loop, stores, kind):
    """Local write -> event in the watcher's hands (the follower wakes on commit)."""
    group = "kv watch: set then receive the event"
    store = stores[kind]
    w = store.watch("/watched")

    async def batch():
        for _ in range(50):
            await store.set("/watched", b"x")
            await anext(w)

    benchmark.group = group
    benchmark(lambda: loop.run_until_complete(batch()))
    record(benchmark, group, kind, kind == "memory", 50)
    w.close()


def pytest_terminal_summary_table() -> str:
    lines = ["", "== shoal.kv per operation (fastest round, µs/op; (x): over the raw engine)"]
    for group in sorted(RESULTS):
        r = RESULTS[group]
        base = r.get("raw") or r.get("memory")
        parts = []
        for who, t in r.items():
            ratio = f" ({t / base:.2f}x)" if base and who not in ("raw",) else ""
            parts.append(f"{who} {t * 1e6:.2f}{ratio}")
        if "store" in r and "raw+log, tuned" in r:
            parts.append(f"store / raw+log {r['store'] / r['raw+log, tuned']:.2f}x")
        lines.append(f"  {group:<38} " + ", ".join(parts))
    return "\n".join(lines)


def test_zz_print_table(capsys):
    """Last in the module: print the per-op table (pytest -s, or bench/run.py, shows it)."""
    with capsys.disabled():
        print(pytest_terminal_summary_table())
