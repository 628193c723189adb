"""Upload throughput end to end, next to the raw cost of storing the same bytes.

    python bench/uploader/load.py [--mb 100] [--rounds 2] [--concurrency 4] [--gate]

One run on 127.0.0.1: a metadata service, 3 storage nodes and the uploader (`shoal serve`).
A ~100 MB 720p video (x264 CBR, made by FFmpeg) is
  - uploaded: POST /upload until the status says completed (receive to disk, ffprobe, remux to
    fMP4, 2 MiB chunks, 3 replicas each, one ChunkPaxos commit per chunk), with the time of
    each phase from the status;
  - and, as the baseline, its remuxed chunks are PUT straight to the same 3 nodes with the
    same parallelism (no probe, no remux, no commit).
The ratio says what the whole pipeline costs over bare replicated PUTs. There is no gated
target (--gate is accepted for bench/run.py and changes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from shoal.testing.metadata import Cluster
from shoal.testing.uploader import make_video, uploader_service
from shoal.uploader import media
from shoal.uploader.chunker import plan_chunks
from shoal.uploader.fmp4 import read_layout


def make_input(folder: Path, mb: int) -> Path:
    seconds = max(4, mb * 8 // 30)  # 30 Mbit/s
    return make_video(folder / f"bench-{mb}mb.mp4", size="1280x720", seconds=seconds, bitrate="30M")


async def raw_puts(nodes: list[str], fmp4: Path, concurrency: int) -> float:
    """Seconds to PUT every 2 MiB chunk of `fmp4` to all nodes, `concurrency` chunks at a time."""
    with open(fmp4, "rb") as f:
        plans = plan_chunks(read_layout(f, fmp4.stat().st_size))
    data = fmp4.read_bytes()
    run = uuid.uuid4().hex[:8]
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as http:

        async def one(i: int) -> None:
            p = plans[i]
            body = data[p.offset : p.offset + p.size]
            async with slots:
                rs = await asyncio.gather(
                    *(http.put(f"{n}/chunk/raw-{run}-{i}", content=body) for n in nodes)
                )
                assert all(r.status_code in (200, 201) for r in rs), [r.status_code for r in rs]

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(plans))))
        return time.perf_counter() - start


def upload(base: str, path: Path) -> tuple[float, dict[str, float], dict]:
    """Seconds from the first byte sent to `completed`, and when each status was first seen."""
    phases: dict[str, float] = {}
    start = time.perf_counter()
    with open(path, "rb") as f, httpx.Client(timeout=600) as http:
        r = http.post(
            f"{base}/upload",
            data={"title": "bench", "redundancy_mode": "replication"},
            files={"video": (path.name, f, "video/mp4")},
        )
        assert r.status_code == 200, r.text
        phases["answered"] = time.perf_counter() - start
        url = base + r.json()["status_url"]
        while True:
            st = http.get(url).json()
            phases.setdefault(st["status"], time.perf_counter() - start)
            if st["status"] in ("completed", "failed"):
                break
            time.sleep(0.01)
    assert st["status"] == "completed", st
    return time.perf_counter() - start, phases, st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100, help="approximate size of the test video")
    ap.add_argument("--rounds", type=int, default=2, help="repeat each measurement; the best counts")
    ap.add_argument("--concurrency", type=int, default=4, help="chunks in flight (both sides)")
    ap.add_argument("--gate", action="store_true", help="accepted for bench/run.py; no gated target")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-uploader-") as tmp:
        root = Path(tmp)
        print(f"making a ~{args.mb} MB test video ...", flush=True)
        src = make_input(root, args.mb)
        fmp4 = root / "remuxed.mp4"
        asyncio.run(media.remux(src, fmp4))
        size = src.stat().st_size
        with (
            Cluster(root / "cluster", nodes=3) as cluster,
            uploader_service(
                root / "up", cluster.meta.url, "--concurrency", str(args.concurrency),
                "--max-upload-bytes", str(4 * size),
            ) as up,
        ):  # fmt: skip
            raw = min(asyncio.run(raw_puts(cluster.urls, fmp4, args.concurrency)) for _ in range(args.rounds))
            best = None
            for _ in range(args.rounds):
                took, phases, st = upload(up.url, src)
                if best is None or took < best[0]:
                    best = (took, phases, st)
        assert best is not None
        took, phases, st = best
    mb = size / 1e6
    print(f"\nvideo: {mb:.1f} MB, {st['duration_sec']:.1f} s, {st['total_chunks']} chunks x 3 replicas")
    print(f"  raw PUT of the chunks to 3 nodes   {raw:7.2f} s  {mb / raw:8.1f} MB/s  (baseline)")
    print(f"  shoal upload end to end            {took:7.2f} s  {mb / took:8.1f} MB/s  {raw / took:.2f}x")
    order = ["answered", "chunking", "registering", "uploading_chunks", "finalizing", "completed"]
    marks = [(name, phases[name]) for name in order if name in phases]
    print("  phases (seconds from the first byte sent):")
    prev = 0.0
    for name, at in marks:
        print(f"    {name:<18} at {at:6.2f} s  (+{at - prev:.2f})")
        prev = at
    return 0


if __name__ == "__main__":
    sys.exit(main())
