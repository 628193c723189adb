"""Pick the compiled hot path when it is there, its pure-Python twin otherwise.

Every ext/<name>.pyx is built into shoal._ext.<name> and has a twin shoal._pure.<name>
with the same API. SHOAL_PURE_PYTHON=1 forces the twins (tests use it to check both agree).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

HOT_PATHS = ("scoring", "superblock", "crdt", "erasure", "kvrecord")


def pure_forced() -> bool:
    return os.environ.get("SHOAL_PURE_PYTHON", "") not in ("", "0")


def native(name: str) -> ModuleType | None:
    """The compiled module, or None when it was not built."""
    try:
        return importlib.import_module(f"shoal._ext.{name}")
    except ImportError:
        return None


def pure(name: str) -> ModuleType:
    return importlib.import_module(f"shoal._pure.{name}")


def load(name: str) -> ModuleType:
    """The module to use for hot path `name`: native unless forced pure or not built."""
    if not pure_forced():
        mod = native(name)
        if mod is not None:
            return mod
    return pure(name)


def implementation(name: str) -> str:
    """'native', 'pure-python' or 'missing' for hot path `name`, as load() would choose."""
    mod_name = load(name).__name__ if _exists(name) else ""
    if not mod_name:
        return "missing"
    return "native" if mod_name.startswith("shoal._ext.") else "pure-python"


def _exists(name: str) -> bool:
    try:
        load(name)
    except ImportError:
        return False
    return True
