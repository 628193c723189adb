"""Smart vs round-robin streaming on one loopback cluster, as a fixed scenario set.

    python bench/streaming/load.py [--gate] [--rounds 3] [--speed 4] [--scenarios healthy,slow,killed,hung]
                                   [--fault-node first|0-4]

A metadata service and five storage nodes, each behind a FaultProxy (the nodes register with
the proxy's URL), hold a 4 Mbit/s video uploaded with the real uploader pipeline (3 replicas per
chunk). Scenarios, each with its fault in place before playback starts: `healthy` (no fault),
`slow` (the node +50 ms each way and 8 Mbit/s), `killed` (the node SIGKILLed, still in the
manifest), `hung` (the node accepts and never answers). The faulty node is, by default, the one
listed first for chunk 0 (`--fault-node first`): the node a client that trusts the manifest
order asks first, so the fault meets startup; on a node off the startup path neither client
meets it before playing (an index 0-4 picks a fixed node instead). Every scenario runs
--rounds times per strategy, smart and round robin alternating on the same placement (nodes
restored between runs). Printed: every run as JSON, then per scenario the median and the
min-max spread of startup latency, the smart/rr ratio of medians against its target (smart
<= 0.7x round robin with a fault, <= 1.1x when healthy), rebuffers and how many nodes served;
then per scenario and strategy the median startup timeline (manifest in, first request sent,
first answer's headers, first chunk verified, playing), to show where startup time goes.
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


class Site:
    """metadata + 5 storage nodes behind proxies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = metadata_service(root / "meta", "--maintenance-interval", "0")
        self.nodes: list[ServiceProcess] = []
        self.proxies: list[FaultProxy] = []
        self.fault = 0  # index of the node the scenarios make slow, kill or hang

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
        for i, k in enumerate(self.nodes):
            if k.proc is None or k.proc.poll() is not None:
                node = storage_node(k.data_dir, *self.node_args(self.proxies[i]), port=k.port)
                node.start()
                self.nodes[i] = node

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        for p in self.proxies:
            p.stop()
        self.meta.stop()


SCENARIOS = ("healthy", "slow", "killed", "hung")


def apply_fault(site: Site, scenario: str) -> str | None:
    """Put the scenario's fault in place before playback starts; the faulty node's URL."""
    i = site.fault
    if scenario == "slow":
        site.proxies[i].throttle(delay=0.05, mbps=8)
        return site.proxies[i].url
    if scenario == "killed":
        site.nodes[i].kill()
        return site.proxies[i].url
    if scenario == "hung":
        site.proxies[i].hang()
        return site.proxies[i].url
    return None


async def one_run(site: Site, video_id: str, strategy: str, speed: float, scenario: str) -> dict:
    site.restore()
    faulty = apply_fault(site, scenario)
    player = Player(video_id, site.meta.url, strategy=strategy, speed=speed, record_view=False)
    t0 = time.monotonic()
    await asyncio.wait_for(player.start(), 300)
    perf = player.performance()
    served: dict[str, int] = {}
    for a in player.arrivals:
        for n in a["nodes"]:
            served[n] = served.get(n, 0) + 1
    return {
        "scenario": scenario,
        "strategy": strategy,
        "startup_sec": perf["startup_latency_sec"],
        "rebuffers": perf["rebuffering_events"],
        "stall_sec": perf["total_stall_sec"],
        "hedged": player.scheduler.hedges,
        "failovers": len(player.scheduler.failovers),
        "from_faulty": served.get(faulty, 0) if faulty else None,
        "nodes_used": len(served),
        "wall_sec": round(time.monotonic() - t0, 2),
        "timeline": player.startup_timeline(),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (baseline 0)" if a == 0 else "inf"
    return f"{a / b:.2f}x"


TARGET = {"healthy": 1.1, "slow": 0.7, "killed": 0.7, "hung": 0.7}


def table(runs: list[dict]) -> tuple[str, bool]:
    """The markdown table of medians and spreads per scenario; whether every target holds."""
    lines = [
        "| scenario | smart startup median (min-max) | round robin startup median (min-max) | smart / rr "
        "| target | rebuffers smart / rr (median) | nodes used smart / rr |",
        "|---|---|---|---|---|---|---|",
    ]
    ok = True
    for sc in SCENARIOS:
        sm = [r for r in runs if r["scenario"] == sc and r["strategy"] == "smart"]
        rr = [r for r in runs if r["scenario"] == sc and r["strategy"] == "round-robin"]
        if not sm or not rr:
            continue
        s_up, r_up = [r["startup_sec"] for r in sm], [r["startup_sec"] for r in rr]
        met = median(s_up) <= TARGET[sc] * median(r_up)
        ok &= met
        lines.append(
            f"| {sc} | {median(s_up):.3f} s ({spread(s_up)}) | {median(r_up):.3f} s ({spread(r_up)}) "
            f"| {ratio(median(s_up), median(r_up))} | <= {TARGET[sc]}x: {'met' if met else 'MISSED'} "
            f"| {median([r['rebuffers'] for r in sm]):g} / {median([r['rebuffers'] for r in rr]):g} "
            f"| {median([r['nodes_used'] for r in sm]):g} / {median([r['nodes_used'] for r in rr]):g} |"
        )
    return "\n".join(lines), ok


def timelines(runs: list[dict]) -> str:
    """Median seconds from play() to each startup event, per scenario and strategy."""
    keys = ("manifest", "first_request", "first_headers", "first_chunk", "playing")
    lines = ["| scenario | strategy | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for sc in SCENARIOS:
        for strategy in ("smart", "round-robin"):
            tl = [r["timeline"] for r in runs if r["scenario"] == sc and r["strategy"] == strategy]
            if not tl:
                continue
            cells = [f"{median([t[k] for t in tl if k in t]):.3f}" for k in keys]
            lines.append(f"| {sc} | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    scenarios = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
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
            manifest = httpx.get(f"{site.meta.url}/manifest/{video_id}", timeout=10).json()
            chunks = manifest["total_chunks"]
            urls = [p.url for p in site.proxies]
            if args.fault_node == "first":  # the node listed first for chunk 0: on the startup path
                first = min(manifest["chunks"], key=lambda c: c["sequence_num"])
                site.fault = urls.index(first["replicas"][0].rstrip("/"))
            else:
                site.fault = int(args.fault_node)
            print(
                f"video: {args.seconds:.0f} s at 4 Mbit/s, {chunks} chunks x 3 replicas on 5 nodes; "
                f"playback at {args.speed}x; {args.rounds} rounds per scenario and strategy; "
                f"faulty node: {site.fault} ({urls[site.fault]}, fault node '{args.fault_node}')"
            )
            runs = []
            for scenario in scenarios:
                for _ in range(args.rounds):
                    for strategy in ("smart", "round-robin"):
                        r = await one_run(site, video_id, strategy, args.speed, scenario)
                        runs.append(r)
                        print(json.dumps(r), flush=True)
        finally:
            site.stop()
    text, ok = table(runs)
    print()
    print(text)
    print(f"\nall startup targets met: {ok}\n")
    print(timelines(runs))
    return 1 if args.gate and not ok else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--rounds", type=int, default=3, help="runs per scenario and strategy (alternating)")
    ap.add_argument("--scenarios", default="", help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--speed", type=float, default=4.0, help="playback clock speed")
    ap.add_argument("--seconds", type=float, default=40.0, help="video length")
    ap.add_argument(
        "--fault-node",
        default="first",
        help="'first': the node listed first for chunk 0 (the fault meets startup); or a node index 0-4",
    )
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
