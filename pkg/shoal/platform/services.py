"""The services `shoal serve` and `shoal up` know, and how a service module plugs in.

A service module (e.g. shoal.storage.service) defines:

    TITLE = "Storage node"                     # for help and logs
    def add_arguments(parser) -> None          # its own flags (beyond --host/--port/--data-dir/--workers)
    def create_app(options: dict) -> ASGIApp   # options: every parsed flag, as a dict
    MAX_WORKERS = 1                            # optional: a service that must run in one process
    def check_options(options) -> None        # optional: raise SystemExit on bad flag combinations,
                                               # before granian starts any worker

A service whose module is not there yet is listed as unavailable, never an error at import.
Extra services (plug-ins, test fixtures) are added with SHOAL_SERVICE_MODULES="name=module,...".
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    module: str
    default_port: int
    description: str


SERVICES: dict[str, ServiceInfo] = {
    s.name: s
    for s in (
        ServiceInfo("state", "shoal.state.service", 3004, "State Service (peers, CIDRs, DNS, nodes, ...)"),
        ServiceInfo("kv", "shoal.kv.service", 8090, "versioned key-value store over HTTP"),
        ServiceInfo("metadata", "shoal.metadata.service", 8080, "video metadata, placement, redundancy"),
        ServiceInfo("storage", "shoal.storage.service", 8081, "storage node (superblock chunk store)"),
        ServiceInfo("uploader", "shoal.uploader.service", 8084, "video upload and chunking"),
        ServiceInfo("dashboard", "shoal.client.dashboard", 8888, "smart client dashboard"),
        ServiceInfo("compute", "shoal.compute.service", 8070, "unified compute API (Docker + KVM)"),
        ServiceInfo(
            "manager", "shoal.manager.service", 8080, "State Manager (supervision, litestream, JuiceFS)"
        ),
    )
}


for _item in filter(None, os.environ.get("SHOAL_SERVICE_MODULES", "").split(",")):
    _name, _, _module = _item.partition("=")
    SERVICES[_name] = ServiceInfo(_name, _module, 8000, f"plug-in service from {_module}")


def load_service(name: str) -> ModuleType:
    """The service module for `name`; ImportError when that service is not built yet."""
    info = SERVICES[name]
    return importlib.import_module(info.module)


@functools.cache
def accepts(name: str, flag: str) -> bool:
    """Whether `shoal serve <name>` takes `flag` (its module's add_arguments declares it)."""
    import argparse

    try:
        module = load_service(name)
    except ImportError:
        return False
    parser = argparse.ArgumentParser(add_help=False)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return flag in parser._option_string_actions


def available(name: str) -> bool:
    try:
        load_service(name)
    except ImportError:
        return False
    return True
