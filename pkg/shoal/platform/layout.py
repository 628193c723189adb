"""The one-machine layout `shoal up`, `shoal status`, `shoal demo` and the nginx config share.

Every process of the platform, its port, flags and data directory, computed from defaults, an
optional config file (TOML or JSON, see docs/deploy.md) and command-line flags, so the three
commands agree on the URLs for any --port-offset. Services are handed each other's URLs here
(storage nodes, the uploader and the dashboard get --metadata-url), offset applied. Each process
also carries its liveness settings (`[liveness]`, overridden by `[services.<name>.liveness]`):
how `shoal up` tells a hung service from a slow one.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.platform.services import SERVICES, accepts, available

# Default ports of the layout. Storage nodes skip 8084 (the uploader's); the manager's own
# default (8080) is the metadata service's, so it moves to 8087 here.
PORTS = {
    "state": 3004,
    "kv": 8090,
    "metadata": 8080,
    "uploader": 8084,
    "dashboard": 8888,
    "compute": 8070,
    "manager": 8087,
}
STORAGE_PORTS = (8081, 8082, 8083, 8085, 8086)  # five nodes: Reed-Solomon 3+2 needs five
# What the State Manager supervises unless told otherwise: a harmless idle Python process.
IDLE_COMMAND = [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]
PREFIXES = {  # path prefixes behind a reverse proxy (storage-N -> /storage/N/)
    "state": "/state",
    "kv": "/kv",
    "metadata": "/metadata",
    "uploader": "/uploader",
    "dashboard": "/dashboard",
    "compute": "/compute",
    "manager": "/manager",
}

_TOP = {
    "data_root",
    "host",
    "port_offset",
    "only",
    "admin_address",
    "forwarded_allow_ips",
    "services",
    "liveness",
    "auth",
}
_PER_SERVICE = {"enabled", "port", "args", "liveness"}
_EXTRA = {"storage": {"ports"}, "manager": {"command"}}


class ConfigError(ValueError):
    """The config file (or a flag) is not a valid layout; the message says which key and why."""


@dataclass(frozen=True)
class Liveness:
    """When `shoal up` restarts a service that runs but no longer answers (deadlock, SIGSTOP).

    `GET /health` every `interval` s, each allowed `timeout` s; failures in the first `grace` s
    after a (re)start do not count (a service still starting is not fought); `failures` in a
    row after that kill its process group (SIGTERM, SIGKILL after `kill_timeout` s) and restart
    it with the exit path's backoff. `enabled = false` keeps probing for the summary but never
    kills (e.g. while a debugger holds the process).
    """

    enabled: bool = True
    interval: float = 2.0
    timeout: float = 2.0
    grace: float = 60.0
    failures: int = 3
    kill_timeout: float = 5.0


_LIVENESS_KEYS = {f for f in Liveness.__dataclass_fields__}


@dataclass
class Settings:
    data_root: str = "./shoal-data"
    host: str = "127.0.0.1"
    port_offset: int = 0
    only: list[str] = field(default_factory=list)
    admin_address: str | None = None
    forwarded_allow_ips: str = ""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    liveness: dict[str, Any] = field(default_factory=dict)  # the [liveness] table, checked
    auth: bool = True  # DATA_ROOT/auth (`shoal auth init`) handed to every service as --auth-dir

    @property
    def auth_dir(self) -> Path | None:
        return Path(self.data_root) / "auth" if self.auth else None

    def service(self, name: str) -> dict[str, Any]:
        return self.services.get(name, {})

    def liveness_for(self, name: str) -> Liveness:
        """[liveness] defaults, then [services.<name>.liveness] on top (storage: every node)."""
        return Liveness(**{**self.liveness, **self.service(name).get("liveness", {})})

    def port(self, name: str) -> int:
        default = PORTS.get(name) or SERVICES[name].default_port
        return int(self.service(name).get("port", default)) + self.port_offset

    def storage_ports(self) -> list[int]:
        return [p + self.port_offset for p in self.service("storage").get("ports", STORAGE_PORTS)]

    @property
    def reach(self) -> str:
        """The address other processes use to reach a service listening on `host`."""
        if self.host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    def url(self, name: str) -> str:
        return f"http://{self.reach}:{self.port(name)}"


@dataclass
class Child:
    """One process of the layout."""

    name: str  # unique: "metadata", "storage-3"
    service: str  # `shoal serve <service>`
    port: int
    args: list[str]
    data_dir: str
    url: str
    prefix: str  # behind a reverse proxy
    notes: list[str] = field(default_factory=list)
    liveness: Liveness = field(default_factory=Liveness)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file (by its suffix; anything else is tried as both)."""
    text = Path(path).read_text()
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            try:
                data = json.loads(text)
            except ValueError:
                data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    return data


def settings_from(config: dict[str, Any], **flags: Any) -> Settings:
    """Settings from a config dict, then every flag that is not None on top."""
    unknown = set(config) - _TOP
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_TOP))}")
    merged = {**config, **{k: v for k, v in flags.items() if v is not None}}
    s = Settings()
    for key in ("data_root", "host", "forwarded_allow_ips"):
        if key in merged:
            s.__dict__[key] = _typed(key, merged[key], str)
    if "admin_address" in merged:
        s.admin_address = _typed("admin_address", merged["admin_address"], str) or None
    if "port_offset" in merged:
        s.port_offset = _typed("port_offset", merged["port_offset"], int)
    if "auth" in merged:
        if not isinstance(merged["auth"], bool):
            raise ConfigError(f"auth must be true or false, not {merged['auth']!r}")
        s.auth = merged["auth"]
    only = merged.get("only", [])
    s.only = [x for x in (only.split(",") if isinstance(only, str) else _str_list("only", only)) if x]
    s.services = _services(merged.get("services", {}))
    s.liveness = _liveness("liveness", merged.get("liveness", {}))
    known = set(SERVICES) | {f"storage-{i + 1}" for i in range(len(s.storage_ports()))}
    for name in s.only:
        if name not in known:
            raise ConfigError(f"only: unknown service {name!r}; known: {', '.join(sorted(known))}")
    for p in [*(s.port(n) for n in SERVICES if n != "storage"), *s.storage_ports()]:
        if not 0 < p < 65536:
            raise ConfigError(f"port {p} is out of range (check port_offset {s.port_offset})")
    return s


def _typed(key: str, value: Any, typ: type) -> Any:
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a {typ.__name__}, not {value!r}")
    return value


def _str_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, not {value!r}")
    return value


def _services(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ConfigError("services must be a table: [services.<name>]")
    out: dict[str, dict[str, Any]] = {}
    for name, conf in raw.items():
        if name not in SERVICES:
            raise ConfigError(f"services.{name}: unknown service; known: {', '.join(SERVICES)}")
        if not isinstance(conf, dict):
            raise ConfigError(f"services.{name} must be a table")
        allowed = (_PER_SERVICE - {"port"} if name == "storage" else _PER_SERVICE) | _EXTRA.get(name, set())
        bad = set(conf) - allowed
        if bad:
            raise ConfigError(
                f"services.{name}: unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(allowed))}"
            )
        where = f"services.{name}"
        if "enabled" in conf and not isinstance(conf["enabled"], bool):
            raise ConfigError(f"{where}.enabled must be true or false")
        if "port" in conf:
            _typed(f"{where}.port", conf["port"], int)
        if "args" in conf:
            _str_list(f"{where}.args", conf["args"])
        if "ports" in conf:
            ports = conf["ports"]
            if not isinstance(ports, list) or not ports or not all(type(p) is int for p in ports):
                raise ConfigError(f"{where}.ports must be a non-empty list of port numbers")
        if "liveness" in conf:
            conf = {**conf, "liveness": _liveness(f"{where}.liveness", conf["liveness"])}
        if "command" in conf and (
            not _str_list(f"{where}.command", conf["command"]) or not conf["command"][0]
        ):
            raise ConfigError(f"{where}.command must name a program")
        out[name] = dict(conf)
    return out


def _liveness(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table: [{where}]")
    bad = set(raw) - _LIVENESS_KEYS
    if bad:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(_LIVENESS_KEYS))}"
        )
    for key, value in raw.items():
        name = f"{where}.{key}"
        if key == "enabled":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false")
        elif key == "failures":
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a whole number of probes, at least 1, not {value!r}")
        elif (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (value >= 0 if key == "grace" else value > 0)
        ):
            least = "0 or more" if key == "grace" else "more than 0"
            raise ConfigError(f"{name} must be a number of seconds, {least}, not {value!r}")
    return {k: float(v) if k not in ("enabled", "failures") else v for k, v in raw.items()}


def layout(s: Settings, *, check_built: bool = True) -> tuple[list[Child], list[str]]:
    """The processes to run, and the services left out because they are not built."""
    children: list[Child] = []
    missing: list[str] = []
    meta_url = s.url("metadata")
    root = Path(s.data_root)
    for name in SERVICES:
        conf = s.service(name)
        if conf.get("enabled") is False:
            continue
        if name == "storage":
            instances = [(f"storage-{i + 1}", p) for i, p in enumerate(s.storage_ports())]
        else:
            instances = [(name, s.port(name))]
        wanted = [(n, p) for n, p in instances if not s.only or name in s.only or n in s.only]
        if not wanted:
            continue
        if check_built and not available(name):
            missing.append(name)
            continue
        for inst, port in wanted:
            args, notes, data_dir = _service_args(s, name, inst, meta_url, root)
            if s.auth_dir is not None and accepts(name, "--auth-dir"):
                args += ["--auth-dir", str(s.auth_dir.absolute())]
            args += list(conf.get("args", []))
            if s.forwarded_allow_ips:
                args += ["--forwarded-allow-ips", s.forwarded_allow_ips]
            if name == "manager":  # its command comes last: everything after "--" is the child's
                args += ["--", *conf.get("command", IDLE_COMMAND)]
            prefix = PREFIXES.get(name) or (
                f"/storage/{inst.split('-')[1]}" if name == "storage" else f"/{name}"
            )
            url = f"http://{s.reach}:{port}"
            live = s.liveness_for(name)
            children.append(Child(inst, name, port, args, str(data_dir), url, prefix, notes, live))
    return children, missing


def _service_args(
    s: Settings, name: str, inst: str, meta_url: str, root: Path
) -> tuple[list[str], list[str], Path]:
    data_dir = root / inst
    if name == "state":  # with auth on it also gets --auth-dir (layout(): accepts("--auth-dir"))
        args, notes = [], []
        if s.auth_dir is not None:
            notes.append(
                f"authenticated: Bearer <API key> (admin: {s.auth_dir / 'admin.key'}) or Sign-In with Ethereum"
            )
        if s.admin_address:
            args += ["--admin-address", s.admin_address]
            notes.append(f"admin: {s.admin_address}")
        if not args and s.auth_dir is None:
            args.append("--insecure-dev")
            notes.append(
                "!!! INSECURE DEV MODE: authentication is DISABLED (--no-auth; use --admin-address 0x...)"
            )
        return args, notes, data_dir
    if name == "storage":
        node_url = f"http://{s.reach}:{s.storage_ports()[int(inst.split('-')[1]) - 1]}"
        return ["--node-id", inst, "--node-url", node_url, "--metadata-url", meta_url], [], data_dir
    if name in ("uploader", "dashboard"):
        return ["--metadata-url", meta_url], [], data_dir
    if name == "manager":
        tmp = root / "manager" / "tmp"
        args = ["--tmp-dir", str(tmp), "--stop-timeout", "10", "--shutdown-timeout", "45"]
        command = s.service("manager").get("command")
        note = "supervising: " + (" ".join(command) if command else "an idle Python loop (the default)")
        return args, [note], root / "manager" / "data"
    return [], [], data_dir
