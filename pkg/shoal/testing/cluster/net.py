"""Hosts as Linux network namespaces on a private test subnet, and the network faults between them.

Layout of one run (tag = "<pid>.<seq>", so parallel runs and several nets of one run never collide):

    root ns                       switch ns  shoalt-<pid>-<seq>-sw          host ns shoalt-<pid>-<seq>-h<i>
    sc<tag> 10.213.X.1/24 ──veth── bridge br0 ──veth── eth0 10.213.X.(10+i)/24

Every link lives inside a namespace of the run except the root end of the client veth, which
goes away with its peer when the switch namespace is deleted. No namespace has a default route,
so nothing is routed outside the subnet; the root ns only gains a connected /24 route, used by
the test process (the "client"). Faults are made inside a host's namespace: iptables rules in a
chain of our own (partition, loss), and delay with `tc netem` where the kernel has it, else with
an NFQUEUE helper process (shoal.testing.cluster.netdelay) that holds each packet.

Everything made is removed by Net.destroy() (idempotent; tests call it from a finalizer), and
`cleanup_stale()` removes what runs whose pid is gone left behind (a kill -9 of pytest).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from shoal.runtime import lifetime
from shoal.runtime.lifetime import pid_alive

PREFIX = "shoalt"
SUBNET_BASE = "10.213"
LOCK_PATH = "/run/shoal-testnet.lock"
CHAIN = "SHOAL"
_seq = itertools.count(1)
_NS_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-(sw|h\d+)$")
_LINK_RE = re.compile(r"^sc(\d+)\.(\d+)(@\S+)?$")


class NetError(RuntimeError):
    """A command that sets up or changes the test network failed."""


def run(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run a setup command; a failure names the command and its stderr."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise NetError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def require_tools() -> None:
    """Fail loudly (never skip) when the harness cannot work here: it needs root, ip and iptables."""
    if os.geteuid() != 0:
        raise NetError("the cluster harness needs root (network namespaces); CI runs as root")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise NetError(f"{tool} is not installed (scripts/apt-packages.txt: iproute2, iptables)")


def ns_pids(ns: str) -> list[int]:
    p = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def cleanup_stale() -> list[str]:
    """Delete namespaces (and their processes) and client links of runs whose pid is dead."""
    removed = []
    for ns in run(["ip", "netns", "list"], check=False).stdout.split("\n"):
        name = ns.split(" ")[0].strip()
        m = _NS_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            for pid in ns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            m = _LINK_RE.match(parts[1].strip())
            if m and not pid_alive(int(m.group(1))):
                link = parts[1].strip().split("@")[0]
                run(["ip", "link", "del", link], check=False)
                removed.append(link)
    return removed


def netem_available() -> bool:
    """Whether this kernel has sch_netem (many VM kernels do not; then delay uses NFQUEUE)."""
    ns = f"{PREFIX}-{os.getpid()}-0-probe"
    run(["ip", "netns", "add", ns], check=False)
    try:
        p = run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                check=False)  # fmt: skip
        return p.returncode == 0
    finally:
        run(["ip", "netns", "del", ns], check=False)


class Proc:
    """A process started inside a host: its own process group, output to a log file."""

    def __init__(self, host: Host, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None,
                 infra: bool = False) -> None:  # fmt: skip
        self.host = host
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.infra = infra  # harness helpers (the delay helper): never paused or killed by faults
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        argv = [*lifetime.pdeathsig_argv(), "ip", "netns", "exec", self.host.ns, *self.argv]
        env = {**os.environ, **(self.env or {})}
        self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, start_new_session=True)  # fmt: skip
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            lifetime.kill_group(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGCONT + SIGTERM the group, SIGKILL after `timeout`."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        lifetime.kill_group(self.popen.pid, signal.SIGKILL)  # stray workers of the group

    def kill(self) -> None:
        if self.popen is not None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Host:
    """One machine: a network namespace with one address on the test subnet."""

    def __init__(self, net: Net, index: int) -> None:
        self.net = net
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{net.prefix}-h{index}"
        self.ip = f"{net.subnet}.{10 + index}"
        self.procs: list[Proc] = []
        self.delay_proc: Proc | None = None
        self.paused = False

    def __repr__(self) -> str:
        return f"Host({self.name} {self.ip})"

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a short command inside this host's namespace."""
        return run(["ip", "netns", "exec", self.ns, *argv], check=check)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, infra: bool = False
    ) -> Proc:
        """Start a long-lived process in this host (from the thread that owns the Net: see Net.owner)."""
        self.net.check_owner()
        log = self.net.log_dir / f"{self.name}-{name}.log"
        proc = Proc(self, name, argv, log, env, infra).start()
        if not infra:
            self.procs.append(proc)
        return proc

    def pids(self, include_infra: bool = False) -> list[int]:
        """Every process in the namespace (workers included), less the harness's helpers."""
        skip = set()
        if not include_infra and self.delay_proc is not None and self.delay_proc.pid:
            skip.add(self.delay_proc.pid)
        return [p for p in ns_pids(self.ns) if p not in skip]

    def signal_all(self, sig: int) -> int:
        n = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                n += 1
        return n

    def pause(self) -> None:
        """SIGSTOP every process of the host (a VM frozen, a GC pause of minutes)."""
        self.paused = True
        self.signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_all(signal.SIGCONT)
        self.paused = False

    def kill9(self) -> list[Proc]:
        """SIGKILL every process of the host, as a power cut would; returns what was running."""
        was = [p for p in self.procs if p.running]
        self.signal_all(signal.SIGKILL)
        for p in was:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(10)  # type: ignore[union-attr]
        self.paused = False
        return was

    # --- iptables faults, in a chain of our own so healing is one flush
    def _chain(self) -> None:
        if self.sh("iptables", "-n", "-L", CHAIN, check=False).returncode != 0:
            self.sh("iptables", "-N", CHAIN)
            self.sh("iptables", "-I", "INPUT", "-j", CHAIN)
            self.sh("iptables", "-I", "OUTPUT", "-j", CHAIN)

    def block(self, ips: Iterable[str]) -> None:
        """Drop every packet to and from these addresses (one side of a partition)."""
        self._chain()
        for ip in ips:
            self.sh("iptables", "-A", CHAIN, "-s", ip, "-j", "DROP")
            self.sh("iptables", "-A", CHAIN, "-d", ip, "-j", "DROP")

    def lose(self, fraction: float) -> None:
        """Drop `fraction` of the packets this host receives on its link (random, per packet)."""
        self._chain()
        self.sh("iptables", "-A", CHAIN, "-i", "eth0", "-m", "statistic", "--mode", "random",
                "--probability", f"{fraction:.3f}", "-j", "DROP")  # fmt: skip

    def delay(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Delay every packet this host sends on its link by ms (± jitter)."""
        if self.net.netem:
            args = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", f"{ms}ms"]
            self.sh(*args, *([f"{jitter_ms}ms"] if jitter_ms else []))
            return
        self._chain()
        queue = 100 + self.index
        if self.delay_proc is None or not self.delay_proc.running:
            argv = [sys.executable, "-m", "shoal.testing.cluster.netdelay", "--queue", str(queue),
                    "--delay-ms", str(ms), "--jitter-ms", str(jitter_ms)]  # fmt: skip
            self.delay_proc = self.spawn("netdelay", argv, infra=True)
            self._wait_delay_ready()
        self.sh("iptables", "-A", CHAIN, "-o", "eth0", "-j", "NFQUEUE", "--queue-num", str(queue),
                "--queue-bypass")  # fmt: skip

    def _wait_delay_ready(self, timeout: float = 10.0) -> None:
        assert self.delay_proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "bound" in self.delay_proc.log_tail(5):
                return
            if not self.delay_proc.running:
                raise NetError(f"netdelay exited: {self.delay_proc.log_tail()}")
            time.sleep(0.05)
        raise NetError(f"netdelay not ready in {timeout} s: {self.delay_proc.log_tail()}")

    def heal(self) -> None:
        """Remove every network fault of this host (rules, qdisc, delay helper)."""
        self.sh("iptables", "-F", CHAIN, check=False)
        if self.net.netem:
            self.sh("tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if self.delay_proc is not None:
            self.delay_proc.stop(5)
            self.delay_proc = None

    def rules(self) -> str:
        return self.sh("iptables", "-S", CHAIN, check=False).stdout


class Net:
    """N hosts on a bridge in a switch namespace; the root ns reaches them as `client_ip`."""

    def __init__(self, n_hosts: int, log_dir: str | Path) -> None:
        require_tools()
        self.pid = os.getpid()
        self.seq = next(_seq)
        self.prefix = f"{PREFIX}-{self.pid}-{self.seq}"
        self.switch_ns = f"{self.prefix}-sw"
        self.client_link = f"sc{self.pid}.{self.seq}"
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.subnet = ""
        self.n_hosts = n_hosts
        self.hosts: list[Host] = []
        self.netem = False
        self.owner = threading.current_thread()
        self.created = False

    def check_owner(self) -> None:
        """Long-lived children die with the thread that forked them (PDEATHSIG): only the owner spawns."""
        if threading.current_thread() is not self.owner:
            raise RuntimeError("spawn cluster processes from the thread that created the Net")

    @property
    def client_ip(self) -> str:
        return f"{self.subnet}.1"

    def _pick_subnet(self) -> str:
        used = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        start = (self.pid * 7 + self.seq) % 250
        for k in range(250):
            x = (start + k) % 250 + 1
            if f" {SUBNET_BASE}.{x}." not in used:
                return f"{SUBNET_BASE}.{x}"
        raise NetError(f"no free {SUBNET_BASE}.X.0/24 subnet")

    def create(self) -> Net:
        cleanup_stale()
        self.netem = netem_available()
        with open(LOCK_PATH, "w") as lock:  # subnet choice + creation, one run at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = self._pick_subnet()
            self.created = True
            try:
                self._build()
            except Exception:
                self.destroy()
                raise
        return self

    def _build(self) -> None:
        sw = self.switch_ns
        run(["ip", "netns", "add", sw])
        swx = ["ip", "netns", "exec", sw]
        run([*swx, "ip", "link", "add", "br0", "type", "bridge"])
        run([*swx, "ip", "link", "set", "br0", "up"])
        run([*swx, "ip", "link", "set", "lo", "up"])
        # the client link: root end in the root ns, other end on the bridge
        run(["ip", "link", "add", self.client_link, "type", "veth", "peer", "name", "up0", "netns", sw])
        run([*swx, "ip", "link", "set", "up0", "master", "br0", "up"])
        run(["ip", "addr", "add", f"{self.client_ip}/24", "dev", self.client_link])
        run(["ip", "link", "set", self.client_link, "up"])
        for i in range(self.n_hosts):
            h = Host(self, i)
            run(["ip", "netns", "add", h.ns])
            self.hosts.append(h)
            run([*swx, "ip", "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", h.ns])
            run([*swx, "ip", "link", "set", f"p{i}", "master", "br0", "up"])
            h.sh("ip", "link", "set", "lo", "up")
            h.sh("ip", "addr", "add", f"{h.ip}/24", "dev", "eth0")
            h.sh("ip", "link", "set", "eth0", "up")

    # --- faults across hosts
    def partition(self, *groups: Sequence[Host], client_with: int | None = None) -> None:
        """Cut the hosts into groups that cannot talk to each other. The client (the test process)
        keeps reaching every host unless `client_with` names the one group it stays in."""
        for gi, group in enumerate(groups):
            others = [h.ip for gj, g in enumerate(groups) if gj != gi for h in g]
            if client_with is not None and client_with != gi:
                others.append(self.client_ip)
            for h in group:
                h.block(others)

    def isolate(self, host: Host, from_client: bool = False) -> None:
        """Cut one host off from every other host (and from the client when `from_client`)."""
        rest = [h for h in self.hosts if h is not host]
        self.partition([host], rest, client_with=None if not from_client else 1)

    def heal(self) -> None:
        for h in self.hosts:
            h.heal()
            if h.paused:
                h.resume()

    def destroy(self) -> None:
        """Stop every process and delete every namespace and link of this run. Idempotent."""
        if not self.created:
            return
        for h in self.hosts:
            for p in [*h.procs, *([h.delay_proc] if h.delay_proc else [])]:
                with contextlib.suppress(Exception):
                    p.signal(signal.SIGCONT)
                    p.signal(signal.SIGKILL)
        for h in self.hosts:
            for pid in ns_pids(h.ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for p in h.procs:
                if p.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.popen.wait(10)
        for h in self.hosts:
            run(["ip", "netns", "del", h.ns], check=False)
        # any host ns made before a failed _build step
        for i in range(len(self.hosts), self.n_hosts + 1):
            run(["ip", "netns", "del", f"{self.prefix}-h{i}"], check=False)
        run(["ip", "netns", "del", self.switch_ns], check=False)
        run(["ip", "link", "del", self.client_link], check=False)
        self.created = False

    def leftovers(self) -> list[str]:
        """Namespaces or links of this run that still exist (empty after destroy)."""
        names = run(["ip", "netns", "list"], check=False).stdout
        found = [n.split(" ")[0] for n in names.splitlines() if n.startswith(self.prefix + "-")]
        if run(["ip", "link", "show", self.client_link], check=False).returncode == 0:
            found.append(self.client_link)
        return found

    def __enter__(self) -> Net:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
