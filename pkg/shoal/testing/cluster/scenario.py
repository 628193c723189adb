"""Scenarios: a stack on its own hosts, a workload, a nemesis schedule, then heal and check.

Three stacks, each on a Cluster of its own:
- kv: a 3-member etcd on h0-h2 and `shoal serve kv --store etcd` on each of them;
- state: three `shoal serve state` nodes on h0-h2 replicating each other;
- video: etcd on h0-h2, metadata (on etcd) and the uploader on h3, storage nodes on h4-h8.

`Stack.run(fault_kinds, seconds, seed, out_dir)` returns a Report: operations and outcomes,
the faults applied, every anomaly the checkers found (empty = the run held), and where the
history and the schedule were written.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from shoal.testing.cluster import checkers, linearizable
from shoal.testing.cluster.clients import (
    COMPUTE_TOKEN,
    ComputeCreates,
    KvRegisters,
    KvTxns,
    StateDocs,
    Video,
    compute_listings,
    play,
    read_final_kv,
    run_for,
    wait_equal,
)
from shoal.testing.cluster.history import OK, History
from shoal.testing.cluster.inhost import InHostKv
from shoal.testing.cluster.nemesis import Event, Nemesis, schedule
from shoal.testing.cluster.services import Cluster, Service


@dataclass
class Report:
    stack: str
    faults: list[str]
    seed: int
    seconds: float
    events: list[Event]
    counts: dict[str, int]
    anomalies: list[str]
    out_dir: Path
    elapsed: float
    notes: list[str] = field(default_factory=list)

    @property
    def ops(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        lines = [f"{self.stack} under {'+'.join(self.faults)} (seed {self.seed}, {self.seconds:.0f} s): "
                 f"{self.ops} ops {self.counts}, {len(self.events)} faults, {len(self.anomalies)} anomalies"]  # fmt: skip
        lines += [f"  fault {e.describe()}" for e in self.events]
        lines += [f"  ANOMALY {a}" for a in self.anomalies[:30]]
        lines += [f"  note {n}" for n in self.notes]
        lines.append(f"  history: {self.out_dir}")
        return "\n".join(lines)


class Stack:
    name = ""
    n_hosts = 3
    targets: Sequence[int] = (0, 1, 2)

    def __init__(self, root: str | Path, log: Callable[[str], None] = print) -> None:
        self.cluster = Cluster(root, self.n_hosts)
        self.log = log
        self.runs = 0

    def start(self) -> Stack:
        self.cluster.create()
        try:
            self.place()
        except Exception:
            self.cluster.destroy()
            raise
        return self

    def destroy(self) -> None:
        self.cluster.destroy()

    def place(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def workloads(self, history: History, tag: str, seed: int) -> list:  # pragma: no cover
        raise NotImplementedError

    def check(
        self, history: History, tag: str, workloads: list, report: Report
    ) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def wait_recovered(self, timeout: float = 60.0) -> list[str]:
        """After healing: every service healthy again (a restart may still be finishing)."""
        out = []
        for s in self.cluster.services:
            try:
                s.wait(timeout) if s.running else s.start()
            except Exception as exc:
                out.append(f"{s} did not recover after healing: {exc}")
        return out

    def run(self, faults: Sequence[str], seconds: float, seed: int, out_dir: str | Path,
            targets: Sequence[int] | None = None, **workload_kw: object) -> Report:  # fmt: skip
        """`targets`: the hosts faults may hit (default: the stack's)."""
        self.runs += 1
        tag = f"{self.name}{self.runs}s{seed}"
        out = Path(out_dir) / f"{tag}-{'+'.join(faults)}"
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        events = schedule(seed, faults, seconds, self.targets if targets is None else targets)
        self.log(f"== {self.name} under {'+'.join(faults)}: seed {seed}, {seconds} s; schedule:")
        for e in events:
            self.log(f"   {e.describe()}")
        history = History()
        workloads = self.workloads(history, tag, seed, **workload_kw)
        nemesis = self.nemesis = Nemesis(self.cluster, events, log=self.log)
        started = time.monotonic()
        try:
            run_for(seconds, workloads, nemesis.run)
        finally:
            nemesis.heal_all()
        notes = list(nemesis.errors)
        anomalies = [f"client crashed: {c}" for w in workloads for c in w.crashes]
        anomalies += self.wait_recovered()
        report = Report(self.name, list(faults), seed, seconds, events, history.counts(), anomalies, out,
                        0.0, notes)  # fmt: skip
        try:
            anomalies += self.check(history, tag, workloads, report)
        finally:
            history.write(out / "history.jsonl")
            (out / "schedule.json").write_text(json.dumps(nemesis.record(), indent=1))
        report.counts = history.counts()
        report.elapsed = time.monotonic() - started
        (out / "report.txt").write_text(report.describe() + "\n")
        return report


class KvStack(Stack):
    name = "kv"

    def place(self) -> None:
        h = self.cluster.hosts
        self.cluster.etcd(h[:3])
        self.kv: list[Service] = self.cluster.kv(h[:3])

    def workloads(self, history: History, tag: str, seed: int, stale: bool = False, torn: bool = False,
                  inside: int | None = None, registers: bool = True) -> list:  # fmt: skip
        """Register clients on r0-r2, txn clients on t0-t2 (`torn`: the planted torn txns), and
        with `inside` = a host index, clients inside that host using its kv service only."""
        keys = [f"{tag}/r{i}" for i in range(3)]
        txn_keys = [f"{tag}/t{i}" for i in range(3)]
        urls = [s.url for s in self.kv]
        out: list = []
        if registers:
            out.append(KvRegisters(history, urls, keys, clients=4, seed=seed, stale=stale))
        out.append(KvTxns(history, urls, txn_keys, clients=3 if torn else 2, seed=seed, torn=torn))
        if inside is not None:
            out.append(InHostKv(history, self.cluster.hosts[inside], self.kv[inside].url, keys, txn_keys,
                                seed, self.out / "inside.jsonl"))  # fmt: skip
        return out

    def check(self, history: History, tag: str, workloads: list, report: Report) -> list[str]:
        keys = [k for w in workloads if isinstance(w, KvRegisters | KvTxns) for k in w.keys]
        result = linearizable.check(history)
        out = [f"linearizability: {line}" for k in result.keys.values() if k.ok is not True
               for line in linearizable.Result({k.key: k}).describe().splitlines()]  # fmt: skip
        final = read_final_kv([s.url for s in self.kv], keys)
        out += [f"lost write: {x}" for x in checkers.lost_kv_writes(history, final)]
        txns = [op for op in history if op.f == "txn"]
        report.notes.append(f"txns: {sum(op.outcome == 'ok' for op in txns)} ok of {len(txns)}")
        for w in workloads:
            if isinstance(w, InHostKv):
                out += self._check_inside(w, report)
        report.notes.append(f"final: {final}")
        return out

    def _check_inside(self, w: InHostKv, report: Report, settle: float = 1.0) -> list[str]:
        """The client inside a partitioned host: an op it invoked while cut off (`settle` s
        after the cut, past requests already in flight) may not be acknowledged before the
        heal (after it, it may: the request can wait out the partition). Linearizability
        already rules out ok-and-wrong for every op of it."""
        t0 = self.nemesis.t0
        windows = [(t0 + e.applied_at + settle, t0 + e.at + e.seconds) for e in self.nemesis.events
                   if e.fault == "partition" and e.host == w.host.index and e.applied_at is not None]  # fmt: skip
        ops = w.ops()
        cut = [(op, b) for op in ops for a, b in windows if a <= op.invoke <= b]
        out = [f"{w.node}: {op.f} {op.key} {op.value} acknowledged inside a minority partition ({op.result})"
               for op, b in cut if op.outcome == OK and op.complete is not None and op.complete <= b]  # fmt: skip
        counts = {o: sum(op.outcome == o for op, _ in cut) for o in ("ok", "fail", "unknown")}
        report.notes.append(f"{w.node}: {len(ops)} ops, {len(cut)} invoked while cut off: {counts}")
        if not ops:
            out.append(f"{w.node}: the in-host client recorded no operations")
        return out


class StateStack(Stack):
    name = "state"

    def place(self) -> None:
        self.nodes: list[Service] = self.cluster.state(self.cluster.hosts[:3])

    def workloads(self, history: History, tag: str, seed: int) -> list:
        return [StateDocs(history, [s.url for s in self.nodes], tag, clients=3, seed=seed)]

    def check(self, history: History, tag: str, workloads: list, report: Report) -> list[str]:
        listings = wait_equal([s.url for s in self.nodes], owner=tag, timeout=30)
        out = [f"nodes differ after healing: {x}" for x in checkers.nodes_equal(listings)]
        first = next(iter(listings.values()))["cidrs"] if listings else []
        final = {d["id"]: d for d in first}
        out += [f"lost: {x}" for x in checkers.lost_documents(history, final, "name")]
        report.notes.append(f"{len(final)} documents on every node")
        return out


class VideoStack(Stack):
    name = "video"
    n_hosts = 9
    targets = (0, 1, 2, 3, 4, 5, 6, 7, 8)

    def place(self) -> None:
        from shoal.testing.uploader import make_video
        from shoal.uploader.media import remux

        h = self.cluster.hosts
        self.cluster.etcd(h[:3])
        self.parts = self.cluster.video(h[3], h[4:9], h[3])
        media = self.cluster.root / "media"
        media.mkdir(parents=True, exist_ok=True)
        self.video = make_video(media / "clip.mp4", size="640x360", seconds=5, bitrate="4M")
        asyncio.run(remux(self.video, media / "expected.mp4"))  # what the chunks must add up to
        self.expected = checkers.sha256((media / "expected.mp4").read_bytes())
        self.acked: list[str] = []  # every acknowledged upload of every run

    def workloads(self, history: History, tag: str, seed: int) -> list:
        return [Video(history, self.parts["uploader"].url, self.parts["metadata"].url, self.video, clients=2,
                      seed=seed)]  # fmt: skip

    def check(self, history: History, tag: str, workloads: list, report: Report) -> list[str]:
        w: Video = workloads[0]
        time.sleep(1.0)  # storage nodes heartbeat again
        for vid in w.acked:  # after healing, every acknowledged upload must play, byte-exact
            for _ in range(3):
                if play(history, 9, vid, w.metadata_url, w.scratch, 60, node="final").outcome == "ok":
                    break
        expected = {vid: self.expected for vid in w.acked}
        out = [f"play: {x}" for x in checkers.plays_exact(history, expected)]
        out += [f"upload: {x}" for x in checkers.acked_uploads_played(history)]
        self.acked += w.acked
        report.notes.append(f"{len(w.acked)} uploads acknowledged")
        return out


class ComputeStack(Stack):
    """etcd on h0-h2, a compute node on h0 and on h1 sharing the registry on etcd."""

    name = "compute"
    namespace = "compute"

    def place(self) -> None:
        h = self.cluster.hosts
        self.cluster.etcd(h[:3])
        self.nodes: list[Service] = self.cluster.compute(h[:2], COMPUTE_TOKEN, self.namespace)
        self.killed = False  # the test driver forgets its domains on kill -9

    def workloads(self, history: History, tag: str, seed: int, double: bool = False) -> list:
        return [ComputeCreates(history, [s.url for s in self.nodes], tag, clients=3, seed=seed,
                               double=self.double_create if double else None)]  # fmt: skip

    def double_create(self, name: str) -> None:
        """The planted bug: a second registry record holding `name`, without the name claim."""
        from shoal.kv.etcd import EtcdStore

        async def go() -> None:
            store = await EtcdStore.open(self.cluster.etcd_urls, namespace=self.namespace, timeout=10)
            try:
                holder = orjson.loads((await store.get(f"/compute/names/{name}")).value)["id"]
                record = orjson.loads((await store.get(f"/compute/instances/{holder}")).value)
                twin = f"{holder}d"
                record.update(id=twin, uuid=str(uuid.uuid4()))
                await store.set(f"/compute/instances/{twin}", orjson.dumps(record))
            finally:
                await store.close()

        asyncio.run(go())

    def check(self, history: History, tag: str, workloads: list, report: Report) -> list[str]:
        if any(e.fault == "kill" for e in report.events):
            self.killed = True
        listings = compute_listings([s.url for s in self.nodes])
        out = [f"instances: {x}" for x in checkers.instances_once(history, listings, f"{tag}-")]
        creates = [op for op in history if op.f == "create"]
        mine = [i for i in next(iter(listings.values())) if i["name"].startswith(f"{tag}-")]
        report.notes.append(f"creates: {sum(op.outcome == OK for op in creates)} ok of {len(creates)}, "
                            f"{len(mine)} instances listed")  # fmt: skip
        if not self.killed:  # every registry record of a node is one domain of its backend, and back
            out += self._domains_match(listings)
        return out

    def _domains_match(self, listings: dict[str, list[dict]]) -> list[str]:
        out = []
        every = next(iter(listings.values()))
        for s in self.nodes:
            r = httpx.get(s.url + "/api/v1/compute/cluster/status", timeout=10,
                          headers={"Authorization": f"Bearer {COMPUTE_TOKEN}"})  # fmt: skip
            local = r.json()["backends"]["kvm"]["instances"]
            node_id = (self.cluster.root / "data" / s.host.name / "compute" / "node-id").read_text().strip()
            records = sum(1 for i in every if (i.get("node") or {}).get("id") == node_id)
            if local != records:
                out.append(
                    f"{s}: {local} domains on its backend, {records} registry records (orphan or lost)"
                )
        return out


STACKS: dict[str, type[Stack]] = {"kv": KvStack, "state": StateStack, "video": VideoStack,
                                  "compute": ComputeStack}  # fmt: skip
