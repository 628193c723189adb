"""Open the store a service is configured with, so every service takes the same flags.

    add_store_arguments(parser)                    # --store lmdb|sqlite|etcd, --etcd URL, --etcd-namespace
    kv = await open_store(options["store"], data_dir, options.get("etcd"), name="state",
                          namespace=options.get("etcd_namespace"))

With `--store etcd`, several processes (on several machines) given the same etcd and namespace
share one store; the file backends keep it in `data_dir`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import KvStore
from .model import Limits

STORE_KINDS = ("memory", "sqlite", "lmdb", "etcd")


def add_store_arguments(
    parser: Any, *, default: str = "lmdb", kinds: Sequence[str] = ("lmdb", "sqlite", "etcd")
) -> None:
    """--store, --etcd and --etcd-namespace on an argparse parser."""
    parser.add_argument(
        "--store", choices=list(kinds), default=default, help=f"kv backend (default {default})"
    )
    parser.add_argument(
        "--etcd",
        metavar="URL[,URL...]",
        default=None,
        help="etcd client URLs for --store etcd, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379",
    )
    parser.add_argument(
        "--etcd-namespace",
        default=None,
        help="namespace in etcd (default: the service's name); processes sharing it share the data",
    )


async def open_store(
    kind: str,
    data_dir: str | Path | None,
    etcd: str | Sequence[str] | None = None,
    *,
    name: str = "kv",
    namespace: str | None = None,
    durable: bool = True,
    limits: Limits | None = None,
    files: Mapping[str, str] | None = None,
    **etcd_options: Any,
) -> KvStore:
    """The store of `kind`: a file `<name>.db` / `<name>.lmdb` in data_dir, or namespace `name` in etcd.

    files: other file names per backend ({"sqlite": "metadata.sqlite"}) for services whose data
    predates this helper. etcd_options go to EtcdStore.open (timeout, compact, ...).
    """
    files = dict(files or {})
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(limits)
    if kind == "etcd":
        if not etcd:
            raise ValueError("--store etcd needs the etcd endpoints (--etcd http://host:2379[,...])")
        from .etcd import EtcdStore

        return await EtcdStore.open(etcd, namespace=namespace or name, limits=limits, **etcd_options)
    if data_dir is None:
        raise ValueError(f"--store {kind} needs a data directory")
    root = Path(data_dir)
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    if kind == "sqlite":
        from .sqlite_store import SqliteStore

        return await SqliteStore.open(
            root / files.get("sqlite", f"{name}.db"), durable=durable, limits=limits
        )
    if kind == "lmdb":
        from .lmdb_store import LmdbStore

        return await LmdbStore.open(root / files.get("lmdb", f"{name}.lmdb"), durable=durable, limits=limits)
    raise ValueError(f"unknown store {kind!r} (one of {', '.join(STORE_KINDS)})")
