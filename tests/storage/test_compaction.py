"""Compaction: space comes back, every live chunk stays readable, deletes stay deleted."""

from __future__ import annotations

import random
import threading

from shoal.storage import ChunkNotFound
from shoal.storage.compaction import Compactor, candidates, compact

from .conftest import blob


def test_compaction_reclaims_garbage_and_keeps_live_chunks(make_store, tmp_path):
    s = make_store()
    for i in range(30):
        s.put(f"c{i}", blob(i, 200 * 1024))
    for i in range(30):
        if i % 3:
            s.delete(f"c{i}")
    before = s.stored_bytes()
    victims = candidates(s, 0.5)
    assert victims
    for sb_id in victims:
        compact(s, sb_id)
        assert sb_id not in s.files
        assert not (tmp_path / "node" / "superblocks" / f"sb-{sb_id:06d}.dat").exists()
    assert s.stored_bytes() < before * 0.6
    for i in range(30):
        if i % 3:
            assert s.stat(f"c{i}") is None
        else:
            assert s.read(f"c{i}")[0] == blob(i, 200 * 1024)
    live, tombs = dict(s.live), dict(s.tombs)
    s.close()
    s = make_store()
    assert (s.live, s.tombs) == (live, tombs)
    s.close()
    (tmp_path / "node" / "index.log").unlink()
    s = make_store()
    assert (s.live, s.tombs) == (live, tombs), "a rebuild after compaction resurrected or lost chunks"


def test_moved_then_deleted_chunk_is_not_resurrected(make_store, tmp_path):
    """A tombstone is carried forward while an older copy of its chunk survives elsewhere."""
    s = make_store()
    big = 400 * 1024
    s.put("x", blob(1, big))
    s.put("a", blob(2, big))
    s.put("z", blob(3, big))  # superblock 1 (x, a) is sealed; z opens 2
    s.delete("a")
    compact(s, 1)  # x moves into superblock 2 with its seq
    x_home = s.stat("x")[0]
    s.put("w", blob(4, big))  # opens superblock 3
    s.delete("x")  # x's tombstone lands in 3; its dead copy stays in 2
    s.delete("w")
    s.put("f1", blob(5, big))
    s.put("f2", blob(6, big))  # seals 3
    tomb_home = s.tombs["x"][0]
    assert tomb_home != x_home and tomb_home != s.active.id
    compact(s, tomb_home)  # superblock 2, holding the dead x, is left alone
    assert x_home in s.files
    s.close()
    (tmp_path / "node" / "index.log").unlink()
    s = make_store()
    assert s.stat("x") is None, "x came back from its dead copy"
    assert s.stat("a") is None and s.stat("w") is None
    assert s.read("z")[0] == blob(3, big)
    assert s.read("f2")[0] == blob(6, big)


def test_compaction_under_load_keeps_every_live_chunk_readable(make_store):
    s = make_store()
    size = 128 * 1024
    for i in range(40):
        s.put(f"base{i}", blob(i, size))
    for i in range(0, 40, 2):
        s.delete(f"base{i}")
    stop = threading.Event()
    errors: list[str] = []
    written: list[int] = []

    def reader() -> None:
        rnd = random.Random(1)
        while not stop.is_set():
            i = rnd.randrange(1, 40, 2)
            try:
                if s.read(f"base{i}")[0] != blob(i, size):
                    errors.append(f"base{i} changed")
            except Exception as exc:
                errors.append(f"base{i}: {exc!r}")

    def writer() -> None:
        i = 100
        while not stop.is_set() and i < 160:
            s.put(f"new{i}", blob(i, size))
            written.append(i)
            if i % 4 == 0:
                s.delete(f"new{i}")
            i += 1

    threads = [
        threading.Thread(target=reader),
        threading.Thread(target=reader),
        threading.Thread(target=writer),
    ]
    for t in threads:
        t.start()
    compactor = Compactor(s, threshold=0.3)
    done = []
    for _ in range(3):
        done += compactor.run_once()
    stop.set()
    for t in threads:
        t.join()
    assert done, "nothing was compacted"
    assert not errors, errors[:5]
    for i in range(1, 40, 2):
        assert s.read(f"base{i}")[0] == blob(i, size)
    for i in written:
        if i % 4 == 0:
            assert s.stat(f"new{i}") is None
        else:
            assert s.read(f"new{i}")[0] == blob(i, size)
    try:
        s.read("base0")
        raise AssertionError("a deleted chunk came back")
    except ChunkNotFound:
        pass
