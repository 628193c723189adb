"""ChunkStore: the superblock engine on a real directory (durability, recovery, corruption)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from shoal.storage import ChunkConflict, ChunkCorrupt, ChunkNotFound
from shoal.storage.files import SuperblockFile, sb
from shoal.storage.store import E_DATA_OFF, E_SB

from .conftest import blob, flip_byte


def test_put_read_and_idempotent_put(store):
    data = blob(1)
    first = store.put("c1", data)
    assert first.created
    again = store.put("c1", data)
    assert not again.created and again.entry == first.entry
    got, entry = store.read("c1")
    assert got == data
    assert entry[5] == hashlib.sha256(data).digest()
    with pytest.raises(ChunkConflict):
        store.put("c1", blob(2))
    with pytest.raises(ChunkNotFound):
        store.read("nope")


def test_records_are_framed_on_disk(store):
    store.put("framed", b"hello")
    f = store.files[1]
    raw = os.pread(f.fd, 200, sb.FILE_HEADER_SIZE)
    assert raw.startswith(sb.MAGIC)
    parsed = sb.parse_header(raw)
    assert parsed[6] == "framed" and parsed[3] == 5
    assert f.end == sb.FILE_HEADER_SIZE + sb.record_size(6, 5)
    assert f.end % 8 == 0


def test_bad_ids_and_empty_chunks_are_refused(store):
    for bad in ("", "a/b", "a.b", "x" * 129, "é"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    with pytest.raises(ValueError):
        store.put("ok", b"")


def test_delete_writes_a_durable_tombstone(make_store, tmp_path):
    s = make_store()
    s.put("gone", blob(1))
    s.put("kept", blob(2))
    s.delete("gone")
    with pytest.raises(ChunkNotFound):
        s.read("gone")
    with pytest.raises(ChunkNotFound):
        s.delete("gone")
    s.close()
    for remove_index in (False, True):
        if remove_index:
            (tmp_path / "node" / "index.log").unlink()
        s = make_store()
        with pytest.raises(ChunkNotFound):
            s.read("gone")
        assert s.read("kept")[0] == blob(2)
        assert "gone" in s.tombs
        s.close()


def test_persistence_across_restart_and_rotation(make_store):
    s = make_store()
    chunks = {f"r{i}": blob(i, 300 * 1024) for i in range(12)}
    for k, v in chunks.items():
        s.put(k, v)
    assert len(s.files) >= 4, "1 MiB superblocks must rotate under 3.6 MiB of chunks"
    assert all(f.end <= s.superblock_size for f in s.files.values())
    assert len({s.stat(k)[E_SB] for k in chunks}) == len(s.files)
    s.close()
    s = make_store()
    assert not s.recovery.changed
    for k, v in chunks.items():
        assert s.read(k)[0] == v


def test_lost_index_is_rebuilt_identically(make_store, tmp_path):
    s = make_store()
    for i in range(20):
        s.put(f"k{i}", blob(i, 100 * 1024))
    for i in range(0, 20, 3):
        s.delete(f"k{i}")
    s.put("k3", blob(3, 100 * 1024))  # re-put after delete
    live, tombs, seq = dict(s.live), dict(s.tombs), s.seq
    s.close()
    (tmp_path / "node" / "index.log").unlink()
    s = make_store()
    assert s.recovery.index_rebuilt
    assert s.live == live
    assert s.tombs == tombs
    assert s.seq == seq
    s.close()
    # a damaged index log: replay stops at the bad entry, the scan recovers the rest
    path = tmp_path / "node" / "index.log"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    s = make_store()
    assert s.recovery.index_truncated_at is not None
    assert s.live == live and s.tombs == tombs


def test_a_flipped_byte_is_never_served(make_store, tmp_path):
    s = make_store()
    for i in range(5):
        s.put(f"f{i}", blob(i))
    victim = s.stat("f2")
    s.close()
    flip_byte(
        tmp_path / "node" / "superblocks" / SuperblockFile.name(victim[E_SB]), victim[E_DATA_OFF] + 1000
    )
    s = make_store()
    with pytest.raises(ChunkCorrupt):
        s.read("f2")
    assert "f2" in s.corrupt
    for i in (0, 1, 3, 4):
        assert s.read(f"f{i}")[0] == blob(i)
    # the same bytes PUT again repair the chunk
    assert s.put("f2", blob(2)).created
    assert s.read("f2")[0] == blob(2)
    assert "f2" not in s.corrupt


def test_corruption_found_by_a_full_rebuild_stays_visible(make_store, tmp_path):
    s = make_store()
    for i in range(3):
        s.put(f"g{i}", blob(i))
    victim = s.stat("g1")
    s.close()
    flip_byte(tmp_path / "node" / "superblocks" / SuperblockFile.name(victim[E_SB]), victim[E_DATA_OFF] + 5)
    (tmp_path / "node" / "index.log").unlink()
    s = make_store()
    assert s.recovery.corrupt == ["g1"]
    assert s.stat("g1") is not None, "a mid-file corrupt record is kept (500), not dropped (404)"
    with pytest.raises(ChunkCorrupt):
        s.read("g1")
    assert s.read("g2")[0] == blob(2)


def test_torn_tail_is_truncated(make_store, tmp_path):
    s = make_store()
    s.put("a", blob(1))
    s.put("b", blob(2))
    f = s.active
    good_end = f.end
    s.close()
    path = f.path
    # a write that never completed: a header and part of the data, no footer
    prefix, _ = sb.pack_record(b"torn", 1, 1, 99, bytes(32), bytes(32), 50000)
    with open(path, "ab") as out:
        out.write(prefix + b"\x00" * 1000)
    s = make_store()
    assert s.recovery.truncated == [(f.id, good_end, good_end + len(prefix) + 1000)]
    assert os.path.getsize(path) == good_end
    assert s.stat("torn") is None
    assert s.read("b")[0] == blob(2)
    s.put("c", blob(3))  # appends where the torn write was
    assert s.stat("c")[1] == good_end


def test_a_complete_but_unindexed_record_is_recovered(make_store, tmp_path):
    """A crash after the data fsync, before the index write: the scan finds the record."""
    s = make_store()
    s.put("indexed", blob(1))
    index_size = (tmp_path / "node" / "index.log").stat().st_size
    s.put("late", blob(2))
    s.close()
    with open(tmp_path / "node" / "index.log", "r+b") as f:
        f.truncate(index_size)
    s = make_store()
    assert s.recovery.scanned_records == 1
    assert s.read("late")[0] == blob(2)


def test_concurrent_puts_share_fsyncs_and_reads_stay_consistent(store):
    n = 64
    errors: list[Exception] = []
    futures = [store.submit_put(f"p{i}", blob(i, 16 * 1024)) for i in range(n)]

    def reader() -> None:
        for _ in range(200):
            for i in range(n):
                try:
                    assert store.read(f"p{i}")[0] == blob(i, 16 * 1024)
                except ChunkNotFound:
                    pass  # not committed yet
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    assert all(f.result().created for f in futures)
    for t in threads:
        t.join()
    assert not errors
    assert store.commits < n, f"{n} queued PUTs took {store.commits} fsync rounds: no group commit"


def test_conflicting_puts_in_one_batch(store):
    a = store.submit_put("same", blob(1))
    b = store.submit_put("same", blob(2))
    c = store.submit_put("same", blob(1))
    assert a.result().created
    with pytest.raises(ChunkConflict):
        b.result()
    assert not c.result().created
    assert store.read("same")[0] == blob(1)
