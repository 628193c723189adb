"""The fair read share of a storage node (--read-bandwidth), on real `shoal serve storage` processes.

One greedy client (its own process, 16 readers in parallel, one viewer key) and one polite client
(1 reader, another key) read 1 MiB chunks from a node with a 24 MB/s budget. The polite client's
median chunk latency is compared with its median alone on the same node: with the share
(`--read-fairness client`) it gets about half the budget, about 2x its time alone; the negative
control (`--read-fairness request`: every request its own turn, which is what a plain link or
per-connection scheduling gives) leaves it 1/17 of the budget, many times slower.
These are ratios of one node's own latencies in one run, not speed asserts: the budget, not the
CPU, sets the times.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import httpx
import pytest

from shoal.testing.authstack import bearer
from shoal.testing.storage import storage_node
from shoal.web.auth import AuthDir, KeyTable, SignedAuth

CHUNK = 1 << 20
N_CHUNKS = 8
BUDGET = "24M"

GREEDY = r"""
import sys, threading, httpx
url, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def reader(i):
    with httpx.Client(headers={"Authorization": "Bearer " + key}, timeout=60) as c:
        j = i
        while True:
            c.get(f"{url}/chunk/c{j % n}").raise_for_status()
            j += 1
for i in range(16):
    threading.Thread(target=reader, args=(i,), daemon=True).start()
print("reading", flush=True)
sys.stdin.read()  # until the test closes stdin (or dies: then this process ends with the pipe)
"""


@pytest.fixture
def keys(tmp_path):
    d = AuthDir(tmp_path / "auth")
    d.init()
    return {
        "dir": tmp_path / "auth",
        **{name: d.create_key("viewer", name)[1] for name in ("greedy", "polite")},
    }


def polite_latencies(url: str, key: str, n: int) -> list[float]:
    out = []
    with httpx.Client(headers=bearer(key), timeout=60) as c:
        for i in range(n):
            t0 = time.perf_counter()
            r = c.get(f"{url}/chunk/c{i % N_CHUNKS}")
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.content) == CHUNK
    return out


def run(tmp_path, keys: dict, fairness: str) -> tuple[float, float]:
    """(polite median alone, polite median beside the greedy client) on a fresh node."""
    auth = str(keys["dir"])
    node = storage_node(
        tmp_path / f"node-{fairness}",
        "--auth-dir",
        auth,
        "--read-bandwidth",
        BUDGET,
        "--read-slice",
        "64K",
        "--read-fairness",
        fairness,
    )
    with node:
        signer = SignedAuth(KeyTable(auth).secrets[0], "uploader-test")
        with httpx.Client(timeout=30) as c:
            for i in range(N_CHUNKS):
                body = bytes([i]) * CHUNK
                r = c.put(f"{node.url}/chunk/c{i}", content=body, auth=signer)
                assert r.status_code == 201, r.text
        polite_latencies(node.url, keys["polite"], 3)  # connection set up, bucket drained
        alone = statistics.median(polite_latencies(node.url, keys["polite"], 10))
        greedy = subprocess.Popen(
            [sys.executable, "-c", GREEDY, node.url, keys["greedy"], str(N_CHUNKS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert greedy.stdout.readline().strip() == "reading"
            time.sleep(1.0)  # its 16 readers are queued at the node
            assert greedy.poll() is None
            busy = statistics.median(polite_latencies(node.url, keys["polite"], 6))
        finally:
            greedy.stdin.close()
            greedy.kill()
            greedy.wait(10)
    return alone, busy


def test_a_greedy_client_cannot_starve_a_polite_one(tmp_path, keys):
    alone, busy = run(tmp_path, keys, "client")
    print(f"fair share: polite alone {alone * 1000:.1f} ms, beside 16 greedy readers {busy * 1000:.1f} ms")
    assert busy <= 3 * alone, (alone, busy)


def test_without_the_share_the_polite_client_starves(tmp_path, keys):
    """Negative control: the same budget granted per request."""
    alone, busy = run(tmp_path, keys, "request")
    print(f"per request: polite alone {alone * 1000:.1f} ms, beside 16 greedy readers {busy * 1000:.1f} ms")
    assert busy >= 5 * alone, (alone, busy)
