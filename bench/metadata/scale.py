"""The metadata service at scale: manifest time, start-up, /stats and memory as chunks grow.

    python bench/metadata/scale.py [--gate] [--steps 10000,100000,1000000] [--per-video 10]

Synthetic records written straight into the store (shoal.kv LMDB, the keys save_chunk writes:
/video, /vorder, /vstatus, /vtotals, /vchunk, /chunk, /placed x3; no video, no storage node),
`--per-video` chunks per video (10: 1M chunks across 100k videos), plus one 1000-chunk video.
At each step the store is filled up to that many chunks, `shoal serve metadata` started on it,
and measured: start-up until /health answers, GET /manifest of the 1000-chunk video (median
and p99 of 40, client on the same machine), GET /stats, the service's RSS (every process of
its group) and the store file's size. --gate: exit 1 if the manifest median at the last step is
above 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

from shoal.kv import Limits, LmdbStore, TransactionOp
from shoal.metadata.records import ChunkRecord, Totals, Video
from shoal.metadata.store import _placed_key, _status_key, iso
from shoal.paxos import Ballot, Placement
from shoal.testing.metadata import metadata_service

NODES = [f"http://127.0.0.1:{9000 + i}" for i in range(8)]
CKS = "sha256:" + hashlib.sha256(b"x").hexdigest()
enc = msgspec.json.Encoder()


def video_ops(vid: str, n: int, k: int) -> list[TransactionOp]:
    ns = 1_700_000_000_000_000_000 + k
    v = Video(vid, f"video {k}", 60.0, "active", iso(time.time()), ns, total_chunks=n, status_at=time.time())
    return [
        TransactionOp.set(f"/video/{vid}", enc.encode(v)),
        TransactionOp.set(f"/vorder/{ns:020d}/{vid}", b""),
        TransactionOp.set(_status_key(v), b""),
        TransactionOp.set(f"/vtotals/{vid}", b"%d" % n),
    ]


def chunk_ops(vid: str, seq: int, k: int) -> list[TransactionOp]:
    cid = f"{vid}-c{seq:05d}"
    nodes = [NODES[(k + j) % len(NODES)] for j in range(3)]
    r = ChunkRecord(
        cid,
        vid,
        seq,
        0,
        Placement("replication", CKS, 2_000_000, replicas=nodes),
        Ballot(0, "bench.1"),
        time.time(),
        6,
        1,
        seq * 2.0,
        2.0,
        1,
    )
    vkey = f"/vchunk/{vid}/{seq:08d}"
    return [
        TransactionOp.set(vkey, enc.encode(r)),
        TransactionOp.set(f"/chunk/{cid}", vkey.encode()),
        *(TransactionOp.set(_placed_key(u, cid), b"") for u in nodes),
    ]


async def fill(path: Path, start: int, stop: int, per_video: int) -> None:
    """Videos start/per_video .. stop/per_video (video 0 is the 1000-chunk one, made once)."""
    kv = await LmdbStore.open(path, durable=False, limits=Limits(max_txn_ops=4096, history=1000))
    try:
        ops: list[TransactionOp] = []

        async def flush() -> None:
            if ops:
                await kv.transaction(ops)
                ops.clear()

        if start == 0:
            ops += video_ops("long", 1000, 0)
            for seq in range(1000):
                ops += chunk_ops("long", seq, seq)
                if len(ops) > 3500:
                    await flush()
        for v in range(start // per_video, stop // per_video):
            vid = f"v{v:07d}"
            ops += video_ops(vid, per_video, v + 1)
            for seq in range(per_video):
                ops += chunk_ops(vid, seq, v * per_video + seq)
            if len(ops) > 3500:
                await flush()
        await flush()
        total = stop + 1000
        t = Totals(replication_chunks=total, logical_replication=total * 2_000_000, members=3 * total)
        t.physical_replication = 3 * t.logical_replication
        t.commits = total
        await kv.set("/totals", enc.encode(t))
        await kv.set("/config/vstatus-index", b"1")  # as a current version's store has it
    finally:
        await kv.close()


def group_rss(pgid: int, field: str = "VmRSS:") -> int:
    """Resident bytes of a process group (VmRSS, or RssAnon: heap only, no mapped file pages)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in Path(f"/proc/{d}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def timed(client: httpx.Client, url: str, rounds: int) -> tuple[float, float]:
    lat = []
    for _ in range(rounds):
        t = time.perf_counter()
        r = client.get(url)
        lat.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    lat.sort()
    return statistics.median(lat) * 1000, lat[max(0, int(len(lat) * 0.99) - 1)] * 1000


def measure(data_dir: Path, chunks: int) -> dict:
    svc = metadata_service(data_dir, "--maintenance-interval", "0")
    t0 = time.perf_counter()
    svc.start(timeout=600)
    startup = time.perf_counter() - t0
    try:
        with httpx.Client(timeout=120) as c:
            r = c.get(f"{svc.url}/manifest/long")
            assert r.status_code == 200 and len(r.json()["chunks"]) == 1000, r.text[:300]
            size = len(r.content)
            med, p99 = timed(c, f"{svc.url}/manifest/long", 40)
            small = timed(c, f"{svc.url}/manifest/v0000001", 40)[0]
            stats = timed(c, f"{svc.url}/stats", 5)[0]
            listing = timed(c, f"{svc.url}/videos?limit=20&offset=0", 10)[0]
        rss = group_rss(svc.proc.pid)
        anon = group_rss(svc.proc.pid, "RssAnon:")
    finally:
        svc.stop()
    return {
        "chunks": chunks,
        "startup_s": startup,
        "manifest_ms": med,
        "manifest_p99_ms": p99,
        "manifest_kib": size / 1024,
        "small_manifest_ms": small,
        "stats_ms": stats,
        "videos_ms": listing,
        "rss_mib": rss / 2**20,
        "anon_mib": anon / 2**20,
        "file_mib": (data_dir / "metadata.lmdb").stat().st_blocks * 512 / 2**20,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--steps", default="10000,100000,1000000")
    ap.add_argument("--per-video", type=int, default=10)
    a = ap.parse_args()
    steps = [int(s) for s in a.steps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-meta-scale-") as tmp:
        data_dir = Path(tmp) / "meta"
        data_dir.mkdir()
        done = 0
        for step in steps:
            t = time.perf_counter()
            asyncio.run(fill(data_dir / "metadata.lmdb", done, step, a.per_video))
            fill_s = time.perf_counter() - t
            done = step
            row = measure(data_dir, step + 1000)
            row["fill_s"] = fill_s
            rows.append(row)
            print(row, flush=True)
    print(f"\nmetadata at scale ({a.per_video} chunks per video, plus one of 1000; LMDB store)")
    head = (
        f"{'chunks':>10} {'videos':>8} {'start-up':>9} {'manifest 1000':>14} {'p99':>8} {'manifest 10':>12} "
        f"{'/stats':>9} {'/videos':>9} {'RSS':>9} {'heap':>8} {'store file':>11}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['chunks']:>10,} {(r['chunks'] - 1000) // a.per_video + 1:>8,} {r['startup_s']:>8.1f}s "
            f"{r['manifest_ms']:>12.2f}ms {r['manifest_p99_ms']:>6.1f}ms {r['small_manifest_ms']:>10.2f}ms "
            f"{r['stats_ms']:>7.1f}ms {r['videos_ms']:>7.1f}ms {r['rss_mib']:>7.0f}MiB {r['anon_mib']:>6.0f}MiB {r['file_mib']:>9.0f}MiB"
        )
    print(f"(manifest of the 1000-chunk video: {rows[-1]['manifest_kib']:.0f} KiB of JSON;")
    print(" RSS counts the store's mapped pages the service touched, heap is RssAnon)")
    if a.gate and rows[-1]["manifest_ms"] > 10:
        print("GATE FAILED: manifest of a 1000-chunk video above 10 ms")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
