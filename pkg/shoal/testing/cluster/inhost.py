"""Clients that run inside a host's namespace, so a partition puts them on the host's side.

The clients of the test process sit in the root namespace and reach every host a partition
does not cut them off from; a client *inside* a minority host sees only that host's services,
as a program on that machine would. `InHostKv` (a Workload for run_for) starts

    python -m shoal.testing.cluster.inhost --url U --keys K,... --txn-keys T,... --seed S --out F

in the host; it runs the kv register and txn clients against the host's own kv service until
SIGTERM, then writes its history (time.monotonic() is one clock for every namespace of the
machine, so its ops merge into the test's history as they are).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from shoal.testing.cluster.clients import KvRegisters, KvTxns
from shoal.testing.cluster.history import History
from shoal.testing.cluster.net import Host

PROCESS_BASE = 200  # in-host clients' process ids start here


class InHostKv:
    """The in-host kv clients as one Workload: start() spawns them in `host`, stop() ends them
    and merges their ops into `history`, renamed `inside-<host>` and numbered from PROCESS_BASE."""

    def __init__(self, history: History, host: Host, url: str, keys: list[str], txn_keys: list[str],
                 seed: int, out: Path) -> None:  # fmt: skip
        self.history = history
        self.host = host
        self.url = url
        self.keys = keys
        self.txn_keys = txn_keys
        self.seed = seed
        self.out = out
        self.crashes: list[str] = []
        self.proc = None
        self.node = f"inside-{host.name}"

    def start(self) -> InHostKv:
        argv = [sys.executable, "-m", "shoal.testing.cluster.inhost", "--url", self.url,
                "--keys", ",".join(self.keys), "--txn-keys", ",".join(self.txn_keys),
                "--seed", str(self.seed), "--out", str(self.out)]  # fmt: skip
        self.proc = self.host.spawn("inhost-client", argv, env={"PYTHONUNBUFFERED": "1"})
        return self

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.stop(timeout=30)
        if not self.out.exists():
            self.crashes.append(f"{self.node}: no history written (exit {self.proc.popen.returncode}):\n"
                                f"{self.proc.log_tail()}")  # fmt: skip
            return
        crashed = Path(str(self.out) + ".crashes")
        if crashed.exists():
            self.crashes += [f"{self.node}: {c}" for c in crashed.read_text().splitlines()]
        for op in History.read(self.out):
            op.process += PROCESS_BASE
            op.node = self.node
            self.history._append(op)

    def ops(self) -> list:
        return [op for op in self.history if op.node == self.node]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--keys", required=True)
    p.add_argument("--txn-keys", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    history = History()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workloads = [KvRegisters(history, [a.url], a.keys.split(","), clients=2, seed=a.seed + 1),
                 KvTxns(history, [a.url], a.txn_keys.split(","), clients=1, seed=a.seed + 2, base=10)]  # fmt: skip
    for w in workloads:
        w.start()
    while not stop.wait(0.2):
        pass
    for w in workloads:
        w.stop()
    crashes = [c for w in workloads for c in w.crashes]
    history.write(Path(a.out + ".tmp")).rename(a.out)
    Path(a.out + ".crashes").write_text("".join(c + "\n" for c in crashes))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
