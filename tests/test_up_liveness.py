"""`shoal up` liveness: a service that runs but no longer answers (here: SIGSTOP) is killed and
restarted; a healthy one is left alone; one stopped during its start grace waits for the grace;
`enabled = false` never kills. Real `shoal up` processes running the small example service
(tests/web/example_service.py) under granian, with short intervals from a config file."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from shoal.platform.layout import ConfigError, Liveness, layout, settings_from
from shoal.platform.up import probe_health
from shoal.testing import free_port
from shoal.testing.platform import Up

DEADLINE = 60.0  # generous: only ever a bound on how long we wait, never on how fast it is

# This module is also a service (SHOAL_SERVICE_MODULES="wedge=tests.test_up_liveness"): its
# POST /wedge starts a helper in the service's process group that ignores SIGTERM, then blocks the
# event loop for good, as a deadlock would. SIGTERM alone cannot stop it.
TITLE = "Wedge"
_HELPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(3600)"
)


def create_app(options: dict):
    from shoal.web import Api
    from shoal.web import create_app as build

    data_dir = Path(options["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    api = Api()

    @api.post("/wedge")
    async def wedge(request) -> dict:
        helper = subprocess.Popen([sys.executable, "-c", _HELPER], stdout=subprocess.PIPE)
        assert helper.stdout is not None
        helper.stdout.readline()  # SIGTERM is ignored from here on
        (data_dir / "helper").write_text(f"{helper.pid} {os.getpid()}")
        time.sleep(3600)  # the point: a wedged event loop
        return {}

    return build(title=TITLE, apis=[api])


def _env(*names: str) -> dict[str, str]:
    return {"SHOAL_SERVICE_MODULES": ",".join(f"{n}=tests.web.example_service" for n in names)}


def _config(tmp_path: Path, liveness: dict, services: dict[str, dict]) -> tuple[Path, dict[str, int]]:
    ports = {name: free_port() for name in services}
    config = {
        "only": list(services),
        "liveness": liveness,
        "services": {name: {"port": ports[name], **conf} for name, conf in services.items()},
    }
    path = tmp_path / "up.json"
    path.write_text(json.dumps(config))
    return path, ports


def _service(up: Up, name: str) -> dict:
    for _ in range(50):  # up.json is replaced atomically, but may not exist yet
        with contextlib.suppress(OSError, ValueError):
            return next(s for s in up.state()["services"] if s["name"] == name)
        time.sleep(0.1)
    raise AssertionError(f"up.json never listed {name}:\n{up.output}")


def _until(what: str, check, up: Up, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        assert up.proc is not None and up.proc.poll() is None, f"`shoal up` exited:\n{up.output}"
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s:\n{up.output}\n{up.log_tails()}")


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _worker(data_root: Path, name: str) -> tuple[int, int]:
    """(pid of the granian worker answering HTTP, pid of the granian main) of a running example."""
    worker, main = map(int, (data_root / name / "started").read_text().split())
    return worker, main


def _liveness_lines(up: Up) -> list[dict[str, str]]:
    out = []
    for line in up.lines:
        if line.startswith("shoal up: liveness failed "):
            fields = shlex.split(line.removeprefix("shoal up: liveness failed "))
            out.append(dict(f.split("=", 1) for f in fields))
    return out


def _stop(up: Up) -> None:
    """SIGTERM `shoal up`: it must stop everything, a still-SIGSTOPped service included."""
    assert up.proc is not None
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(DEADLINE) == 0, up.output
    assert "shoal up: stopped" in up.output


def test_hung_service_is_killed_and_restarted_healthy_ones_are_not(tmp_path):
    liveness = {"interval": 0.5, "timeout": 1.5, "grace": 2, "failures": 3, "kill_timeout": 2}
    config, ports = _config(
        tmp_path,
        liveness,
        {"hung": {}, "steady": {}, "debugged": {"liveness": {"enabled": False}}},
    )
    root = tmp_path / "data"
    up = Up(root, 0, "--config", str(config), env=_env("hung", "steady", "debugged"))
    try:
        up.start(timeout=DEADLINE)
        first = {n: _service(up, n)["pid"] for n in ports}
        time.sleep(liveness["grace"])  # every service started before `ready`: its grace is over
        hung_worker, hung_main = _worker(root, "hung")
        debugged_worker, _ = _worker(root, "debugged")
        os.kill(hung_worker, signal.SIGSTOP)  # the process that answers HTTP hangs
        os.kill(debugged_worker, signal.SIGSTOP)  # as under a debugger; liveness is off for it

        _until("the hung service was restarted", lambda: _service(up, "hung")["pid"] != first["hung"], up)
        _until("the restarted service answered /health", lambda: _health(ports["hung"]), up)
        assert _worker(root, "hung")[0] != hung_worker
        _until("the hung processes are gone", lambda: _gone(hung_worker) and _gone(hung_main), up, 30)

        [line] = _liveness_lines(up)
        assert line["service"] == "hung" and line["pid"] == str(first["hung"])
        assert line["failures"] == "3" and line["reason"] == "timeout"
        assert float(line["up_for"].rstrip("s")) >= 2  # never during the grace
        assert "restarting in 1 s" in up.output  # the exit path's backoff
        hung = _service(up, "hung")
        assert hung["restarts"] == 1 and hung["last_reason"] == "liveness: 3 probes failed (timeout)"

        status = subprocess.run(
            [sys.executable, "-m", "shoal", "status", "--config", str(config), *up.layout_args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **_env("hung", "steady", "debugged")},
        )
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert rows["hung"]["healthy"] is True and rows["hung"]["restarts"] == 1
        assert rows["hung"]["last_reason"].startswith("liveness: 3 probes failed (timeout)")
        assert rows["steady"]["restarts"] == 0 and rows["steady"]["healthy"] is True
        assert rows["debugged"]["healthy"] is False  # still stopped, and left so

        for name in ("steady", "debugged"):  # never restarted
            assert _service(up, name)["pid"] == first[name] and _service(up, name)["restarts"] == 0
        assert _health(ports["steady"])
        _stop(up)
    finally:
        up.stop()
    assert not any(line["service"] != "hung" for line in _liveness_lines(up))
    assert _gone(debugged_worker)


def test_stopped_during_start_grace_is_not_restarted_before_grace_ends(tmp_path):
    grace = 5.0
    liveness = {"interval": 0.3, "timeout": 0.5, "grace": grace, "failures": 2, "kill_timeout": 1}
    config, ports = _config(tmp_path, liveness, {"slow": {}})
    root = tmp_path / "data"
    up = Up(root, 0, "--config", str(config), env=_env("slow"))
    launched = time.monotonic()  # its services start after this
    up.launch()  # not start(): a service is stopped before `ready` can be printed
    try:
        first = _service(up, "slow")["pid"]
        os.killpg(first, signal.SIGSTOP)  # still importing: the whole group stops mid-start
        while time.monotonic() - launched < grace * 0.8:  # surely inside the grace: left alone
            slow = _service(up, "slow")
            assert slow["pid"] == first and slow["restarts"] == 0, up.output
            time.sleep(0.2)
        _until("the stopped service was restarted", lambda: _service(up, "slow")["pid"] != first, up)
        _until("the restarted service answered /health", lambda: _health(ports["slow"]), up)
        [line] = _liveness_lines(up)
        assert line["service"] == "slow" and line["failures"] == "2"
        assert line["reason"] in ("timeout", "connection refused"), line
        assert float(line["up_for"].rstrip("s")) >= grace  # the supervisor's own clock
        _until("the stopped process is gone", lambda: _gone(first), up, 30)
        up.wait_for("shoal up: ready", DEADLINE)
        _stop(up)
    finally:
        up.stop()


def test_wedged_service_that_ignores_sigterm_is_killed(tmp_path):
    """A deadlocked event loop with a helper ignoring SIGTERM: SIGKILL after kill_timeout."""
    liveness = {"interval": 0.5, "timeout": 1, "grace": 1, "failures": 2, "kill_timeout": 1.5}
    config, ports = _config(tmp_path, liveness, {"wedge": {}})
    root = tmp_path / "data"
    up = Up(root, 0, "--config", str(config), env={"SHOAL_SERVICE_MODULES": "wedge=tests.test_up_liveness"})
    try:
        up.start(timeout=DEADLINE)
        first = _service(up, "wedge")["pid"]
        time.sleep(liveness["grace"])  # started before `ready`: its grace is over
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"http://127.0.0.1:{ports['wedge']}/wedge", timeout=0.5)  # never answers
        helper, worker = map(int, _until("the helper started", lambda: _read(root / "wedge" / "helper"), up))
        _until("the wedged service was restarted", lambda: _service(up, "wedge")["pid"] != first, up)
        _until("the restarted service answered /health", lambda: _health(ports["wedge"]), up)
        [line] = _liveness_lines(up)
        assert line["service"] == "wedge" and line["reason"] == "timeout"
        assert "shoal up: wedge did not stop 1.5 s after SIGTERM; SIGKILL to its process group" in up.output
        assert _service(up, "wedge")["last_reason"] == "liveness: 2 probes failed (timeout)"
        _until(
            "the wedged processes are gone", lambda: _gone(helper) and _gone(worker) and _gone(first), up, 30
        )
        _stop(up)
    finally:
        up.stop()


def _read(path: Path) -> list[str] | None:
    with contextlib.suppress(OSError):
        return path.read_text().split() or None
    return None


# -- one probe: why it failed -----------------------------------------------------------------------


class _Status(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status, expected", [(200, None), (503, "status 503")])
def test_probe_status(status, expected):
    handler = type("Handler", (_Status,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe_health(f"http://127.0.0.1:{server.server_address[1]}", 5) == expected
    finally:
        server.shutdown()
        server.server_close()


def test_probe_refused_and_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        assert probe_health(f"http://127.0.0.1:{port}", 5) == "connection refused"
        s.listen()  # the kernel accepts the connection, nobody answers: a hung service
        assert probe_health(f"http://127.0.0.1:{port}", 0.2) == "timeout"


# -- config ---------------------------------------------------------------------------------------


def test_liveness_config_defaults_and_overrides():
    assert settings_from({}).liveness_for("kv") == Liveness(True, 2.0, 2.0, 60.0, 3, 5.0)
    s = settings_from(
        {
            "liveness": {"interval": 1, "grace": 0},
            "services": {"storage": {"liveness": {"failures": 5}}, "kv": {"liveness": {"enabled": False}}},
        }
    )
    children = {c.name: c for c in layout(s, check_built=False)[0]}
    assert children["storage-4"].liveness == Liveness(interval=1.0, grace=0.0, failures=5)
    assert children["kv"].liveness == Liveness(enabled=False, interval=1.0, grace=0.0)
    assert children["metadata"].liveness == Liveness(interval=1.0, grace=0.0)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"liveness": 2}, "liveness must be a table"),
        ({"liveness": {"period": 2}}, "liveness: unknown key(s) period"),
        ({"liveness": {"interval": 0}}, "liveness.interval must be a number of seconds, more than 0"),
        ({"liveness": {"timeout": "2"}}, "liveness.timeout must be a number"),
        ({"liveness": {"grace": -1}}, "liveness.grace must be a number of seconds, 0 or more"),
        ({"liveness": {"failures": 0}}, "liveness.failures must be a whole number"),
        ({"liveness": {"failures": 2.5}}, "liveness.failures must be a whole number"),
        ({"liveness": {"enabled": "no"}}, "liveness.enabled must be true or false"),
        ({"services": {"kv": {"liveness": {"kill_timeout": True}}}}, "services.kv.liveness.kill_timeout"),
    ],
)
def test_liveness_config_errors_say_what_is_wrong(config, message):
    with pytest.raises(ConfigError) as err:
        settings_from(config)
    assert message in str(err.value)


def test_liveness_line_is_logfmt():
    from shoal.platform.up import _logfmt

    line = _logfmt(service="kv", failures=3, reason="status 503", empty="")
    assert line == 'service=kv failures=3 reason="status 503" empty=""'
    assert re.fullmatch(r'(\w+=("[^"]*"|\S+) ?)+', line)


def test_docs_liveness_defaults_are_the_code_defaults():
    doc = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
    table = doc[doc.index("<!-- liveness-keys") :].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.M))
    defaults = Liveness()
    assert set(rows) == set(Liveness.__dataclass_fields__)
    for key, value in rows.items():
        assert json.loads(value) == getattr(defaults, key), key
