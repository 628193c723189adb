"""`shoal demo`: one video through the whole platform a running `shoal up` serves.

1. check the services answer (URLs from the same layout, --port-offset and --config as `shoal up`),
   and start and stop a busybox container through the Compute API (skipped, saying why, when
   compute or its docker backend is not available)
2. generate a test video with FFmpeg (testsrc + a tone, H.264 at ~4 Mbit/s)
3. upload it through the uploader, with a progress bar (chunked to fMP4, spread over the nodes)
4. register the storage nodes in the State Service as `nodes` (with the platform's API key, or
   --admin-key, or none in insecure-dev)
5. play it with the smart client inside the dashboard service, on an accelerated clock
6. check the played stream: byte-exact against FFmpeg's remux of the source, decodes cleanly
7. print the dashboard URL and the playback figures (startup latency, rebuffers, throughput)

With --proxy-url every request goes through a reverse proxy with the layout's path prefixes
(shoal.platform.nginx); chunks still come straight from the storage nodes the metadata service names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from shoal.platform.layout import Child, ConfigError, layout
from shoal.platform.up import add_layout_arguments, settings_from_args
from shoal.web.auth import BearerAuth
from shoal.web.tls import client_verify


class DemoError(Exception):
    """A step failed; the message says which and what to do."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_layout_arguments(p)
    p.add_argument("--proxy-url", default=None, help="go through this reverse proxy (path prefixes)")
    p.add_argument("--seconds", type=float, default=8.0, help="test video length (default 8 s)")
    p.add_argument("--size", default="1280x720", help="test video frame size (default 1280x720)")
    p.add_argument("--bitrate", default="4M", help="test video bitrate (default 4M)")
    p.add_argument(
        "--redundancy",
        choices=["replication", "erasure_coding"],
        default=None,
        help="force a mode (default: the metadata service's recommendation, replication for a new video)",
    )
    p.add_argument("--speed", type=float, default=8.0, help="playback clock speed (default 8x)")
    p.add_argument(
        "--admin-key",
        default=os.environ.get("SHOAL_ADMIN_KEY"),
        help="private key of the State Service's --admin-address (default $SHOAL_ADMIN_KEY); "
        "not needed with an admin --api-key (the State Service under `shoal up` takes the "
        "platform's keys) or in insecure-dev mode",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("SHOAL_API_KEY"),
        help="API key for services started with --auth-dir (default $SHOAL_API_KEY, else "
        "DATA_ROOT/auth/admin.key when `shoal up` created one)",
    )
    p.add_argument(
        "--tls-ca", default=None, help="CA certificate (PEM) the services' HTTPS is verified against"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON here")


@dataclass
class Urls:
    state: str | None
    metadata: str
    uploader: str
    dashboard: str | None
    storage: list[Child] = field(default_factory=list)
    compute: str | None = None


def urls_for(children: list[Child], proxy: str | None) -> Urls:
    by_service: dict[str, list[Child]] = {}
    for c in children:
        by_service.setdefault(c.service, []).append(c)

    def url(c: Child) -> str:
        return proxy.rstrip("/") + c.prefix if proxy else c.url

    def one(name: str) -> str | None:
        return url(by_service[name][0]) if name in by_service else None

    metadata, uploader = one("metadata"), one("uploader")
    if metadata is None or uploader is None:
        raise DemoError("the layout has no metadata service or no uploader: the demo needs both")
    return Urls(
        one("state"), metadata, uploader, one("dashboard"), by_service.get("storage", []), one("compute")
    )


class Out:
    """Step headers and one status line redrawn in place (a line per update when not a terminal)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, n: int, text: str) -> None:
        print(f"\n[{n}/7] {text}", file=self.stream, flush=True)

    def say(self, text: str) -> None:
        print(f"      {text}", file=self.stream, flush=True)

    def line(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r      " + text.ljust(90) + ("\n" if final else ""))
        else:
            self.stream.write(f"      {text}\n")
        self.stream.flush()


# -- 1. services ----------------------------------------------------------------------------------


def check_services(http: httpx.Client, urls: Urls, need_nodes: int, out: Out, wait: float = 60.0) -> int:
    for name, url in (("metadata", urls.metadata), ("uploader", urls.uploader), ("state", urls.state)):
        if url is None:
            continue
        try:
            r = http.get(url + "/health")
        except httpx.HTTPError as exc:
            raise DemoError(
                f"{name} at {url} does not answer ({type(exc).__name__}): is `shoal up` running, "
                "with the same --port-offset / --config?"
            ) from None
        if r.status_code != 200:
            raise DemoError(f"{name} at {url} is not healthy: {r.status_code} {r.text[:200]}")
        out.say(f"{name:<9} {url:<36} healthy")
    deadline = time.monotonic() + wait
    while True:
        healthy = http.get(urls.metadata + "/nodes/healthy").json()
        if len(healthy) >= need_nodes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if len(healthy) < need_nodes:
        raise DemoError(f"only {len(healthy)} healthy storage node(s); the demo needs {need_nodes}")
    out.say(f"{len(healthy)} storage nodes registered and healthy")
    return len(healthy)


COMPUTE_IMAGE = "shoal-busybox:latest"  # what `shoal up` imports into its private dockerd
COMPUTE_API = "/api/v1/compute"


def compute_container(http: httpx.Client, url: str | None, out: Out) -> dict[str, Any]:
    """Start and stop a busybox container through the Compute API, and remove it.

    Skipped (said so, not a failure) when the layout has no compute, compute does not answer or
    refuses our key, or its docker backend is unavailable (no dockerd: `shoal up
    --no-private-daemons`); any other refusal fails the demo, as a broken compute should."""

    def skip(why: str) -> dict[str, Any]:
        out.say(f"{'compute':<9} {url or '-':<36} container step skipped: {why}")
        return {"skipped": why}

    if url is None:
        return skip("no compute service in this layout")
    base = url + COMPUTE_API
    try:
        status = http.get(base + "/cluster/status")
    except httpx.HTTPError as exc:
        return skip(f"compute does not answer ({type(exc).__name__})")
    if status.status_code in (401, 403):
        return skip(f"compute refused our credentials ({status.status_code}); pass an operator --api-key")
    if status.status_code != 200:
        return skip(f"cluster status answered {status.status_code}")
    docker = (status.json().get("backends") or {}).get("docker") or {}
    if docker.get("status") != "healthy":
        return skip(f"the docker backend is unavailable ({docker.get('reason') or docker.get('status')})")
    body = {
        "name": f"shoal-demo-{os.getpid()}-{int(time.time())}",
        "backend": "docker",
        "config": {"image": COMPUTE_IMAGE, "command": ["sleep", "600"]},
        "metadata": {"labels": {"app": "shoal-demo"}},
    }
    r = http.post(base + "/instances", json=body)
    code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
    if code == "BACKEND_UNAVAILABLE" or (r.status_code == 400 and "no image" in r.text):
        return skip(f"docker cannot run {COMPUTE_IMAGE}: {r.json()['error']['message']}")
    if r.status_code != 201:
        raise DemoError(f"compute did not create a container: {r.status_code} {r.text[:300]}")
    inst = r.json()
    states = [inst["state"]]
    try:
        out.say(f"{'compute':<9} {url:<36} container {inst['id']} ({COMPUTE_IMAGE}) {inst['state']}")
        r = http.put(f"{base}/instances/{inst['id']}/stop", json={"force": True})
        if r.status_code != 200:
            raise DemoError(f"compute did not stop container {inst['id']}: {r.status_code} {r.text[:300]}")
        states.append(r.json()["state"])
        out.say(f"{'':<9} {'':<36} container {inst['id']} {states[-1]}")
    finally:
        r = http.delete(f"{base}/instances/{inst['id']}", params={"force": "true"})
        removed = r.status_code in (204, 404)
    out.say(
        f"{'':<9} {'':<36} container {inst['id']} "
        + ("removed" if removed else f"NOT removed ({r.status_code})")
    )
    if states != ["running", "stopped"]:
        raise DemoError(f"container {inst['id']} went {' -> '.join(states)}, not running -> stopped")
    return {"id": inst["id"], "name": inst["name"], "states": states, "removed": removed}


# -- 2. test video --------------------------------------------------------------------------------


def make_test_video(path: Path, seconds: float, size: str, bitrate: str) -> Path:
    """FFmpeg testsrc with a 440 Hz tone, x264 CBR (filler data keeps the bitrate real)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DemoError("FFmpeg is not installed (Debian: apt-get install ffmpeg)")
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    args = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30"]
    args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", f"{seconds:g}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60"]
    args += ["-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    args += ["-x264-params", "nal-hrd=cbr", "-c:a", "aac", "-shortest", str(tmp)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise DemoError(f"ffmpeg failed: {done.stderr.strip()[-500:]}")
    tmp.rename(path)
    return path


# -- 3. upload ------------------------------------------------------------------------------------


class _Counting:
    """A file that reports how much httpx has read from it (the upload's progress)."""

    def __init__(self, path: Path, on_read: Any) -> None:
        self.f = open(path, "rb")  # closed by upload()
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.on_read(len(data))
        return data

    def fileno(self) -> int:  # lets httpx send a Content-Length
        return self.f.fileno()

    def seek(self, *a: Any) -> int:
        return self.f.seek(*a)

    def tell(self) -> int:
        return self.f.tell()


def upload(http: httpx.Client, uploader: str, path: Path, redundancy: str | None, out: Out) -> dict:
    from shoal.uploader.cli import Progress

    bar = Progress(out.stream, quiet=False)
    size = path.stat().st_size
    sent = 0

    def on_read(n: int) -> None:
        nonlocal sent
        sent += n
        bar.show("uploading", min(10, sent * 10 // max(size, 1)), f"({sent / 1e6:.1f}/{size / 1e6:.1f} MB)")

    data = {"title": f"shoal demo: {path.name}"}
    if redundancy:
        data["redundancy_mode"] = redundancy
    body = _Counting(path, on_read)
    try:
        r = http.post(
            uploader + "/upload",
            data=data,
            files={"video": (path.name, body, "video/mp4")},
            timeout=httpx.Timeout(600.0, connect=5.0),
        )
    finally:
        body.f.close()
    if r.status_code != 200:
        raise DemoError(f"upload refused: {r.status_code} {r.text[:300]}")
    answer = r.json()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        st = http.get(uploader + answer["status_url"]).json()
        total = st.get("total_chunks")
        detail = f"({st.get('chunks_uploaded', 0)}/{total} chunks)" if total else ""
        bar.show(st["status"], st["progress"], detail)
        if st["status"] == "completed":
            return st
        if st["status"] == "failed":
            raise DemoError(f"upload failed: {st.get('error')}")
        time.sleep(0.2)
    raise DemoError("the upload did not finish within 10 minutes")


# -- 4. State Service nodes -----------------------------------------------------------------------


async def register_nodes(
    state_url: str,
    storage: list[Child],
    key_dir: Path,
    admin_key: str | None,
    api_key: str | None = None,
) -> list[dict]:
    """Each storage node becomes a `nodes` entry (same name, endpoint host:port), operated by a
    `shoal-demo` service peer. Keys live in key_dir, so a second run updates instead of adding.

    Credentials when the State Service has authentication: --admin-key (an Ethereum admin,
    signed in) if given, else the platform API key (`shoal up` passes the State Service its
    --auth-dir, so the admin key in DATA_ROOT/auth/admin.key is a State admin)."""
    from shoal.state.client import StateApiError, StateClient

    async with StateClient(state_url) as probe:
        auth = (await probe.status()).auth
    if auth == "enabled" and not admin_key and not api_key:
        raise DemoError(
            "the State Service has authentication on: pass --api-key (an admin or operator key of "
            "the platform's auth dir; `shoal up` leaves one in DATA_ROOT/auth/admin.key) or "
            "--admin-key (the private key of the `shoal up --admin-address` account, or set "
            "SHOAL_ADMIN_KEY)"
        )
    account = admin_key if auth == "enabled" else None
    token = api_key if auth == "enabled" and account is None else None
    try:
        return await _register(state_url, storage, key_dir, account, token)
    except StateApiError as exc:
        if token is not None and exc.status in (401, 403):
            raise DemoError(
                f"the State Service refused the API key ({exc}): it needs an admin or operator key, "
                "and the State Service must run with --auth-dir (as `shoal up` starts it); or pass "
                "--admin-key"
            ) from None
        raise


async def _register(
    state_url: str, storage: list[Child], key_dir: Path, account: str | None, token: str | None
) -> list[dict]:
    from shoal.state.auth.node_identity import NodeIdentity
    from shoal.state.client import StateClient

    async with StateClient(state_url, account=account, token=token) as state:
        if account is not None:
            await state.login()
        operator = NodeIdentity.load_or_create(key_dir / "operator")
        peers = await state.list_peers(public_key=operator.public_key)
        if peers.items:
            peer_id = peers.items[0].id
        else:
            peer_id = (await state.create_peer("shoal-demo", operator.public_key, "service")).id
        cpus, mem_mib, disk_gb = _machine()
        rows = []
        for c in storage:
            identity = NodeIdentity.load_or_create(key_dir / c.name)
            endpoint = c.url.removeprefix("http://")
            fields = {
                "name": c.name,
                "endpoint": endpoint,
                "total_vcpus": cpus,
                "total_memory_mib": mem_mib,
                "total_disk_gb": disk_gb,
                "operator_id": peer_id,
                "state": "online",
            }
            found = await state.list_nodes(public_key=identity.public_key)
            if found.items:
                node_id = found.items[0].id
                await state.update_node(node_id, **fields)
                action = "updated"
            else:
                node_id = (await state.create_node(public_key=identity.public_key, **fields)).id
                action = "created"
            rows.append({"id": node_id, "name": c.name, "endpoint": endpoint, "action": action})
        return rows


def _machine() -> tuple[int, int, int]:
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    except (OSError, StopIteration, ValueError):
        mem_kib = 1 << 20
    disk = shutil.disk_usage(".").total
    return cpus, max(1, mem_kib // 1024), max(1, disk // 10**9)


# -- 5. play --------------------------------------------------------------------------------------


def play_in_dashboard(
    http: httpx.Client, dashboard: str, video_id: str, speed: float, out: Out
) -> tuple[dict, list[bytes]]:
    r = http.post(dashboard + "/api/play", json={"video_id": video_id, "speed": speed})
    if r.status_code != 200:
        raise DemoError(f"the dashboard refused to play: {r.status_code} {r.text[:300]}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        st = http.get(dashboard + "/api/status").json()
        stream = http.get(dashboard + "/api/stream").json()
        if st.get("error"):
            raise DemoError(f"playback failed: {st['error']}")
        b = st["buffer"]
        out.line(
            f"{b['state']:<10} {b['position_sec']:5.1f}/{b['duration_sec']:.1f} s  buffer {b['buffer_level_sec']:4.1f} s"
            f"  chunks {stream['available']}/{stream['total_chunks']}  rebuffers {st['buffer_stats']['rebuffering_events']}",
            final=stream["finished"],
        )
        if stream["finished"]:
            break
        time.sleep(0.25)
    else:
        raise DemoError("playback did not finish within 5 minutes")
    perf = http.get(dashboard + "/api/performance").json()
    if stream["first_kept"] != 0:
        raise DemoError("the dashboard no longer holds the first segments; cannot check the stream")
    segments = []
    for n in range(stream["total_chunks"]):
        seg = http.get(f"{dashboard}/api/segment/{n}")
        if seg.status_code != 200:
            raise DemoError(f"segment {n}: {seg.status_code} {seg.text[:200]}")
        segments.append(seg.content)
    return perf, segments


async def play_here(
    metadata: str, video_id: str, speed: float, out_path: Path, api_key: str | None = None
) -> dict:
    """Without a dashboard in the layout: the same smart client, in this process."""
    from shoal.client.session import Player

    return await Player(video_id, metadata, speed=speed, output=str(out_path), api_key=api_key).play()


# -- 6. integrity ---------------------------------------------------------------------------------


def verify(source: Path, played: Path, work: Path) -> dict:
    from shoal.uploader.media import decode_errors, remux

    reference = work / f"{source.stem}.remux.mp4"
    asyncio.run(remux(source, reference))  # what the uploader stores: the same FFmpeg remux
    return {
        "byte_exact": reference.read_bytes() == played.read_bytes(),
        "reference_bytes": reference.stat().st_size,
        "played_bytes": played.stat().st_size,
        "decode_errors": asyncio.run(decode_errors(played)),
    }


# -- the command ----------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace, stream: IO[str] = sys.stdout) -> int:
    out = Out(stream)
    try:
        result = demo(args, out)
    except (DemoError, ConfigError) as exc:
        print(f"\nshoal demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["integrity"]["byte_exact"] and not result["integrity"]["decode_errors"] else 1


def api_key_for(args: argparse.Namespace, data_root: str | Path) -> str | None:
    """--api-key / $SHOAL_API_KEY, else the admin key `shoal up` (`shoal auth init`) left in
    DATA_ROOT/auth/admin.key; None when the services run without auth."""
    if getattr(args, "api_key", None):
        return args.api_key
    path = Path(data_root) / "auth" / "admin.key"
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DemoError(f"cannot read the admin key {path}: {exc} (pass --api-key)") from None


def demo(args: argparse.Namespace, out: Out) -> dict:
    settings = settings_from_args(args)
    children, _ = layout(settings, check_built=False)
    urls = urls_for(children, args.proxy_url)
    work = Path(settings.data_root) / "demo"
    need = 5 if args.redundancy == "erasure_coding" else 3
    key = api_key_for(args, settings.data_root)
    auth = BearerAuth(key) if key else None
    with httpx.Client(timeout=30.0, auth=auth, verify=client_verify(getattr(args, "tls_ca", None))) as http:
        out.step(1, "services" + (f" (through {args.proxy_url})" if args.proxy_url else ""))
        check_services(http, urls, need, out)
        compute = compute_container(http, urls.compute, out)

        out.step(2, f"test video: {args.seconds:g} s of FFmpeg testsrc, {args.size}, ~{args.bitrate}bit/s")
        source = make_test_video(
            work / f"testsrc-{args.size}-{args.bitrate}-{args.seconds:g}s.mp4",
            args.seconds,
            args.size,
            args.bitrate,
        )
        out.say(f"{source} ({source.stat().st_size / 1e6:.1f} MB)")

        out.step(3, f"upload through {urls.uploader}")
        st = upload(http, urls.uploader, source, args.redundancy, out)
        video_id = st["video_id"]
        out.say(
            f"video {video_id}: {st['total_chunks']} chunks, {st['redundancy_mode']}, remux {st.get('remux')}"
        )

        out.step(4, "storage nodes in the State Service")
        nodes: list[dict] = []
        if urls.state is None:
            out.say("no State Service in this layout: skipped")
        else:
            nodes = asyncio.run(register_nodes(urls.state, urls.storage, work / "keys", args.admin_key, key))
            for n in nodes:
                out.say(f"{n['name']:<10} {n['endpoint']:<18} {n['id']} ({n['action']})")

        out.step(5, f"play with the smart client at {args.speed:g}x")
        played = work / f"played-{video_id}.mp4"
        if urls.dashboard:
            perf, segments = play_in_dashboard(http, urls.dashboard, video_id, args.speed, out)
            played.write_bytes(b"".join(segments))
        else:
            out.say("no dashboard in this layout: playing in this process")
            perf = asyncio.run(play_here(urls.metadata, video_id, args.speed, played, key))

        out.step(6, "integrity of the played stream")
        integrity = verify(source, played, work)
        exact = "byte-exact" if integrity["byte_exact"] else "DIFFERENT"
        out.say(
            f"{exact}: {integrity['played_bytes']} bytes played vs {integrity['reference_bytes']} in FFmpeg's remux"
        )
        out.say(
            "decodes without errors"
            if not integrity["decode_errors"]
            else f"DECODE ERRORS: {integrity['decode_errors'][:300]}"
        )

        out.step(7, "results")
        startup = perf.get("startup_latency_sec")
        out.say(
            f"startup latency   {startup * 1000:.0f} ms" if startup is not None else "startup latency   -"
        )
        out.say(f"rebuffers         {perf['rebuffering_events']} ({perf['total_stall_sec']:.2f} s stalled)")
        out.say(f"throughput        {perf['average_throughput_mbps']:.1f} Mbit/s average per chunk download")
        out.say(
            f"chunks played     {perf['chunks_played']}, download success {perf['download_success_rate'] * 100:.0f}%, failovers {perf['failover_count']}"
        )
        if urls.dashboard:
            out.say(f"dashboard         {urls.dashboard}/   (open it to watch the video and its charts)")
        out.say(f"played stream     {played}")
    return {
        "video_id": video_id,
        "source": str(source),
        "played": str(played),
        "upload": st,
        "nodes": nodes,
        "performance": perf,
        "integrity": integrity,
        "dashboard": urls.dashboard,
        "compute": compute,
    }
