"""Smart vs round-robin streaming on one loopback cluster with a slow, a killed and a hung node.

    python bench/streaming/load.py [--gate] [--rounds 2] [--speed 4]

A metadata service and five storage nodes, each behind a FaultProxy (the nodes register with
the proxy's URL), hold a 60 s, 4 Mbit/s video uploaded with the real uploader pipeline (3
replicas per chunk). For each run: node S is slowed from the start (+50 ms each way, 8 Mbit/s),
node K is SIGKILLed 4 s into playback, node H stops answering (accepts, reads, never replies)
8 s in. Both clients play the same video on the same setup (nodes restored between runs),
alternating, with the playback clock at --speed x real time. Reported per strategy (median of
rounds): startup latency, rebuffering events, total stall time, and failover time per failure
(from the failure, or the attempt if later, to that chunk being served by another node).
Targets: smart startup <= 0.7x round robin, rebuffers <= 0.3x, failover < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from shoal.client import Player
from shoal.testing import ServiceProcess
from shoal.testing.faultproxy import FaultProxy
from shoal.testing.metadata import metadata_service
from shoal.testing.storage import storage_node
from shoal.testing.uploader import make_video

SLOW, KILLED, HUNG = 0, 1, 2


class Site:
    """metadata + 5 storage nodes behind proxies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = metadata_service(root / "meta", "--maintenance-interval", "0")
        self.nodes: list[ServiceProcess] = []
        self.proxies: list[FaultProxy] = []

    def node_args(self, proxy: FaultProxy) -> list[str]:
        return ["--metadata-url", self.meta.url, "--node-url", proxy.url, "--heartbeat-interval", "1"]

    def start(self) -> Site:
        self.meta.start()
        for i in range(5):
            node = storage_node(self.root / f"node{i}")
            proxy = FaultProxy(node.port).start()
            node = storage_node(self.root / f"node{i}", *self.node_args(proxy), port=node.port)
            node.start()
            self.nodes.append(node)
            self.proxies.append(proxy)
        deadline = time.monotonic() + 20
        while len(httpx.get(f"{self.meta.url}/nodes/healthy", timeout=5).json()) < 5:
            if time.monotonic() > deadline:
                raise TimeoutError("nodes did not register")
            time.sleep(0.1)
        return self

    def restore(self) -> None:
        for p in self.proxies:
            p.passthrough()
        k = self.nodes[KILLED]
        if k.proc is None or k.proc.poll() is not None:
            node = storage_node(k.data_dir, *self.node_args(self.proxies[KILLED]), port=k.port)
            node.start()
            self.nodes[KILLED] = node

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        for p in self.proxies:
            p.stop()
        self.meta.stop()


async def one_run(site: Site, video_id: str, strategy: str, speed: float) -> dict:
    site.restore()
    site.proxies[SLOW].throttle(delay=0.05, mbps=8)
    player = Player(video_id, site.meta.url, strategy=strategy, speed=speed, record_view=False)
    t0 = time.monotonic()
    task = player.start()
    failures: dict[int, float] = {}
    await asyncio.sleep(4.0)
    site.nodes[KILLED].kill()
    failures[KILLED] = time.monotonic()
    await asyncio.sleep(4.0)
    site.proxies[HUNG].hang()
    failures[HUNG] = time.monotonic()
    await asyncio.wait_for(task, 300)
    perf = player.performance()
    urls = {i: site.proxies[i].url for i in (SLOW, KILLED, HUNG)}
    failover = {}
    for name, i in (("killed", KILLED), ("hung", HUNG)):
        times = [
            e.served_at - max(e.attempt_started, failures[i])
            for e in player.scheduler.failovers
            if e.failed_node == urls[i] and e.served_at >= failures[i]
        ]
        failover[name] = {"events": len(times), "max_sec": round(max(times), 3) if times else None}
    served = {
        name: sum(1 for a in player.arrivals if urls[i] in a["nodes"])
        for name, i in (("slow", SLOW), ("killed", KILLED), ("hung", HUNG))
    }
    return {
        "strategy": strategy,
        "startup_sec": perf["startup_latency_sec"],
        "rebuffers": perf["rebuffering_events"],
        "stall_sec": perf["total_stall_sec"],
        "failover": failover,
        "hedged": player.scheduler.hedges,
        "chunks_from": served,
        "wall_sec": round(time.monotonic() - t0, 2),
        "chunks": len(player.arrivals),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(runs: list[dict], strategy: str) -> dict:
    mine = [r for r in runs if r["strategy"] == strategy]
    worst = {}
    for name in ("killed", "hung"):
        vals = [r["failover"][name]["max_sec"] for r in mine if r["failover"][name]["max_sec"] is not None]
        worst[name] = max(vals) if vals else None
    return {
        "startup_sec": median([r["startup_sec"] for r in mine]),
        "rebuffers": median([r["rebuffers"] for r in mine]),
        "stall_sec": median([r["stall_sec"] for r in mine]),
        "failover_worst_sec": worst,
    }


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (baseline 0)" if a == 0 else "inf"
    return f"{a / b:.2f}x"


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="shoal-stream-bench-") as tmp:
        root = Path(tmp)
        video = make_video(root / "movie.mp4", size="640x360", seconds=args.seconds, bitrate="4M", rate=25)
        site = Site(root).start()
        try:
            up = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shoal",
                    "upload",
                    str(video),
                    "--title",
                    "bench",
                    "--metadata-url",
                    site.meta.url,
                    "--redundancy",
                    "replication",
                    "--quiet",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if up.returncode != 0:
                print(up.stderr, file=sys.stderr)
                return 1
            video_id = up.stdout.strip()
            chunks = httpx.get(f"{site.meta.url}/manifest/{video_id}", timeout=10).json()["total_chunks"]
            print(
                f"video: {args.seconds:.0f} s at 4 Mbit/s, {chunks} chunks x 3 replicas on 5 nodes; playback at {args.speed}x"
            )
            runs = []
            for _ in range(args.rounds):
                for strategy in ("smart", "round-robin"):
                    r = await one_run(site, video_id, strategy, args.speed)
                    runs.append(r)
                    print(json.dumps(r))
        finally:
            site.stop()
    smart, rr = summarize(runs, "smart"), summarize(runs, "round-robin")
    print(f"\n{'':<28}{'smart':>12}{'round-robin':>14}{'smart/rr':>18}")
    for key, label in (
        ("startup_sec", "startup latency (s)"),
        ("rebuffers", "rebuffering events"),
        ("stall_sec", "total stall (s)"),
    ):
        print(f"{label:<28}{smart[key]:>12.3f}{rr[key]:>14.3f}{ratio(smart[key], rr[key]):>18}")
    for name in ("killed", "hung"):
        s, r = smart["failover_worst_sec"][name], rr["failover_worst_sec"][name]
        fmt = lambda v: "no wait" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{'failover, ' + name + ' node (s)':<28}{fmt(s):>12}{fmt(r):>14}")
    ok_startup = rr["startup_sec"] > 0 and smart["startup_sec"] <= 0.7 * rr["startup_sec"]
    ok_rebuf = smart["rebuffers"] <= 0.3 * rr["rebuffers"] if rr["rebuffers"] else smart["rebuffers"] == 0
    ok_failover = all(v is None or v < 2.0 for v in smart["failover_worst_sec"].values())
    print(
        f"\ntargets: startup <= 0.7x: {ok_startup}; rebuffers <= 0.3x: {ok_rebuf}; smart failover < 2 s: {ok_failover}"
    )
    if args.gate and not (ok_startup and ok_rebuf and ok_failover):
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--rounds", type=int, default=2, help="runs per strategy (alternating)")
    ap.add_argument("--speed", type=float, default=4.0, help="playback clock speed")
    ap.add_argument("--seconds", type=float, default=60.0, help="video length")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
