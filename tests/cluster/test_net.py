"""The harness itself: hosts are namespaces that reach each other and nothing else, each fault
does what it says, and everything made is removed (also what a killed run left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shoal.testing.cluster import net as netmod
from shoal.testing.cluster.net import Net

ECHO = (
    "import socketserver as s\n"
    "class H(s.BaseRequestHandler):\n"
    "    def handle(self): self.request.sendall(self.request.recv(1))\n"
    "s.ThreadingTCPServer.allow_reuse_address = True\n"
    "s.ThreadingTCPServer(('0.0.0.0', 7000), H).serve_forever()\n"
)
PROBE = (
    "import socket, sys, time\n"
    "t = time.monotonic()\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])); c.sendall(b'x')\n"
    "    assert c.recv(1) == b'x'; print(time.monotonic() - t)\n"
    "except OSError as e:\n"
    "    print('fail', e)\n"
)


@pytest.fixture
def net(tmp_path):
    n = Net(3, tmp_path / "logs")
    try:
        n.create()
        for h in n.hosts:
            h.spawn("echo", [sys.executable, "-c", ECHO])
        for h in n.hosts:
            _wait_echo(n.hosts[(h.index + 1) % 3], h)
        yield n
    finally:
        n.destroy()
        assert n.leftovers() == []


def _probe(src, dst, timeout: float = 1.0) -> float | None:
    out = src.sh(sys.executable, "-c", PROBE, dst.ip, str(timeout)).stdout.strip()
    return None if out.startswith("fail") else float(out)


def _wait_echo(src, dst) -> None:
    deadline = time.monotonic() + 10
    while _probe(src, dst) is None:
        assert time.monotonic() < deadline, f"{dst} echo server never answered"
        time.sleep(0.1)


def test_hosts_have_their_own_addresses_and_names_carry_the_pid(net):
    assert len({h.ip for h in net.hosts}) == 3 and all(h.ip.startswith("10.213.") for h in net.hosts)
    assert all(f"-{os.getpid()}-" in h.ns for h in net.hosts)
    routes = net.hosts[0].sh("ip", "route").stdout
    assert "default" not in routes  # nothing is routed outside the test subnet


def test_partition_cuts_one_host_off_and_heal_restores_it(net):
    h0, h1, h2 = net.hosts
    net.isolate(h2)
    assert _probe(h2, h0) is None and _probe(h0, h2) is None
    assert _probe(h0, h1) is not None  # the majority still talks
    net.heal()
    assert _probe(h2, h0) is not None


def test_delay_holds_packets_for_the_given_time(net):
    h0, h1, _ = net.hosts
    h0.delay(150)
    took = _probe(h0, h1, timeout=5)
    net.heal()
    assert took is not None and took >= 0.15  # connect + echo: at least one delayed packet each way out
    assert (_probe(h0, h1) or 1.0) < 0.15


def test_loss_drops_some_packets(net):
    h0, h1, _ = net.hosts
    h1.lose(1.0)
    assert _probe(h0, h1, timeout=0.5) is None
    net.heal()
    assert _probe(h0, h1) is not None


def test_pause_stops_every_process_of_the_host_and_resume_continues(net):
    h = net.hosts[1]
    pid = h.procs[0].pid
    h.pause()
    deadline = time.monotonic() + 5
    while open(f"/proc/{pid}/stat").read().split()[2] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _probe(net.hosts[0], h, timeout=0.5) is None
    h.resume()
    assert _probe(net.hosts[0], h, timeout=2) is not None


def test_kill9_leaves_no_process_in_the_host(net):
    h = net.hosts[0]
    assert h.pids()
    was = h.kill9()
    assert [p.name for p in was] == ["echo"] and h.pids() == []


def test_stale_namespaces_of_a_dead_run_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    ns = f"{netmod.PREFIX}-{dead.pid}-1-h0"
    netmod.run(["ip", "netns", "add", ns])
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    time.sleep(0.2)
    try:
        removed = netmod.cleanup_stale()
        assert ns in removed
        assert ns not in netmod.run(["ip", "netns", "list"]).stdout
        assert sleeper.wait(5) == -signal.SIGKILL  # its process went too
    finally:
        netmod.run(["ip", "netns", "del", ns], check=False)
        sleeper.kill()


def test_destroy_after_a_failing_test_body_still_removes_everything(tmp_path):
    n = Net(2, tmp_path / "logs")
    with pytest.raises(RuntimeError, match="boom"), n:
        n.hosts[0].spawn("sleep", ["sleep", "60"])
        raise RuntimeError("boom")
    assert n.leftovers() == []
    assert not n.hosts[0].procs[0].running
