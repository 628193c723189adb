"""`shoal up`: the whole platform on one machine, supervised; `shoal status`: its health.

Each process of the layout (shoal.platform.layout: State Service, kv, metadata, five storage nodes,
uploader, dashboard, Compute API, State Manager) runs as its own `shoal serve` with data under
DATA_ROOT/<name> and its log in DATA_ROOT/logs/<name>.log. A process that exits on its own is
restarted with backoff (1 s doubling to 30 s, back to 1 s once it has run for a minute). A process
that runs but stops answering (deadlock, SIGSTOP) is caught by liveness probes (`GET /health`,
shoal.platform.layout.Liveness): after its start grace, N failed probes in a row kill its process group
and it goes through the same restart path. When every service answers /health (and the storage
nodes have registered) one summary of URLs is printed, ending with the line `shoal up: ready`.
Ctrl-C or SIGTERM stops everything (SIGTERM first so in-flight requests finish; a second Ctrl-C
kills at once); nothing is restarted or probed once stopping has begun. A `shoal up` killed
with SIGKILL takes its services with it: each gets SIGTERM from the kernel (PR_SET_PDEATHSIG,
shoal.runtime.lifetime) and its workers follow it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from shoal.platform.layout import Child, ConfigError, Settings, layout, load_config, settings_from
from shoal.runtime.lifetime import child_options
from shoal.web.auth import AuthDir, AuthDirError

READY_TIMEOUT = 120.0  # 13 Python processes start in ~20 s on 2 busy cores; leave room
STABLE_AFTER = 60.0  # a process that ran this long before exiting restarts after 1 s again
MAX_BACKOFF = 30.0
FIRST = ("metadata",)  # started before the others, which need it at start-up
FIRST_WAIT = 30.0
STARTUP_PROBE = 0.25  # until a (re)started process first answers, probe this often (readiness)


def add_layout_arguments(p: argparse.ArgumentParser) -> None:
    """Flags every layout-aware command takes (up, status, demo): they must agree on the URLs."""
    p.add_argument("--config", default=None, help="layout file, TOML or JSON (docs/deploy.md)")
    p.add_argument("--data-root", default=None, help="data of service S goes to DATA_ROOT/S (./shoal-data)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port-offset", type=int, default=None, help="add to every port (run two side by side)")


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    add_layout_arguments(p)
    p.add_argument("--only", default=None, help="comma-separated services to run (default: all built)")
    p.add_argument(
        "--admin-address",
        default=None,
        help="State Service admin (Ethereum address), beside the platform's admin key; with --no-auth and "
        "without it the State Service runs --insecure-dev",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="reverse proxies every service trusts for X-Forwarded-* (e.g. 127.0.0.1 for a local nginx)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="run every service without credentials (loopback development only; default: DATA_ROOT/auth)",
    )
    p.add_argument(
        "--no-private-daemons",
        action="store_true",
        help="do not start a private dockerd and libvirtd for compute (use the flags in its args instead)",
    )
    p.add_argument("--verbose", action="store_true", help="service logs on this terminal, not in log files")
    p.add_argument("--nginx-config", action="store_true", help="print an nginx config for this layout, exit")
    p.add_argument("--nginx-listen", default="127.0.0.1:8000", help="with --nginx-config: nginx's address")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    add_layout_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def settings_from_args(args: argparse.Namespace) -> Settings:
    config = load_config(args.config) if getattr(args, "config", None) else {}
    flags = {
        k: getattr(args, k, None)
        for k in ("data_root", "host", "port_offset", "only", "admin_address", "forwarded_allow_ips")
    }
    if getattr(args, "no_auth", False):
        flags["auth"] = False
    return settings_from(config, **flags)


# -- supervision ----------------------------------------------------------------------------------


@dataclass
class Proc:
    child: Child
    log_path: Path | None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 1.0
    healthy: bool = False  # the last probe got a 200
    held: bool = False  # not started yet: waits for the services started first
    answered: bool = False  # has answered /health since its last (re)start
    probe: Future | None = None  # the liveness probe in flight
    probe_started: float = 0.0
    next_probe: float = 0.0
    failures: int = 0  # liveness probes failed in a row, after the start grace
    kill_reason: str | None = None  # set while a hung process is being killed
    kill_deadline: float = 0.0  # then SIGKILL
    last_reason: str | None = None  # why it was last restarted
    last_restart_at: str | None = None  # when (UTC, ISO 8601)

    @property
    def name(self) -> str:
        return self.child.name


class Supervisor:
    def __init__(self, settings: Settings, children: list[Child], verbose: bool, out: IO[str]) -> None:
        self.settings = settings
        self.root = Path(settings.data_root)
        self.log_dir = None if verbose else self.root / "logs"
        self.procs = [
            Proc(c, None if self.log_dir is None else self.log_dir / f"{c.name}.log") for c in children
        ]
        self.out = out
        self.http = httpx.Client(timeout=2.0, headers=admin_headers(settings))
        # a thread per probe in flight (and room for probes of killed processes still timing out):
        # a hung service's timeout never delays the others' probes
        self.probes = ThreadPoolExecutor(max_workers=2 * len(children) + 1, thread_name_prefix="liveness")
        self.layout_flags = ""  # what `shoal demo` / `shoal status` need to find this layout

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self, p: Proc) -> None:
        c = p.child
        Path(c.data_dir).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "shoal", "serve", c.service, "--host", self.settings.host]
        cmd += ["--port", str(c.port), "--data-dir", c.data_dir, *c.args]
        if p.log_path is None:
            p.proc = subprocess.Popen(cmd, **child_options())
        else:
            p.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(p.log_path, "ab") as log:  # the child keeps its own descriptor
                p.proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    **child_options(),  # its own group (killed whole), and it dies with `shoal up`
                )
        p.started = time.monotonic()
        p.healthy = p.answered = False
        p.probe, p.failures, p.next_probe = None, 0, p.started  # a probe of the old process is dropped
        self.write_state()

    def write_state(self) -> None:
        """DATA_ROOT/up.json: who runs where (pids, URLs, logs), for people and tests."""
        state = {
            "pid": os.getpid(),
            "port_offset": self.settings.port_offset,
            "services": [
                {
                    "name": p.name,
                    "service": p.child.service,
                    "url": p.child.url,
                    "prefix": p.child.prefix,
                    "pid": p.proc.pid if p.proc else None,
                    "restarts": p.restarts,
                    "last_reason": p.last_reason,
                    "last_restart_at": p.last_restart_at,
                    "log": str(p.log_path) if p.log_path else None,
                }
                for p in self.procs
            ],
        }
        tmp = self.root / "up.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.root / "up.json")

    def check_exits(self, now: float) -> None:
        """Restart what exited (on its own, or killed by a failed liveness) after its backoff."""
        for p in self.procs:
            if p.held:
                continue
            if p.proc is not None and p.kill_reason and p.proc.poll() is None and now >= p.kill_deadline:
                self.say(
                    f"shoal up: {p.name} did not stop {p.child.liveness.kill_timeout:g} s after SIGTERM; "
                    "SIGKILL to its process group"
                )
                _signal_group(p.proc.pid, signal.SIGKILL)
                p.kill_deadline = float("inf")  # once
            if p.proc is not None and p.proc.poll() is not None:
                code, ran = p.proc.returncode, now - p.started
                killed = p.kill_reason
                _signal_group(p.proc.pid, signal.SIGKILL)  # workers that outlived it would hold the port
                p.proc, p.probe, p.kill_reason = None, None, None
                p.healthy = False
                p.last_reason = killed or f"exited with {code}"
                p.last_restart_at = datetime.now(UTC).isoformat(timespec="seconds")
                if ran >= STABLE_AFTER:
                    p.backoff = 1.0
                p.next_start = now + p.backoff
                where = f"; log: {p.log_path}" if p.log_path else ""
                why = f" (killed: {killed})" if killed else ""
                self.say(
                    f"shoal up: {p.name} exited with {code} after {ran:.0f} s{why}; "
                    f"restarting in {p.backoff:.0f} s{where}"
                )
                for line in _tail(p.log_path, 3):
                    self.say(f"    {line}")
                p.backoff = min(p.backoff * 2, MAX_BACKOFF)
                self.write_state()
            elif p.proc is None and now >= p.next_start:
                p.restarts += 1
                self.start(p)

    def check_liveness(self, now: float) -> None:
        """Probe every running process; one that keeps failing after its grace is killed."""
        for p in self.procs:
            if p.held or p.proc is None or p.kill_reason:
                continue
            live = p.child.liveness
            if p.probe is not None:
                if not p.probe.done():
                    continue
                try:
                    reason = p.probe.result()
                except Exception as exc:  # a bug in a probe must not stop the supervisor
                    reason = f"{type(exc).__name__}: {exc}"
                p.probe = None
                self.probed(p, reason, now)
                if p.kill_reason:
                    continue
            if now >= p.next_probe:
                p.probe_started = now
                starting = not p.answered and now - p.started < live.grace
                p.next_probe = now + (min(live.interval, STARTUP_PROBE) if starting else live.interval)
                p.probe = self.probes.submit(probe_health, p.child.url, live.timeout)

    def probed(self, p: Proc, reason: str | None, now: float) -> None:
        """Count a probe's result; kill the group once `failures` in a row follow the grace."""
        live = p.child.liveness
        p.healthy = reason is None
        if reason is None:
            p.answered, p.failures = True, 0
            return
        if p.probe_started - p.started < live.grace:  # still starting: not counted
            return
        p.failures += 1
        if p.failures < live.failures or not live.enabled:
            return
        assert p.proc is not None
        p.kill_reason = f"liveness: {p.failures} probes failed ({reason})"
        p.kill_deadline = now + live.kill_timeout
        self.say(
            "shoal up: liveness failed "
            + _logfmt(
                service=p.name,
                pid=p.proc.pid,
                failures=p.failures,
                reason=reason,
                timeout=f"{live.timeout:g}s",
                up_for=f"{now - p.started:.1f}s",
                grace=f"{live.grace:g}s",
                action=f"SIGTERM process group, SIGKILL after {live.kill_timeout:g}s, restart",
            )
        )
        _signal_group(p.proc.pid, signal.SIGTERM)
        _signal_group(p.proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed

    def registered_nodes(self) -> int | None:
        meta = next((p for p in self.procs if p.child.service == "metadata"), None)
        if meta is None:
            return None
        try:
            return int(self.http.get(meta.child.url + "/nodes/health-summary").json().get("healthy", 0))
        except (httpx.HTTPError, ValueError, AttributeError):
            return 0

    def ready(self) -> bool:
        if not all(p.healthy for p in self.procs):
            return False
        storage = sum(1 for p in self.procs if p.child.service == "storage")
        nodes = self.registered_nodes()
        return storage == 0 or nodes is None or nodes >= storage

    def stop_all(self, timeout: float = 60.0) -> None:
        self.probes.shutdown(wait=False, cancel_futures=True)
        for p in self.procs:
            if p.proc and p.proc.poll() is None:
                _signal_group(p.proc.pid, signal.SIGTERM)
                _signal_group(p.proc.pid, signal.SIGCONT)  # a SIGSTOPped service must stop too
        deadline = time.monotonic() + timeout
        for p in self.procs:
            if p.proc is None:
                continue
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"shoal up: {p.name} did not stop in time; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)  # stray workers of the group
            p.proc.wait()

    def kill_all(self) -> None:
        for p in self.procs:
            if p.proc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)


def probe_health(url: str, timeout: float) -> str | None:
    """One liveness probe: None if `GET url/health` answers 200 within `timeout` s, else why not
    ("timeout", "connection refused", "status 503", ...). A fresh connection each time, so a
    service that accepts no new connections is caught too."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Connection": "close"})
        r = conn.getresponse()
        r.read()
        return None if r.status == 200 else f"status {r.status}"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "connection refused"
    except http.client.RemoteDisconnected:
        return "connection closed"
    except (http.client.HTTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _logfmt(**fields: object) -> str:
    """key=value pairs, quoted when needed: one line people read and scripts split."""
    out = []
    for k, v in fields.items():
        text = str(v)
        quote = not text or any(c in text for c in ' ="')
        out.append(f"{k}={json.dumps(text) if quote else text}")
    return " ".join(out)


def _tail(path: Path | None, lines: int) -> list[str]:
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            return [ln.decode(errors="replace") for ln in f.read().splitlines()[-lines:]]
    except OSError:
        return []


def ports_in_use(settings: Settings, children: list[Child]) -> list[Child]:
    taken = []
    for c in children:
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as s:
            try:
                s.bind((settings.host, c.port))
            except OSError:
                taken.append(c)
    return taken


INSECURE = (
    "State Service: INSECURE DEV MODE (--insecure-dev): AUTHENTICATION IS DISABLED, every request "
    "is an admin.\nDrop --no-auth (or give `shoal up --admin-address 0x...`) to run it with authentication."
)


class PrivateDaemons:
    """A dockerd and a libvirtd of the platform's own, for the Compute API, when their packages
    are installed and compute's args do not name daemons already: data under DATA_ROOT/docker
    and DATA_ROOT/libvirt, unix sockets only, no host networking (`--bridge=none
    --iptables=false`). Both die with `shoal up` (shoal.runtime.lifetime)."""

    IMAGE = "shoal-busybox:latest"  # what `shoal demo` runs

    def __init__(self, root: Path, out: IO[str]) -> None:
        self.root, self.out = root, out
        self.docker: Any = None
        self.libvirt: Any = None

    def start_for(self, children: list[Child]) -> None:
        compute = [c for c in children if c.service == "compute"]
        if not compute:
            return
        args = compute[0].args
        if "--docker-host" not in args:
            self.docker = self._start("docker", self._docker)
            if self.docker is not None:
                for c in compute:
                    c.args[:0] = ["--docker-host", self.docker.url]
        if "--libvirt-uri" not in args:
            self.libvirt = self._start("libvirt", self._libvirt)
            if self.libvirt is not None:
                for c in compute:
                    c.args[:0] = ["--libvirt-uri", self.libvirt.uri]

    def _start(self, name: str, start: Any) -> Any:
        try:
            return start()
        except Exception as exc:  # compute still runs, and says the backend is unavailable
            print(f"shoal up: private {name} daemon not started: {exc}", file=self.out, flush=True)
            return None

    def _docker(self) -> Any:
        from shoal.platform.dockerd import DockerDaemon, dockerd_available

        reason = dockerd_available()
        if reason:
            raise RuntimeError(reason)
        d = DockerDaemon(self.root / "docker").start()
        with d.client() as c:
            if c.get(f"/images/{self.IMAGE}/json").status_code != 200:
                d.import_busybox(self.IMAGE)
        print(f"shoal up: private dockerd at {d.url} (image {self.IMAGE})", file=self.out, flush=True)
        return d

    def _libvirt(self) -> Any:
        from shoal.platform.libvirtd import LibvirtDaemon, libvirtd_available

        reason = libvirtd_available()
        if reason:
            raise RuntimeError(reason)
        d = LibvirtDaemon(self.root / "libvirt").start()
        print(f"shoal up: private libvirtd at {d.uri}", file=self.out, flush=True)
        return d

    def stop(self) -> None:
        """After the services: containers and VMs are stopped but stay defined, as after a host
        shutdown (dockerd stops its containers on SIGTERM; running domains are powered off)."""
        with contextlib.suppress(Exception):
            if self.docker is not None:
                self.docker.stop(remove_containers=False)
        with contextlib.suppress(Exception):
            if self.libvirt is not None:
                self.libvirt.stop_domains()
                self.libvirt.stop(keep_domains=True)


def admin_headers(settings: Settings) -> dict[str, str]:
    """What `shoal up` and `shoal status` send to the services: the platform's admin key."""
    if settings.auth_dir is None:
        return {}
    try:
        return {"Authorization": f"Bearer {(settings.auth_dir / 'admin.key').read_text().split()[0]}"}
    except (OSError, IndexError):
        return {}


def ensure_auth_dir(auth_dir: Path) -> bool:
    """`shoal auth init` on first use (True when it created it); later runs keep its keys."""
    if (auth_dir / "auth.json").exists():
        return False
    AuthDir(auth_dir).init()
    return True


def run_up(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    try:
        settings = settings_from_args(args)
    except (ConfigError, OSError) as exc:
        print(f"shoal up: {exc}", file=sys.stderr)
        return 2
    children, missing = layout(settings)
    if getattr(args, "nginx_config", False):
        from shoal.platform.nginx import server_config

        print(server_config(children, args.nginx_listen), file=out)
        return 0
    if missing:
        print(f"shoal up: not built, skipped: {', '.join(missing)}", file=sys.stderr)
    if not children:
        print("shoal up: nothing to run", file=sys.stderr)
        return 1
    Path(settings.data_root).mkdir(parents=True, exist_ok=True)
    lock = open(Path(settings.data_root) / "up.lock", "a+")  # held until we exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        print(
            f"shoal up: another `shoal up` (pid {lock.read().strip() or '?'}) uses {settings.data_root}; "
            "give each one its own --data-root",
            file=sys.stderr,
        )
        lock.close()
        return 2
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    taken = ports_in_use(settings, children)
    if taken:
        names = ", ".join(f"{c.port} ({c.name})" for c in taken)
        print(
            f"shoal up: port(s) in use: {names}. Is another `shoal up` running? Stop it, or pick "
            "other ports with --port-offset N",
            file=sys.stderr,
        )
        return 2
    if settings.auth_dir is not None:
        try:
            created = ensure_auth_dir(settings.auth_dir)
        except (AuthDirError, OSError) as exc:
            print(f"shoal up: auth dir {settings.auth_dir}: {exc}", file=sys.stderr)
            return 2
        if created:
            print(f"shoal up: created the auth dir {settings.auth_dir} (cluster secret, admin key)", file=out)
    if any(c.service == "state" and "--insecure-dev" in c.args for c in children):
        bar = "!" * 100
        print(f"{bar}\n{INSECURE}\n{bar}", file=sys.stderr, flush=True)
    daemons = PrivateDaemons(Path(settings.data_root), out)
    if not getattr(args, "no_private_daemons", False):
        daemons.start_for(children)
    sup = Supervisor(settings, children, args.verbose, out)
    for flag in ("config", "data_root", "port_offset", "host"):
        if getattr(args, flag, None) is not None:
            sup.layout_flags += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    signals = {"count": 0}

    def on_signal(signum: int, frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            sup.kill_all()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _supervise(sup, signals, missing)
    finally:
        daemons.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _supervise(sup: Supervisor, signals: dict, missing: list[str]) -> int:
    where = f"logs in {sup.log_dir}" if sup.log_dir else "logs on this terminal"
    sup.say(f"shoal up: starting {len(sup.procs)} processes (data in {sup.root}, {where})")
    # The metadata service first: storage nodes that find it down retry only after seconds.
    first = [p for p in sup.procs if p.child.service in FIRST]
    for p in sup.procs:
        p.held = p not in first
        if not p.held:
            sup.start(p)
    began = time.monotonic()
    announced = False
    while not signals["count"]:
        if any(p.held for p in sup.procs) and (
            all(p.healthy for p in first) or time.monotonic() - began > FIRST_WAIT
        ):
            for p in sup.procs:
                if p.held:
                    p.held = False
                    sup.start(p)
        sup.check_exits(time.monotonic())
        sup.check_liveness(time.monotonic())
        if not announced:
            if sup.ready() or time.monotonic() - began > READY_TIMEOUT:
                announced = True
                sup.say(summary(sup, missing))
        time.sleep(0.25)
    sup.say("shoal up: stopping (Ctrl-C again to kill at once)")
    sup.stop_all()
    with contextlib.suppress(OSError):
        (sup.root / "up.json").unlink()
    sup.say("shoal up: stopped")
    return 0


def summary(sup: Supervisor, missing: list[str]) -> str:
    lines = ["", "shoal is up:"]
    nodes = sup.registered_nodes()
    for p in sup.procs:
        c = p.child
        state = "healthy" if p.healthy else "NOT HEALTHY"
        notes = list(c.notes)
        if c.service == "metadata" and nodes is not None:
            notes.append(f"{nodes} storage node(s) registered and healthy")
        if c.service == "compute":
            notes += compute_notes(c, sup.http)
        if not p.healthy and p.log_path:
            notes.append(f"see {p.log_path}")
        url = c.url + ("/" if c.service == "dashboard" else "")
        lines.append(f"  {c.name:<10} {url:<28} {state:<8} {'; '.join(notes)}".rstrip())
    if missing:
        lines.append(f"  not built: {', '.join(missing)}")
    if sup.settings.auth_dir is not None:
        lines.append(
            f"Credentials: admin API key in {sup.settings.auth_dir / 'admin.key'} "
            f"(send it as Authorization: Bearer; more keys: shoal auth key create --dir {sup.settings.auth_dir})."
        )
    else:
        lines.append("Credentials: none (--no-auth): every service is open to anyone who reaches it.")
    flags = sup.layout_flags
    lines += [
        "Each service documents its API at <url>/openapi.json and answers <url>/health.",
        f"Next: `shoal demo{flags}` (upload and play a test video), `shoal status{flags}`.",
        "Ctrl-C stops everything.",
        "shoal up: ready"
        if all(p.healthy for p in sup.procs)
        else "shoal up: started, but not everything is healthy",
    ]
    return "\n".join(lines)


def compute_notes(c: Child, http: httpx.Client) -> list[str]:
    """The Compute API starts without dockerd or libvirtd; say which backends are unavailable.
    It is asked with the platform's admin key (--auth-dir) or its own --token file."""
    token, notes = None, []
    if "--auth-dir" in c.args:
        key_file = Path(c.args[c.args.index("--auth-dir") + 1]) / "admin.key"
        with contextlib.suppress(OSError, IndexError):
            token = key_file.read_text().split()[0]
    if token is None:
        token_file = Path(c.data_dir) / "token"
        try:
            token = token_file.read_text().split()[0]
        except (OSError, IndexError):
            return ["bearer token: see its --token flags"]
        notes.append(f"token in {token_file}")
    try:
        r = http.get(c.url + "/api/v1/compute/cluster/status", headers={"Authorization": f"Bearer {token}"})
        backends = r.json()["backends"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return notes
    for name, info in backends.items():
        if info.get("status") != "healthy":
            notes.append(f"{name}: BACKEND_UNAVAILABLE ({info.get('reason') or info.get('status')})")
        else:
            notes.append(f"{name}: available")
    return notes


# -- shoal status ---------------------------------------------------------------------------------


def service_health(c: Child, http: httpx.Client) -> dict[str, Any]:
    row: dict[str, Any] = {"name": c.name, "url": c.url, "prefix": c.prefix}
    try:
        r = http.get(c.url + "/health")
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        row.update(status=f"down ({type(exc).__name__})", healthy=False)
        return row
    row["status"] = body.get("status", r.status_code) if isinstance(body, dict) else body
    row["healthy"] = r.status_code == 200
    if c.service == "metadata":
        with contextlib.suppress(httpx.HTTPError, ValueError):
            row["nodes"] = http.get(c.url + "/nodes/health-summary").json()
    if c.service == "compute":
        row["notes"] = compute_notes(c, http)
    if c.service == "state":
        with contextlib.suppress(httpx.HTTPError, ValueError):
            row["auth"] = http.get(c.url + "/status").json().get("auth")
    return row


def run_status(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    try:
        settings = settings_from_args(args)
    except (ConfigError, OSError) as exc:
        print(f"shoal status: {exc}", file=sys.stderr)
        return 2
    children, _ = layout(settings, check_built=False)
    with httpx.Client(timeout=3.0, headers=admin_headers(settings)) as http:
        rows = [service_health(c, http) for c in children]
    supervised = _up_state(Path(settings.data_root))
    for row in rows:
        if row["name"] in supervised:
            row.update(supervised[row["name"]])
    if args.json:
        print(json.dumps(rows, indent=1), file=out)
    else:
        for row in rows:
            extra = _status_extra(row)
            print(f"{row['name']:<10} {row['url']:<26} {row['status']!s:<24} {extra}".rstrip(), file=out)
    return 0 if all(r["healthy"] for r in rows) else 1


def _up_state(root: Path) -> dict[str, dict[str, Any]]:
    """Restart counts and reasons from the running `shoal up`'s up.json (none if it is not running)."""
    try:
        state = json.loads((root / "up.json").read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        s["name"]: {k: s.get(k) for k in ("pid", "restarts", "last_reason", "last_restart_at")}
        for s in state.get("services", [])
        if isinstance(s, dict) and "name" in s
    }


def _status_extra(row: dict) -> str:
    parts = []
    if row.get("restarts"):
        last = f" (last: {row['last_reason']} at {row['last_restart_at']})" if row.get("last_reason") else ""
        parts.append(f"restarts: {row['restarts']}{last}")
    if "nodes" in row and isinstance(row["nodes"], dict):
        n = row["nodes"]
        parts.append(
            f"nodes: {n.get('healthy', 0)} healthy, {n.get('degraded', 0)} degraded, {n.get('down', 0)} down"
        )
    if row.get("auth"):
        parts.append(f"auth: {row['auth']}")
    parts += row.get("notes", [])
    return "; ".join(parts)
