"""Stores for the kv tests: every backend, in both threading modes of the disk ones."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.kv import KvStore, Limits, LmdbStore, MemoryStore, SqliteStore
from shoal.testing.etcd import EtcdCluster

# name -> (backend, durable). Durable disk stores commit on the writer thread, the others inline.
KINDS = {
    "memory": ("memory", False),
    "sqlite": ("sqlite", True),
    "sqlite-inline": ("sqlite", False),
    "lmdb": ("lmdb", True),
    "lmdb-inline": ("lmdb", False),
    "etcd": ("etcd", True),
}
_etcd: list[EtcdCluster] = []  # one real etcd for the session, started on first use


def shared_etcd() -> EtcdCluster:
    if not _etcd:
        _etcd.append(EtcdCluster(tempfile.mkdtemp(prefix="shoal-kv-etcd-")).start())
    return _etcd[0]


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_etcd():
    yield
    for cluster in _etcd:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


async def open_store(kind: str, path: Path, limits: Limits | None = None, **kw) -> KvStore:
    backend, durable = KINDS[kind]
    if backend == "memory":
        return MemoryStore(limits)
    if backend == "etcd":  # one namespace per directory: reopening the same path reopens the store
        from shoal.kv.etcd import EtcdStore

        namespace = "t" + hashlib.sha1(str(path).encode()).hexdigest()[:24]
        return await EtcdStore.open(
            shared_etcd().url, namespace=namespace, limits=limits, max_txn_ops=1024, max_request_bytes=8 << 20
        )
    if backend == "sqlite":
        return await SqliteStore.open(path / "kv.db", durable=durable, limits=limits, **kw)
    return await LmdbStore.open(path / "kv.lmdb", durable=durable, limits=limits, **kw)


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture
async def store(kind: str, tmp_path: Path) -> AsyncIterator[KvStore]:
    s = await open_store(kind, tmp_path)
    yield s
    await s.close()
