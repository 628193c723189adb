"""`shoal doctor`: which hot paths run native code, and which real components are installed."""

from __future__ import annotations

import os
import shutil
import sys

import orjson

from shoal import __version__
from shoal._native import HOT_PATHS, implementation
from shoal.platform.services import SERVICES, available


def _dockerd() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and os.path.exists(host[7:]):
        return f"socket {host}"
    return "installed (not running)" if shutil.which("dockerd") else "missing"


def _libvirt() -> str:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "python binding missing (pip install 'shoal[kvm]')"
    qemu = shutil.which("qemu-system-x86_64")
    return "libvirt-python" + (", qemu-system-x86_64" if qemu else ", qemu missing")


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (
            os.path.join(os.path.dirname(sys.executable), name)
            if os.path.exists(os.path.join(os.path.dirname(sys.executable), name))
            else None
        )
        if path:
            return path
    return "missing"


def _erasure() -> str:
    from shoal import erasure

    return f"{erasure.backend()} backend, coded with {erasure.engine()}"


def report() -> dict:
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "hot_paths": {name: implementation(name) for name in HOT_PATHS},
        "erasure": _erasure(),
        "pure_python_forced": os.environ.get("SHOAL_PURE_PYTHON", "") not in ("", "0"),
        "services": {name: "built" if available(name) else "not built" for name in SERVICES},
        "components": {
            "dockerd": _dockerd(),
            "libvirt": _libvirt(),
            "ffmpeg": _binary("ffmpeg"),
            "litestream": _binary("litestream"),
            "juicefs": _binary("juicefs"),
            "s3 server": _binary("weed", "moto_server"),
            "etcd": _binary("etcd"),
            "chromium": _binary("chromium"),
        },
    }


def run_doctor(as_json: bool = False) -> int:
    data = report()
    if as_json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"shoal {data['version']} on Python {data['python']}")
    print("hot paths:" + (" (SHOAL_PURE_PYTHON forces the twins)" if data["pure_python_forced"] else ""))
    for name, impl in data["hot_paths"].items():
        print(f"  {name:<12} {impl}")
    print(f"erasure: {data['erasure']}")
    print("services:")
    for name, state in data["services"].items():
        print(f"  {name:<12} {state}")
    print("components:")
    for name, state in data["components"].items():
        print(f"  {name:<12} {state}")
    return 0
