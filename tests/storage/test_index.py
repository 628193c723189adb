"""The compact chunk index: native and twin agree slot for slot; the store over it keeps its word."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.storage import ChunkStore
from shoal.storage.store import ChunkNotFound, unix_time

from .conftest import SMALL_SB, blob

NATIVE = _native.native("superblock")
PURE = _native.pure("superblock")
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# a few keys, so that collisions (several entries under one key) are common
ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "replace", "remove", "drop"]),
        st.integers(1, 6),  # key
        st.integers(1, 3),  # sb
        st.integers(0, 40),  # offset / 8
        st.integers(1, 128),  # id length
        st.integers(0, 1 << 21),  # data length
        st.integers(0, (1 << 48) - 1),  # seq
        st.sampled_from([1, 2]),
        st.integers(0, (1 << 40) - 1),  # stored time
    ),
    max_size=300,
)


def run(mod, program) -> tuple:
    t = mod.ChunkIndex()
    model: dict[tuple[int, int, int], tuple] = {}
    for op, key, sb_id, off8, id_len, length, seq, flags, when in program:
        off = off8 * 8
        if op == "insert" and (key, sb_id, off) not in model:
            t.insert(key, sb_id, off, id_len, length, seq, flags, when)
            model[(key, sb_id, off)] = (sb_id, off, id_len, length, seq, flags, when)
        elif op == "replace" and model:
            old = sorted(model)[key % len(model)]
            new = (old[0], sb_id, off)
            if new != old and new in model:
                continue
            assert t.replace(old[0], old[1], old[2], sb_id, off, id_len, length, seq, flags, when)
            del model[old]
            model[new] = (sb_id, off, id_len, length, seq, flags, when)
        elif op == "remove":
            assert t.remove(key, sb_id, off) == ((key, sb_id, off) in model)
            model.pop((key, sb_id, off), None)
        elif op == "drop":
            gone = [k for k in model if k[1] == sb_id]
            assert t.drop_superblock(sb_id) == len(gone)
            for k in gone:
                del model[k]
    for key in range(1, 7):
        assert sorted(t.get(key)) == sorted(v for k, v in model.items() if k[0] == key)
    assert len(t) == len(model)
    assert t.live_count == sum(1 for v in model.values() if v[5] == 1)
    return t.dump(), t.capacity, sorted(t.select()), t.usage(), t.crc32c()


@pytest.mark.skipif(NATIVE is None, reason="native superblock module not built")
@SETTINGS
@given(ops)
def test_native_and_twin_tables_agree_slot_for_slot(program):
    assert run(NATIVE, program) == run(PURE, program)


@pytest.mark.parametrize("mod", [m for m in (NATIVE, PURE) if m is not None], ids=lambda m: m.__name__)
def test_bytes_per_chunk_stay_under_40(mod):
    t = mod.ChunkIndex()
    n = 200_000 if mod is NATIVE else 20_000
    for i in range(n):
        t.insert(mod.chunk_key(b"c%d" % i), 1 + i // 50_000, (i % 50_000) * 8, 20, 64, i, 1)
        if i >= 5000 and i % 997 == 0:
            assert t.nbytes / len(t) <= 40
    assert t.nbytes / len(t) <= 40
    again = mod.ChunkIndex.load(t.dump())
    assert again.dump() == t.dump() and len(again) == n and again.live_count == n
    assert again.get(mod.chunk_key(b"c77")) == [(1, 77 * 8, 20, 64, 77, 1, 0)]


@pytest.mark.skipif(NATIVE is None, reason="native superblock module not built")
@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=128), max_size=20))
def test_chunk_keys_agree(ids):
    for cid in ids:
        assert NATIVE.chunk_key(cid) == PURE.chunk_key(cid) != 0


def test_colliding_ids_are_told_apart_by_the_record_header(make_store, monkeypatch):
    """Every id under one key: reads, writes and deletes still find the right record."""
    monkeypatch.setattr(ChunkStore, "key", staticmethod(lambda chunk_id: 42))
    s = make_store()
    for i in range(12):
        s.put(f"same-len-{i:02d}", blob(i, 3000))
    s.delete("same-len-05")
    s.put("same-len-07", blob(7, 3000))  # same bytes again: found, not duplicated
    assert len(s.table.get(42)) == 12 and s.chunk_count == 11
    for i in range(12):
        if i == 5:
            with pytest.raises(ChunkNotFound):
                s.read("same-len-05")
            continue
        data, _ = s.read(f"same-len-{i:02d}")
        assert data == blob(i, 3000)
    assert sorted(s.live) == sorted(f"same-len-{i:02d}" for i in range(12) if i != 5)
    assert list(s.tombs) == ["same-len-05"]


def test_replay_tells_colliding_ids_apart(monkeypatch, tmp_path):
    """The twin's replay with every id under one key: the resolver reads ids from the headers."""
    monkeypatch.setattr(PURE, "chunk_key", lambda chunk_id: 7)
    ids = {(1, 64): "alpha", (1, 160): "bravo"}
    state = PURE.TableState(resolve=lambda sb_id, off, n: ids.get((sb_id, off)))
    PURE.apply_table_entry(state, PURE.KIND_PUT, "alpha", 1, 64, 10, 1)
    PURE.apply_table_entry(state, PURE.KIND_PUT, "bravo", 1, 160, 10, 2)
    PURE.apply_table_entry(state, PURE.KIND_DEL, "alpha", 1, 256, 0, 3)
    ids[(1, 256)] = "alpha"
    got = sorted(state.table.get(7))
    assert got == [(1, 160, 5, 10, 2, 1, 0), (1, 256, 5, 0, 3, 2, 0)]


def test_snapshot_is_loaded_not_replayed_and_keeps_stored_times(make_store, tmp_path):
    s = make_store()
    for i in range(30):
        s.put(f"k{i}", blob(i, 20_000))
    s.delete("k3")
    s._snapshot_index()
    s.put("after", blob(99, 1000))  # one entry in the log past the snapshot
    live, tombs = dict(s.live), dict(s.tombs)
    times = s.stored_times([f"k{i}" for i in range(30)])
    s.close()
    s = make_store()
    r = s.recovery
    assert r.snapshot_bytes > 0 and not r.index_rebuilt and r.scanned_records == 0
    assert s.live == live and s.tombs == tombs
    assert s.stored_times(list(times)) == times  # from the snapshot, exact
    assert s.read("after")[0] == blob(99, 1000)


def test_a_v1_log_is_migrated_and_a_damaged_snapshot_rebuilds(make_store, tmp_path):
    from shoal.storage.files import sb

    s = make_store()
    for i in range(10):
        s.put(f"m{i}", blob(i, 50_000))
    live = dict(s.live)
    s.close()
    path = tmp_path / "node" / "index.log"
    assert path.read_bytes()[:8] == sb.INDEX_MAGIC_V2
    v1 = [sb.pack_index_entry(sb.KIND_PUT, k.encode(), e[0], e[1], *e[3:]) for k, e in live.items()]
    path.write_bytes(sb.INDEX_MAGIC + b"".join(v1))  # an index written before the table existed
    s = make_store()
    assert s.live == live and s.recovery.snapshot_bytes == 0
    s.close()
    assert path.read_bytes()[:8] == sb.INDEX_MAGIC_V2  # migrated at open
    data = bytearray(path.read_bytes())
    data[200] ^= 0x55  # inside the slots
    path.write_bytes(bytes(data))
    s = make_store()
    assert s.recovery.index_truncated_at == 8 and s.recovery.scanned_records == 10
    assert s.live == live


def test_stored_time_is_never_earlier_than_the_put(make_store):
    import time

    s = make_store(superblock_size=SMALL_SB)
    t0 = time.time()
    s.put("t", os.urandom(100))
    t1 = time.time()
    got = s.stored_times(["t"])["t"]
    assert t0 <= got <= t1 + 1 / 1024
    assert unix_time(s.table.get(s.key("t"))[0][6]) == got
