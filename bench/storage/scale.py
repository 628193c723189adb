"""Storage node at scale: index memory per chunk, open time, full recovery scan, cold GET p99.

Synthetic stores of tiny records (no video), written straight into superblock files with the
module's own pack_record, then opened through ChunkStore:

1. open with no index file: the full recovery scan (every record framed, its data checksum
   verified, applied to the table); the store then writes its table snapshot;
2. a tail of --tail chunks PUT through the store's ordinary write path (group commit, index
   log entries after the snapshot), close;
3. open again in a fresh process: snapshot read into the table in one read + the log tail
   replayed + the superblock tails scanned; index bytes per chunk (table bytes, tracemalloc,
   RSS delta of the open);
4. drop the page cache (/proc/sys/vm/drop_caches as root, else posix_fadvise DONTNEED on
   every superblock), then GET (store.read: header pread + data pread + checksum) random chunks.

    python bench/storage/scale.py --chunks 1000000
    python bench/storage/scale.py --chunks 1000000 10000000 --dir /tmp/shoal-scale

Each step runs in its own process, so RSS and tracemalloc figures are the open's own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA_LEN = 64
SB_SIZE = 1 << 30


def chunk_name(i: int) -> str:
    # the shape of real ids: <uuid>-chunk-NNN (46 characters)
    return f"{i:08x}-e29b-41d4-a716-{i * 2654435761 % (1 << 48):012x}-chunk-{i % 1000:03d}"


def generate(root: Path, n: int) -> dict:
    """n live records of DATA_LEN bytes in 1 GiB superblocks, written directly (no index)."""
    from shoal.storage import checksum
    from shoal.storage.files import SuperblockFile, sb

    sb_dir = root / "superblocks"
    sb_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    sb_id, f = 1, SuperblockFile.create(sb_dir, 1, durable=False)
    parts: list[bytes] = []
    pending = 0
    end = f.end
    for i in range(n):
        cid = chunk_name(i).encode()
        data = i.to_bytes(8, "little") * (DATA_LEN // 8)
        prefix, suffix = sb.pack_record(
            cid,
            sb.FLAG_LIVE,
            sb.ALGO_CRC32C,
            i + 1,
            bytes(32),
            checksum.compute(sb.ALGO_CRC32C, data),
            DATA_LEN,
        )
        size = len(prefix) + DATA_LEN + len(suffix)
        if end + pending + size > SB_SIZE:
            os.pwrite(f.fd, b"".join(parts), end)
            os.close(f.fd)
            parts, pending = [], 0
            sb_id += 1
            f = SuperblockFile.create(sb_dir, sb_id, durable=False)
            end = f.end
        parts += (prefix, data, suffix)
        pending += size
        if pending > 8 << 20:
            os.pwrite(f.fd, b"".join(parts), end)
            end += pending
            parts, pending = [], 0
    os.pwrite(f.fd, b"".join(parts), end)
    os.fsync(f.fd)
    os.close(f.fd)
    return {"generate_s": time.perf_counter() - t0, "superblocks": sb_id}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def drop_cache(root: Path) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        for p in [root / "index.log", *(root / "superblocks").iterdir()]:
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return "fadvise"


def step_open(root: Path, n: int, gets: int, tail: int, cache: str) -> dict:
    """One open (in this fresh process), its figures, then (optionally) a tail of PUTs or GETs.

    cache: warm, cold (page cache dropped first) or trace (warm, under tracemalloc: its figure
    is the Python-visible memory of the open; tracemalloc slows the open, so it is not timed).
    """
    import tracemalloc

    from shoal._native import implementation
    from shoal.storage import ChunkStore

    out: dict = {"impl": implementation("superblock")}
    if cache == "cold":
        out["cache"] = drop_cache(root)
    base = rss()
    if cache == "trace":
        tracemalloc.start()
    t0 = time.perf_counter()
    store = ChunkStore(root, superblock_size=SB_SIZE, durable=True)
    out["open_s"] = time.perf_counter() - t0
    cur, peak = tracemalloc.get_traced_memory() if cache == "trace" else (0, 0)
    tracemalloc.stop()
    r = store.recovery
    count = len(store.table)
    out.update(
        chunks=store.chunk_count,
        entries=count,
        load_s=r.load_seconds,
        scan_s=r.scan_seconds,
        scanned=r.scanned_records,
        snapshot_bytes=r.snapshot_bytes,
        table_bytes_per_chunk=store.table.nbytes / max(1, count),
        traced_bytes_per_chunk=cur / max(1, count),
        traced_peak_per_chunk=peak / max(1, count),
        rss_bytes_per_chunk=(rss() - base) / max(1, count),
    )
    if tail:
        futures = [store.submit_put(f"tail-{i:07d}", os.urandom(DATA_LEN)) for i in range(tail)]
        for fut in futures:
            fut.result()
    if gets:
        out["cache_gets"] = drop_cache(root)
        rng = random.Random(7)
        lat = []
        for _ in range(gets):
            cid = chunk_name(rng.randrange(n))
            t = time.perf_counter()
            data, _ = store.read(cid)
            lat.append(time.perf_counter() - t)
            assert len(data) == DATA_LEN
        lat.sort()
        out["get_p50_ms"] = lat[len(lat) // 2] * 1000
        out["get_p99_ms"] = lat[int(len(lat) * 0.99)] * 1000
        out["get_max_ms"] = lat[-1] * 1000
    store.close()
    return out


def run_step(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--step", *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(base: Path, n: int, gets: int, tail: int) -> dict:
    root = base / f"store-{n}"
    if root.exists():
        shutil.rmtree(root)
    row: dict = {"n": n}
    row.update(generate(root, n))
    row["full_scan"] = run_step(str(root), str(n), "0", "0", "warm")  # no index: full recovery scan
    row["tail_puts"] = run_step(str(root), str(n), "0", str(tail), "warm")  # snapshot load, then PUTs
    row["reopen_warm"] = run_step(str(root), str(n), "0", "0", "warm")
    row["memory"] = run_step(str(root), str(n), "0", "0", "trace")
    row["reopen_cold"] = run_step(str(root), str(n), str(gets), "0", "cold")
    row["disk_bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    shutil.rmtree(root)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| chunks | index B/chunk (table / traced / RSS) | open, snapshot + tail (warm / cold) | "
        "of which load / scan (cold) | full scan, no index (warm) | GET p50 / p99 cold |",
        "|---:|---|---|---|---|---|",
    ]
    for r in rows:
        w, c, f, m = r["reopen_warm"], r["reopen_cold"], r["full_scan"], r["memory"]
        lines.append(
            f"| {r['n']:,} | {c['table_bytes_per_chunk']:.1f} / {m['traced_bytes_per_chunk']:.1f} / "
            f"{c['rss_bytes_per_chunk']:.1f} | {w['open_s']:.2f} s / {c['open_s']:.2f} s | "
            f"{c['load_s']:.2f} s / {c['scan_s']:.2f} s | {f['open_s']:.1f} s ({f['scanned']:,} records) | "
            f"{c['get_p50_ms']:.2f} / {c['get_p99_ms']:.2f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--chunks", type=int, nargs="+", default=[1_000_000], help="store sizes (10000000: ~2.2 GB)"
    )
    ap.add_argument("--dir", default="/tmp/shoal-scale")
    ap.add_argument("--gets", type=int, default=2000)
    ap.add_argument("--tail", type=int, default=20000, help="chunks PUT after the snapshot")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--step", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        root, n, gets, tail, cache = args.step
        print(json.dumps(step_open(Path(root), int(n), int(gets), int(tail), cache)))
        return
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.chunks:
        rows.append(measure(base, n, args.gets, args.tail))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
