"""Clients that drive a stack and record every operation in a History.

Each client is a thread with one op in flight. Outcomes follow what the client can know: an
answer is `ok` or a certain `fail` (a 409, a 4xx, a connection that never opened); a timeout,
a reset or a 5xx is `unknown` (the request may have been applied).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from shoal.testing.cluster.history import FAIL, OK, UNKNOWN, History, Op

NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def classify(op: Op, history: History, exc: Exception) -> Op:
    """A transport error: `fail` when the request cannot have left, `unknown` otherwise."""
    outcome = FAIL if isinstance(exc, NOT_SENT) else UNKNOWN
    return history.complete(op, outcome, error=f"{type(exc).__name__}: {exc}")


class Workload:
    """Client threads that run `one(process, rng, http)` until stopped."""

    def __init__(
        self, history: History, clients: int, seed: int, pace: float = 0.05, timeout: float = 1.5
    ) -> None:
        self.history = history
        self.clients = clients
        self.seed = seed
        self.pace = pace
        self.timeout = timeout
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.crashes: list[str] = []

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:  # pragma: no cover
        raise NotImplementedError

    def _loop(self, process: int) -> None:
        rng = random.Random(self.seed * 1000 + process)
        with httpx.Client(timeout=self.timeout) as http:
            while not self.stop_event.is_set():
                try:
                    self.one(process, rng, http)
                except Exception as exc:  # a bug in the client itself must fail the run, not vanish
                    self.crashes.append(f"client {process}: {type(exc).__name__}: {exc}")
                    return
                self.stop_event.wait(rng.uniform(0, 2 * self.pace))

    def start(self) -> Workload:
        for p in range(self.clients):
            t = threading.Thread(target=self._loop, args=(p,), name=f"client-{p}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)


class KvRegisters(Workload):
    """read / write / compare-and-set on a few keys, through any of the kv services.

    `stale` plants a bug: the client answers some reads from its own cache of an older value
    instead of asking (the linearizability checker must catch it)."""

    def __init__(self, history: History, urls: Sequence[str], keys: Sequence[str], clients: int = 4,
                 seed: int = 0, stale: bool = False, **kw: Any) -> None:  # fmt: skip
        super().__init__(history, clients, seed, **kw)
        self.urls = list(urls)
        self.keys = list(keys)
        self.stale = stale
        self.counter = 0
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, str], list[Any]] = {}
        self.old: dict[str, list[Any]] = {}

    def _value(self, process: int) -> str:
        with self.lock:
            self.counter += 1
            return f"{process}-{self.counter}"

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:
        key = rng.choice(self.keys)
        i = rng.randrange(len(self.urls))
        url, node = f"{self.urls[i]}/v1/kv/{key}", f"kv{i}"
        f = rng.choice(("read", "read", "write", "cas"))
        h = self.history
        if f == "read":
            op = h.invoke(process, "read", key, node=node)
            if self.stale and key in self.old and rng.random() < 0.3:
                h.complete(op, OK, self.old[key])  # the planted bug
                return
            try:
                r = http.get(url)
            except httpx.HTTPError as exc:
                classify(op, h, exc)
                return
            if r.status_code == 200:
                body = r.json()
                h.complete(op, OK, [body["value"], body["version"]])
                self._saw(process, key, [body["value"], body["version"]])
            elif r.status_code == 404:
                h.complete(op, OK, [None, 0])
            else:
                h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=r.text)
            return
        value = self._value(process)
        if f == "write":
            op = h.invoke(process, "write", key, value, node=node)
            body: dict[str, Any] = {"value": value}
        else:
            expected = self.seen.get((process, key), [None, 0])[1]
            op = h.invoke(process, "cas", key, [expected, value], node=node)
            body = {"value": value, "expected_version": expected}
        try:
            r = http.put(url, json=body)
        except httpx.HTTPError as exc:
            classify(op, h, exc)
            return
        if r.status_code == 200:
            version = r.json()["version"]
            h.complete(op, OK, version)
            self._saw(process, key, [value, version])
        elif r.status_code == 409 and f == "cas":
            found = (r.json().get("errors") or {}).get("found")
            h.complete(op, FAIL, found, error="409")
            if found is not None:
                self.seen[(process, key)] = [None, found]
        else:
            h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")

    def _saw(self, process: int, key: str, state: list[Any]) -> None:
        self.seen[(process, key)] = state
        with self.lock:
            if self.stale and (key not in self.old or rng_keep()):
                self.old[key] = state


def rng_keep() -> bool:  # the stale cache is refreshed now and then, so it lags
    return random.random() < 0.05


class KvTxns(Workload):
    """Transactions over 2-3 of a few keys (POST /v1/txn: checks of the versions this client last
    saw, then a set of each key), check-only txns (an atomic snapshot of versions) and single-key
    reads, through any of the kv services. Processes are numbered from `base`.

    `torn` plants a bug: the client applies a txn's sets as separate PUTs (each guarded by its
    key's check), pausing between them, and records them as one acknowledged txn (the checker
    must see the half-done state some reader observed)."""

    def __init__(self, history: History, urls: Sequence[str], keys: Sequence[str], clients: int = 2,
                 seed: int = 0, torn: bool = False, base: int = 100, **kw: Any) -> None:  # fmt: skip
        super().__init__(history, clients, seed, **kw)
        self.urls = list(urls)
        self.keys = list(keys)
        self.torn = torn
        self.base = base
        self.counter = 0
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, str], int] = {}

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:
        i = rng.randrange(len(self.urls))
        base, node = self.urls[i], f"kv{i}"
        p = self.base + process
        h = self.history
        f = rng.choice(("read", "txn", "txn", "snapshot"))
        if f == "read":
            key = rng.choice(self.keys)
            op = h.invoke(p, "read", key, node=node)
            try:
                r = http.get(f"{base}/v1/kv/{key}")
            except httpx.HTTPError as exc:
                classify(op, h, exc)
                return
            if r.status_code in (200, 404):
                state = [r.json()["value"], r.json()["version"]] if r.status_code == 200 else [None, 0]
                h.complete(op, OK, state)
                self.seen[(process, key)] = state[1]
            else:
                h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=r.text)
            return
        keys = sorted(rng.sample(self.keys, rng.choice((2, 3)) if len(self.keys) > 2 else 2))
        micro: list[list[Any]] = []
        for k in keys:
            if f == "snapshot" or rng.random() < 0.7:
                micro.append(["check", k, self.seen.get((process, k), 0)])
        if f == "txn":
            with self.lock:
                self.counter += 1
                n = self.counter
            micro += [["set", k, f"t{p}-{n}-{k.rsplit('/', 1)[-1]}"] for k in keys]
        if not micro:
            micro = [["check", keys[0], self.seen.get((process, keys[0]), 0)]]
        op = h.invoke(p, "txn", ",".join(keys), micro, node=node)
        if self.torn and f == "txn":
            self._torn(op, base, micro, http)
            return
        body = {"ops": [{"op": kind, "key": "/" + k, ("version" if kind == "check" else "value"): arg}
                        for kind, k, arg in micro]}  # fmt: skip
        try:
            r = http.post(f"{base}/v1/txn", json=body)
        except httpx.HTTPError as exc:
            classify(op, h, exc)
            return
        if r.status_code == 200:
            versions = r.json()["versions"]
            h.complete(op, OK, versions)
            for (_, k, _), v in zip(micro, versions, strict=True):
                self.seen[(process, k)] = v
        elif r.status_code == 409:
            err = r.json().get("errors") or {}
            found = [err["key"].lstrip("/"), err["found"]] if "key" in err and "found" in err else None
            h.complete(op, FAIL, found, error="409")
            if found is not None:
                self.seen[(process, found[0])] = found[1]
        else:
            h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")

    def _torn(self, op: Op, base: str, micro: list[list[Any]], http: httpx.Client) -> None:
        """The planted bug: one PUT per set, guarded by that key's check, a pause between."""
        checks = {k: v for kind, k, v in micro if kind == "check"}
        got: dict[str, int] = {}
        for kind, k, arg in micro:
            if kind != "set":
                continue
            body: dict[str, Any] = {"value": arg}
            if k in checks:
                body["expected_version"] = checks[k]
            try:
                r = http.put(f"{base}/v1/kv/{k}", json=body)
            except httpx.HTTPError as exc:
                classify(op, self.history, exc)
                return
            if r.status_code != 200:
                self.history.complete(op, UNKNOWN, error=f"torn: {r.status_code}")
                return
            got[k] = r.json()["version"]
            time.sleep(0.3)
        self.history.complete(op, OK, [checks[k] if kind == "check" else got[k] for kind, k, _ in micro])


def read_final_kv(
    urls: Sequence[str], keys: Sequence[str], timeout: float = 30.0
) -> dict[str, tuple[Any, int]]:
    """Each key's (value, version) after healing, from the first kv service that answers."""
    out = {}
    deadline = time.monotonic() + timeout
    for key in keys:
        while True:
            try:
                r = httpx.get(f"{urls[0]}/v1/kv/{key}", timeout=5)
                if r.status_code in (200, 404):
                    out[key] = (r.json()["value"], r.json()["version"]) if r.status_code == 200 else (None, 0)
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kv did not answer for {key} within {timeout} s after healing")
            urls = [*urls[1:], urls[0]]
            time.sleep(0.2)
    return out


class StateDocs(Workload):
    """Creates CIDR documents and renames the ones it made (one client per document), on any node."""

    def __init__(self, history: History, urls: Sequence[str], tag: str, clients: int = 3, seed: int = 0,
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(history, clients, seed, **kw)
        self.urls = list(urls)
        self.tag = tag
        self.mine: dict[int, list[str]] = {}
        self.n = 0
        self.lock = threading.Lock()
        self.octet = 10 + zlib.crc32(tag.encode()) % 200  # CIDRs must be unique across runs of one trio

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:
        i = rng.randrange(len(self.urls))
        base, node = self.urls[i], f"state{i}"
        h = self.history
        docs = self.mine.setdefault(process, [])
        with self.lock:
            self.n += 1
            n = self.n
        name = f"{self.tag}-{process}-{n}"
        if not docs or rng.random() < 0.4:
            cidr = f"10.{self.octet + process}.{n // 250}.{n % 250}/32"
            op = h.invoke(process, "create", "", name, node=node)
            try:
                r = http.post(base + "/cidrs/create", json={"cidr": cidr, "name": name, "owner": self.tag})
            except httpx.HTTPError as exc:
                classify(op, h, exc)
                return
            if r.status_code == 200:
                h.complete(op, OK, r.json()["cidr_id"])
                docs.append(r.json()["cidr_id"])
            else:
                h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")
            return
        doc = rng.choice(docs)
        op = h.invoke(process, "update", doc, name, node=node)
        try:
            r = http.post(base + "/cidrs/update", json={"id": doc, "name": name})
        except httpx.HTTPError as exc:
            classify(op, h, exc)
            return
        if r.status_code == 200:
            h.complete(op, OK)
        else:
            h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")


def state_listings(urls: Sequence[str], owner: str) -> dict[str, dict[str, list[dict]]]:
    """Each node's listing of the CIDRs of one run (by owner), as clients see them."""
    out = {}
    for i, u in enumerate(urls):
        r = httpx.get(u + "/cidrs", params={"owner": owner, "limit": 1000}, timeout=10)
        r.raise_for_status()
        out[f"state{i}"] = {"cidrs": r.json()["cidrs"]}
    return out


def wait_equal(urls: Sequence[str], owner: str, timeout: float = 30.0) -> dict[str, dict[str, list[dict]]]:
    """Poll the listings until every node answers the same (or `timeout`: the last answers)."""
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, list[dict]]] = {}
    while time.monotonic() < deadline:
        try:
            last = state_listings(urls, owner)
            if all(v == next(iter(last.values())) for v in last.values()):
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return last


class Video(Workload):
    """Process 0 uploads copies of a test video one after another; the others play every
    acknowledged upload again and again, recording the sha256 of the bytes played."""

    def __init__(self, history: History, uploader_url: str, metadata_url: str, video: Path, clients: int = 2,
                 seed: int = 0, upload_timeout: float = 60.0, play_timeout: float = 30.0,
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(history, clients, seed, **kw)
        self.uploader_url = uploader_url
        self.metadata_url = metadata_url
        self.video = video
        self.upload_timeout = upload_timeout
        self.play_timeout = play_timeout
        self.acked: list[str] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="shoal-plays-"))

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:
        if process == 0:
            self.upload(http)
        elif self.acked:
            play(
                self.history,
                process,
                rng.choice(self.acked),
                self.metadata_url,
                self.scratch,
                self.play_timeout,
            )
        else:
            time.sleep(0.2)

    def upload(self, http: httpx.Client) -> None:
        h = self.history
        op = h.invoke(0, "upload", "", self.video.name, node="uploader")
        try:
            with open(self.video, "rb") as f:
                r = http.post(self.uploader_url + "/upload", data={"title": "jepsen"},
                              files={"video": (self.video.name, f, "video/mp4")}, timeout=20)  # fmt: skip
        except httpx.HTTPError as exc:
            classify(op, h, exc)
            return
        if r.status_code != 202 and r.status_code != 200:
            h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")
            return
        body = r.json()
        video_id, session = body["video_id"], body["upload_session_id"]
        op.key = video_id
        deadline = time.monotonic() + self.upload_timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            try:
                st = http.get(f"{self.uploader_url}/upload/status/{session}", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.3)
                continue
            if st["status"] == "completed":
                h.complete(op, OK, video_id)
                self.acked.append(video_id)
                return
            if st["status"] == "failed":
                h.complete(op, FAIL, video_id, error=str(st.get("error")))
                return
            time.sleep(0.2)
        h.complete(op, UNKNOWN, video_id, error="no final status in time")


def play(history: History, process: int, video_id: str, metadata_url: str, scratch: Path, timeout: float,
         node: str = "", manifest: dict | None = None) -> Op:  # fmt: skip
    """Play one video with the smart client into a file; ok (with the bytes' sha256) only if the
    player finished without an error. `manifest` plays that manifest instead of asking metadata."""
    from shoal.client import Player
    from shoal.testing.cluster.checkers import sha256

    op = history.invoke(process, "play", video_id, node=node)
    out = scratch / f"{video_id}-{op.index}.mp4"

    async def go() -> None:
        p = Player(video_id, metadata_url=metadata_url, manifest=manifest, output=str(out), speed=50.0, record_view=False,
                   start_sec=1.0, refill_sec=1.0, target_sec=30.0, ping_interval=1.0)  # fmt: skip
        await asyncio.wait_for(p.play(), timeout)

    try:
        asyncio.run(go())
    except Exception as exc:
        return history.complete(op, FAIL, error=f"{type(exc).__name__}: {exc}")
    data = out.read_bytes()
    out.unlink()
    return history.complete(op, OK, sha256(data))


COMPUTE_API = "/api/v1/compute"
COMPUTE_TOKEN = "cluster-token"  # the compute nodes' --token


class ComputeCreates(Workload):
    """Creates instances with names the client picks, through either compute node. Some names are
    new; some are a name just tried (by anyone: a race on one name across nodes); after an
    `unknown` create the client retries the same name on the other node, as a real client would.

    `double` plants a bug: after an acknowledged create, the client also writes a second record
    of that name straight into the registry (`double(name)`), as a node that skipped the name
    claim would; the "no instance created twice" check must catch it."""

    def __init__(self, history: History, urls: Sequence[str], tag: str, clients: int = 3, seed: int = 0,
                 double: Callable[[str], None] | None = None, **kw: Any) -> None:  # fmt: skip
        kw.setdefault("timeout", 5.0)
        kw.setdefault("pace", 0.15)
        super().__init__(history, clients, seed, **kw)
        self.urls = list(urls)
        self.tag = tag
        self.double = double
        self.lock = threading.Lock()
        self.n = 0
        self.recent: list[str] = []
        self.retry: dict[int, tuple[str, int]] = {}  # process -> (name, node index) to retry elsewhere
        self.doubled: list[str] = []

    def one(self, process: int, rng: random.Random, http: httpx.Client) -> None:
        h = self.history
        if process in self.retry:
            name, last = self.retry.pop(process)
            i = (last + 1) % len(self.urls)
        else:
            i = rng.randrange(len(self.urls))
            with self.lock:
                if self.recent and rng.random() < 0.3:
                    name = rng.choice(self.recent[-4:])
                else:
                    self.n += 1
                    name = f"{self.tag}-{self.n}"
                    self.recent.append(name)
        op = h.invoke(process, "create", name, name, node=f"compute{i}")
        body = {"name": name, "backend": "kvm", "config": {"image": "tiny"}, "start": False}
        try:
            r = http.post(self.urls[i] + COMPUTE_API + "/instances", json=body,
                          headers={"Authorization": f"Bearer {COMPUTE_TOKEN}"})  # fmt: skip
        except httpx.HTTPError as exc:
            classify(op, h, exc)
            if op.outcome == UNKNOWN:
                self.retry[process] = (name, i)
            return
        if r.status_code == 201:
            inst = r.json()
            h.complete(op, OK, {"id": inst["id"], "node": (inst.get("node") or {}).get("id")})
            if self.double is not None and len(self.doubled) < 3:
                self.double(name)  # the planted bug
                self.doubled.append(name)
        elif r.status_code == 409:
            h.complete(op, FAIL, error=f"409 {r.text[:200]}")
        else:
            h.complete(op, UNKNOWN if r.status_code >= 500 else FAIL, error=f"{r.status_code} {r.text}")
            if op.outcome == UNKNOWN:
                self.retry[process] = (name, i)


def compute_listings(urls: Sequence[str], timeout: float = 30.0) -> dict[str, list[dict]]:
    """Every instance each compute node lists after healing, all pages (retried until it answers)."""
    deadline = time.monotonic() + timeout
    out: dict[str, list[dict]] = {}
    auth = {"Authorization": f"Bearer {COMPUTE_TOKEN}"}
    for i, u in enumerate(urls):
        while True:
            try:
                got: list[dict] = []
                page = 1
                while True:
                    r = httpx.get(u + COMPUTE_API + "/instances", params={"pageSize": 1000, "page": page},
                                  timeout=10, headers=auth)  # fmt: skip
                    r.raise_for_status()
                    body = r.json()
                    got += body["instances"]
                    if len(got) >= body["total"] or not body["instances"]:
                        break
                    page += 1
                out[f"compute{i}"] = got
                break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"compute{i} did not list instances within {timeout} s after healing")
            time.sleep(0.3)
    return out


def run_for(seconds: float, workloads: Sequence[Workload], during: Callable[[float], None]) -> None:
    """Start the workloads, call during(t0) (the nemesis, blocking) and wait out `seconds`."""
    t0 = time.monotonic()
    for w in workloads:
        w.start()
    try:
        during(t0)
        rest = t0 + seconds - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    finally:
        for w in workloads:
            w.stop()
