"""`shoal up`: starts services, restarts one that crashes, stops all on SIGTERM; its layout,
config files, refusals, `shoal status` and the nginx config it writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from shoal.platform.layout import IDLE_COMMAND, ConfigError, layout, load_config, settings_from
from shoal.testing import free_port, wait_http
from shoal.testing.procs import alive, descendants, refuses, wait_until


def test_up_supervises_and_stops(tmp_path):
    offset = free_port() - 8000  # the plug-in service's default port is 8000
    env = {
        **os.environ,
        "SHOAL_SERVICE_MODULES": "example=tests.web.example_service",
        "SHOAL_ACCESS_LOG": "0",
    }
    cmd = [sys.executable, "-m", "shoal", "up", "--only", "example", "--data-root", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--port-offset", str(offset)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{8000 + offset}"
    try:
        wait_http(url + "/health", 30, proc)
        pid, server_pid = map(int, (tmp_path / "example" / "started").read_text().split())
        second = subprocess.run(  # the same data root, other ports: refused, not shared
            [*cmd, "--port-offset", str(free_port() - 8000)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"another `shoal up` (pid {proc.pid}) uses {tmp_path}" in second.stderr
        os.killpg(server_pid, signal.SIGKILL)  # the service crashes: server and workers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = tmp_path / "example" / "started"
            try:
                if (
                    int(started.read_text().split()[0]) != pid
                    and httpx.get(url + "/health").status_code == 200
                ):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the crashed service was not restarted")
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert "example" in out and url in out
    assert "restarting" in out
    assert (tmp_path / "example" / "stopped").exists()  # graceful shutdown ran


# -- the layout: ports, URLs handed between services, config files ----------------------------------


def by_name(children):
    return {c.name: c for c in children}


def test_default_layout_ports_and_urls_with_offset(tmp_path):
    s = settings_from({}, data_root=str(tmp_path), port_offset=100)
    children = by_name(layout(s, check_built=False)[0])
    ports = {n: c.port for n, c in children.items()}
    assert ports == {
        "state": 3104,
        "kv": 8190,
        "metadata": 8180,
        "storage-1": 8181,
        "storage-2": 8182,
        "storage-3": 8183,
        "storage-4": 8185,
        "storage-5": 8186,
        "uploader": 8184,
        "dashboard": 8988,
        "compute": 8170,
        "manager": 8187,
    }
    assert len(set(ports.values())) == len(ports), "no two services share a port"
    meta = "http://127.0.0.1:8180"  # the offset reaches the URLs services are given
    for name in ("storage-1", "storage-5", "uploader", "dashboard"):
        args = children[name].args
        assert args[args.index("--metadata-url") + 1] == meta
    assert children["storage-3"].args[:4] == ["--node-id", "storage-3", "--node-url", "http://127.0.0.1:8183"]
    assert children["storage-3"].data_dir == str(tmp_path / "storage-3")
    assert children["storage-3"].prefix == "/storage/3"
    state = children["state"].args  # authenticated with the platform's keys: no --insecure-dev
    assert "--insecure-dev" not in state
    assert state[state.index("--auth-dir") + 1] == str((tmp_path / "auth").absolute())
    assert "INSECURE" not in " ".join(children["state"].notes)
    assert "Bearer <API key>" in " ".join(children["state"].notes)
    manager = children["manager"].args
    assert manager[manager.index("--") + 1 :] == IDLE_COMMAND  # the supervised command comes last
    assert children["manager"].data_dir == str(tmp_path / "manager" / "data")


def test_state_authentication_with_and_without_the_auth_dir(tmp_path):
    addr = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
    auth_dir = str((tmp_path / "auth").absolute())

    def state(**flags) -> object:
        return by_name(layout(settings_from({}, data_root=str(tmp_path), **flags), check_built=False)[0])[
            "state"
        ]

    # the admin address works beside the platform's keys
    assert state(admin_address=addr).args == ["--admin-address", addr, "--auth-dir", auth_dir]
    assert f"admin: {addr}" in state(admin_address=addr).notes
    # --no-auth: the admin address alone turns authentication on; without one, insecure-dev as before
    assert state(admin_address=addr, auth=False).args == ["--admin-address", addr]
    insecure = state(auth=False)
    assert insecure.args == ["--insecure-dev"] and "INSECURE DEV MODE" in insecure.notes[0]


def test_only_and_forwarded_ips():
    s = settings_from({}, only="metadata,storage-2", forwarded_allow_ips="127.0.0.1")
    children = layout(s, check_built=False)[0]
    assert [c.name for c in children] == ["metadata", "storage-2"]
    assert all(c.args[-2:] == ["--forwarded-allow-ips", "127.0.0.1"] for c in children)
    with pytest.raises(ConfigError, match="unknown service 'storage-9'"):
        settings_from({}, only="storage-9")


TOML = """
data_root = "/srv/shoal"
port_offset = 10
forwarded_allow_ips = "10.0.0.0/8"

[services.storage]
ports = [9001, 9002, 9003]
args = ["--heartbeat-interval", "2"]

[services.manager]
command = ["python3", "-m", "http.server", "9900"]

[services.kv]
enabled = false

[services.state]
port = 4000
"""


@pytest.mark.parametrize("suffix", [".toml", ".json", ".conf"])
def test_config_file(tmp_path, suffix):
    path = tmp_path / f"layout{suffix}"
    path.write_text(json.dumps(tomllib.loads(TOML)) if suffix == ".json" else TOML)
    s = settings_from(load_config(path), port_offset=20)  # a flag beats the file
    children = by_name(layout(s, check_built=False)[0])
    assert "kv" not in children
    assert [children[f"storage-{i}"].port for i in (1, 2, 3)] == [9021, 9022, 9023]
    assert "storage-4" not in children
    assert children["storage-1"].args[-4:-2] == ["--heartbeat-interval", "2"]
    assert children["state"].port == 4020
    assert children["state"].data_dir == "/srv/shoal/state"
    assert children["manager"].args[-4:] == ["python3", "-m", "http.server", "9900"]
    assert "an idle" not in children["manager"].notes[0]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"colour": "blue"}, "unknown key(s) colour"),
        ({"services": {"nope": {}}}, "services.nope: unknown service"),
        ({"services": {"state": {"prot": 1}}}, "services.state: unknown key(s) prot"),
        ({"services": {"storage": {"port": 1}}}, "services.storage: unknown key(s) port"),
        ({"services": {"storage": {"ports": []}}}, "non-empty list"),
        ({"services": {"state": {"port": "3004"}}}, "services.state.port must be a int"),
        ({"services": {"state": {"args": "--no-fsync"}}}, "must be a list of strings"),
        ({"services": {"kv": {"enabled": "no"}}}, "enabled must be true or false"),
        ({"services": {"manager": {"command": []}}}, "must name a program"),
        ({"port_offset": "5"}, "port_offset must be a int"),
        ({"port_offset": 60000}, "out of range"),
    ],
)
def test_config_errors_say_what_is_wrong(config, message):
    with pytest.raises(ConfigError) as err:
        settings_from(config)
    assert message in str(err.value)


def test_bad_config_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("data_root = [unclosed")
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "up", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "not valid TOML or JSON" in out.stderr and "Traceback" not in out.stderr


def test_refuses_ports_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        offset = busy.getsockname()[1] - 8000
        env = {**os.environ, "SHOAL_SERVICE_MODULES": "example=tests.web.example_service"}
        cmd = [sys.executable, "-m", "shoal", "up", "--only", "example", "--data-root", str(tmp_path)]
        out = subprocess.run(
            [*cmd, "--port-offset", str(offset)], capture_output=True, text=True, timeout=60, env=env
        )
    assert out.returncode == 2
    assert f"port(s) in use: {8000 + offset} (example)" in out.stderr
    assert "--port-offset" in out.stderr


def test_status_reports_down_services(tmp_path):
    offset = free_port() - 8000
    env = {**os.environ, "SHOAL_SERVICE_MODULES": "example=tests.web.example_service"}
    cmd = [sys.executable, "-m", "shoal", "status", "--port-offset", str(offset), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["metadata"]["healthy"] is False and rows["metadata"]["status"].startswith("down")
    assert rows["example"]["url"] == f"http://127.0.0.1:{8000 + offset}"


def test_nginx_config_is_valid_for_nginx(tmp_path):
    """`shoal up --nginx-config` output, included in a minimal nginx.conf, passes `nginx -t`."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.skip("nginx is not installed (Debian nginx-light, in scripts/apt-packages.txt)")
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "up", "--nginx-config", "--nginx-listen", "127.0.0.1:18000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    conf = out.stdout
    assert "location /storage/5/  { proxy_pass http://shoal_storage_5/; }" in conf
    assert "~^/storage/5/  /storage/5;" in conf and "server 127.0.0.1:8086;" in conf
    # set once, in the server block; a location with a proxy_set_header of its own would drop them
    assert (
        conf.count("\n    proxy_set_header ") == 6
        and "proxy_set_header X-Forwarded-Prefix $shoal_prefix;" in conf
    )
    (tmp_path / "shoal.conf").write_text(conf)
    main = (
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
        f"    proxy_temp_path {tmp_path}/proxy;\n    include {tmp_path}/shoal.conf;\n}}\n"
    )
    (tmp_path / "nginx.conf").write_text(main)
    test = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert test.returncode == 0, test.stderr


DOC = Path(__file__).parent.parent / "docs" / "deploy.md"


def _fenced(text: str, lang: str, after: str = "") -> str:
    start = text.index(f"```{lang}\n", text.index(after) if after else 0) + len(lang) + 4
    return text[start : text.index("```", start)]


def test_docs_nginx_config_is_what_shoal_writes():
    from shoal.platform.nginx import server_config

    documented = _fenced(DOC.read_text(), "nginx", "<!-- nginx-config")
    assert documented == server_config(layout(settings_from({}), check_built=False)[0])


def test_docs_config_example_is_valid():
    s = settings_from(tomllib.loads(_fenced(DOC.read_text(), "toml")))
    children = by_name(layout(s, check_built=False)[0])
    assert children["storage-6"].port == 8089 and "kv" not in children


def test_kill_9_of_shoal_up_takes_its_services_with_it(tmp_path):
    """The kernel tells each service (PR_SET_PDEATHSIG); their workers follow them."""
    offset = free_port() - 8000
    env = {
        **os.environ,
        "SHOAL_SERVICE_MODULES": "example=tests.web.example_service",
        "SHOAL_ACCESS_LOG": "0",
    }
    cmd = [sys.executable, "-m", "shoal", "up", "--only", "example", "--data-root", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--port-offset", str(offset)], env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{8000 + offset}"
    try:
        wait_http(url + "/health", 30, proc)
        tree = descendants(proc.pid)
        assert len(tree) >= 2, tree  # `shoal serve example` and its granian worker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        took = wait_until(lambda: not any(alive(p) for p in tree) and refuses(8000 + offset), 5.0)
        assert took is not None, f"left running: {[p for p in tree if alive(p)]}"
        assert (tmp_path / "example" / "stopped").exists()  # SIGTERM: the graceful path ran
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_auth_dir_is_handed_to_every_service_that_takes_it(tmp_path):
    from shoal.platform.services import accepts

    s = settings_from({}, data_root=str(tmp_path))
    children = by_name(layout(s)[0])
    wired = [c for c in children.values() if accepts(c.service, "--auth-dir")]
    assert "kv" in {c.service for c in wired}  # kv is wired (tests/web/test_auth_kv.py)
    for c in wired:
        assert c.args[c.args.index("--auth-dir") + 1] == str((tmp_path / "auth").absolute())
    for off in (settings_from({"auth": False}, data_root=str(tmp_path)), settings_from({}, auth=False)):
        assert not any("--auth-dir" in c.args for c in layout(off)[0])
    with pytest.raises(ConfigError, match="auth must be true or false"):
        settings_from({"auth": "yes"})


def test_up_creates_the_auth_dir_once_and_keeps_it(tmp_path):
    from shoal.platform.up import ensure_auth_dir

    auth = tmp_path / "auth"
    assert ensure_auth_dir(auth) is True
    key = (auth / "admin.key").read_text()
    assert (auth / "admin.key").stat().st_mode & 0o777 == 0o600
    assert ensure_auth_dir(auth) is False and (auth / "admin.key").read_text() == key


def test_up_runs_private_daemons_so_compute_has_both_backends(tmp_path):
    """A fresh machine with docker.io, libvirt and QEMU installed (scripts/setup): both healthy."""
    from shoal.testing.platform import Up, free_offset

    with Up(tmp_path / "root", free_offset(), "--only", "compute") as up:
        line = next(ln for ln in up.lines if ln.strip().startswith("compute "))
        assert "docker: available" in line and "kvm: available" in line, up.output
        assert (
            "private dockerd at unix://" in up.output
            and "private libvirtd at qemu:///system?socket=" in up.output
        )
        key = (tmp_path / "root" / "auth" / "admin.key").read_text().strip()
        url = next(c.url for c in up.children() if c.service == "compute")
        status = httpx.get(
            f"{url}/api/v1/compute/cluster/status", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert {b["status"] for b in status["backends"].values()} == {"healthy"}, status
    assert up.proc.returncode == 0
