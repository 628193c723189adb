"""Issue #21's soak: two managers, S3 paused and resumed at random while the app commits.

At the end the final replica holds every row any replica lineage ever held (no replicated
commit is lost across handovers), and at no sampled moment did both managers run their app
(the writer). Midway the writer is killed -9 and restarted (a stale standby), so at least one
handover happens under the chaos. Short by default (30 s of chaos, ~60 s in all); SHOAL_SOAK_SECONDS=180 for the issue's 3 min.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from shoal.testing.s3 import S3Server

from .conftest import python_child
from .test_fencing import replica_rows
from .test_lifetime import alive, descendants

SECONDS = float(os.environ.get("SHOAL_SOAK_SECONDS", "30"))
COMMITTER = python_child(
    "import os, sqlite3, time\n"
    "who = os.path.basename(os.path.dirname(os.environ['SHOAL_MANAGER_DATA_DIR']))\n"
    "c = sqlite3.connect(os.environ['SHOAL_DATABASE'], timeout=30, isolation_level=None)\n"
    "c.execute('CREATE TABLE IF NOT EXISTS items (v TEXT)')\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    c.execute('INSERT INTO items VALUES (?)', (f'{who}-{time.time_ns()}-{n}',))\n"
    "    time.sleep(0.05)\n"
)


def apps(manager) -> set[int]:
    """The live committer processes under a manager."""
    found = set()
    for pid in descendants(manager.proc.pid):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        parts = cmd.split(b"\0")
        if parts[1:3] == [b"-u", b"-c"] and b"SHOAL_DATABASE" in parts[3] and alive(pid):
            found.add(pid)
    return found


def test_soak_two_managers_s3_flapping(manager_factory, tmp_path):
    s3 = S3Server().start(tmp_path / "s3")
    rng = random.Random(21)
    try:
        storage = s3.storage_config(s3.create_bucket("soak"), key_prefix="soak")
        cfg = {"storage": storage, "stacks": ["leaser", "db"], "lease": {"ttl_seconds": 3}}
        a = manager_factory("a", command=COMMITTER, args=["--stop-timeout", "2"])
        b = manager_factory("b", command=COMMITTER, args=["--stop-timeout", "2"])
        with a, b:
            assert a.post("/config", cfg).status_code == 200
            assert b.post("/config", cfg).status_code == 200
            overlaps: list[tuple[set[int], set[int]]] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    pa, pb = apps(a), apps(b)
                    if pa and pb:
                        overlaps.append((pa, pb))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            end = time.monotonic() + SECONDS
            crash_at = time.monotonic() + SECONDS / 2
            pauses = 0
            try:
                while time.monotonic() < end:
                    if crash_at and time.monotonic() > crash_at:
                        # the writer dies once (kill -9) and comes back as a stale standby
                        crash_at = 0
                        victim = None
                        wait = time.monotonic() + 20
                        while victim is None and time.monotonic() < wait:
                            victim = next(
                                (m for m in (a, b) if m.status()["components"]["lease"]["held"]), None
                            )
                            time.sleep(0.1)
                        assert victim is not None, "no writer 20 s after S3 came back"
                        victim.kill()
                        victim.start()
                    time.sleep(rng.uniform(1.0, 4.0))
                    os.kill(s3.proc.pid, signal.SIGSTOP)
                    pauses += 1
                    time.sleep(rng.choice([0.5, 1.5, 4.0, 6.0]))  # some shorter, some longer than the TTL
                    os.kill(s3.proc.pid, signal.SIGCONT)
            finally:
                os.kill(s3.proc.pid, signal.SIGCONT)
            # S3 stays up: one of them is (or becomes) the writer and catches up
            deadline = time.monotonic() + 60
            holder = None
            while time.monotonic() < deadline and holder is None:
                for m in (a, b):
                    st = m.status()
                    rep = st["components"].get("replication", {})
                    if st["components"]["lease"]["held"] and st["process"]["running"] and rep.get("running"):
                        holder = m
                time.sleep(0.2)
            assert holder is not None, (a.status(), b.status())
            holder.post("/process/stop")  # no more commits; let the last ones replicate
            time.sleep(3)
            st = holder.wait(
                lambda s: (
                    all(
                        d["caught_up"] and d["measured_at"] > time.time() - 1
                        for d in (s["components"]["replication"].get("databases") or {}).values()
                    )
                    and s["components"]["replication"].get("databases")
                ),
                timeout=30,
                what="final replica caught up",
            )
            done.set()
            sampler.join(5)
            assert not overlaps, f"both managers ran their app at once: {overlaps[:3]}"
            final_key = st["components"]["replication"]["replicas"]["database.sqlite"]
            final = set(replica_rows(storage, final_key, tmp_path / "final.sqlite"))
            token = st["components"]["lease"]["token"]
            union: set[str] = set()
            client = s3.client()
            for t in range(1, token):
                key = final_key.replace(f"/t{token}/", f"/t{t}/")
                if client.list_objects_v2(Bucket=storage["bucket"], Prefix=key + "/").get("KeyCount"):
                    union |= set(replica_rows(storage, key, tmp_path / f"t{t}.sqlite"))
            assert pauses >= 3
            assert union <= final, (
                f"{len(union - final)} replicated rows lost, e.g. {sorted(union - final)[:3]}"
            )
            assert len(final) > 50 and token >= 2
    finally:
        s3.stop()
