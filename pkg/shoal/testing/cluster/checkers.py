"""The checkers besides linearizability: each takes a history (and what was read after healing)
and returns a list of anomalies, empty when the property holds.

- lost_kv_writes: every acknowledged kv write is still there (or overwritten by a later version);
- lost_documents: every acknowledged State create exists after healing, holding its last
  acknowledged update or an update whose outcome was unknown;
- plays_exact: every play of an acknowledged upload returned exactly the expected bytes;
- nodes_equal: the State nodes answer the same listings once healed;
- instances_once: no compute instance name exists twice, and no acknowledged create is lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from shoal.testing.cluster.history import OK, UNKNOWN, Op


def lost_kv_writes(history: Iterable[Op], final: Mapping[str, tuple[Any, int]]) -> list[str]:
    """`final[key]` = (value, version) read after healing. An acked write at version v is lost
    if the key's version is now below v, or is v with another value."""
    out = []
    for op in history:
        if op.f not in ("write", "cas", "txn") or op.outcome != OK:
            continue
        if op.f == "txn":  # each set of an acked txn, at the version its answer gave
            writes = [
                (k, v, ver) for (kind, k, v), ver in zip(op.value, op.result, strict=True) if kind == "set"
            ]
        else:
            writes = [(op.key, op.value if op.f == "write" else op.value[1], op.result)]
        for key, value, version in writes:
            now_value, now_version = final.get(key, (None, 0))
            if now_version < version or (now_version == version and now_value != value):
                out.append(f"{key}: acked {op.f} of {value!r} at version {version} (op {op.index}) lost;"
                           f" now {now_value!r} at version {now_version}")  # fmt: skip
    return out


def lost_documents(history: Iterable[Op], final: Mapping[str, Mapping[str, Any]], field: str) -> list[str]:
    """State documents: `final[id]` is the document read after healing. Each document is updated
    by one client at a time, so its `field` must hold the last acknowledged value or one whose
    outcome was unknown (an unknown update may still land later, by last-writer-wins)."""
    acked: dict[str, Any] = {}
    maybe: dict[str, set] = {}
    for op in history:
        if op.f not in ("create", "update"):
            continue
        doc_id = op.result if op.f == "create" else op.key
        if op.outcome == OK and doc_id:
            acked[doc_id] = op.value
        elif op.outcome == UNKNOWN and op.f == "update":
            maybe.setdefault(op.key, set()).add(op.value)
    out = []
    for doc_id, value in acked.items():
        doc = final.get(doc_id)
        if doc is None:
            out.append(f"{doc_id}: acknowledged, missing after healing")
        elif doc.get(field) != value and doc.get(field) not in maybe.get(doc_id, ()):
            out.append(f"{doc_id}: {field}={doc.get(field)!r}, last acknowledged {value!r}")
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plays_exact(history: Iterable[Op], expected: Mapping[str, str]) -> list[str]:
    """Every `play` op that finished ok carries the sha256 of the bytes played (`result`); it must
    be the expected stream's for that video (`expected[video_id]`)."""
    out = []
    for op in history:
        if op.f == "play" and op.outcome == OK:
            want = expected.get(op.key)
            if want is None:
                out.append(f"play of {op.key}: no expected bytes (not an acknowledged upload)")
            elif op.result != want:
                out.append(f"play of {op.key} (op {op.index}) returned sha256 {op.result}, expected {want}")
    return out


def acked_uploads_played(history: Iterable[Op]) -> list[str]:
    """An acknowledged upload must play after healing (a final `play` op per upload, ok)."""
    ops = list(history)
    uploaded = {op.result for op in ops if op.f == "upload" and op.outcome == OK}
    final_ok = {op.key for op in ops if op.f == "play" and op.outcome == OK and op.node == "final"}
    return [
        f"upload {vid}: acknowledged but does not play after healing" for vid in sorted(uploaded - final_ok)
    ]


def nodes_equal(listings: Mapping[str, Mapping[str, list[dict]]]) -> list[str]:
    """`listings[node][kind]` = that node's full listing; every node must answer the same."""
    names = list(listings)
    if not names:
        return []
    out = []
    ref = names[0]
    for other in names[1:]:
        for kind in sorted(set(listings[ref]) | set(listings[other])):
            a = {d.get("id", d.get("domain")): d for d in listings[ref].get(kind, [])}
            b = {d.get("id", d.get("domain")): d for d in listings[other].get(kind, [])}
            for doc_id in sorted(set(a) | set(b), key=str):
                if a.get(doc_id) != b.get(doc_id):
                    out.append(f"{kind}/{doc_id}: {ref} has {a.get(doc_id)}, {other} has {b.get(doc_id)}")
    return out


def instances_once(history: Iterable[Op], listings: Mapping[str, list[dict]], prefix: str) -> list[str]:
    """Compute creates (`create` ops: key = the name asked for; ok result = {"id", "node"}) against
    every node's full listing after healing, for the names starting with `prefix`:
    - no name is held by two instances, in any listing, and no two creates of one name were
      both acknowledged (created twice);
    - every node lists the same instances (id, name, owner);
    - every acknowledged create is listed under its name with the id it was acknowledged with;
    - every listed instance was asked for by some create that was ok or unknown."""
    ops = [op for op in history if op.f == "create"]
    acked: dict[str, list[Op]] = {}
    asked = {op.key for op in ops if op.outcome in (OK, UNKNOWN)}
    for op in ops:
        if op.outcome == OK:
            acked.setdefault(op.key, []).append(op)
    out = []
    for name, done in sorted(acked.items()):
        if len(done) > 1:
            out.append(f"{name}: created twice, acknowledged {len(done)} times "
                       f"(ids {[op.result['id'] for op in done]})")  # fmt: skip
    views = {}
    for node, instances in sorted(listings.items()):
        mine = [i for i in instances if str(i.get("name", "")).startswith(prefix)]
        by_name: dict[str, list[dict]] = {}
        for inst in mine:
            by_name.setdefault(inst["name"], []).append(inst)
        for name, insts in sorted(by_name.items()):
            if len(insts) > 1:
                out.append(f"{name}: exists {len(insts)} times on {node} (ids {[i['id'] for i in insts]})")
            if name not in asked:
                out.append(f"{name}: listed on {node} but no create of it was ok or unknown")
        for name, done in sorted(acked.items()):
            ids = [i["id"] for i in by_name.get(name, [])]
            for op in done:
                if op.result["id"] not in ids:
                    out.append(f"{name}: acknowledged create (id {op.result['id']}, op {op.index}) lost;"
                               f" {node} lists {ids or 'nothing'}")  # fmt: skip
        views[node] = sorted((i["id"], i["name"], (i.get("node") or {}).get("id")) for i in mine)
    names = list(views)
    for other in names[1:]:
        if views[other] != views[names[0]]:
            diff = set(views[other]) ^ set(views[names[0]])
            out.append(f"{names[0]} and {other} list different instances: {sorted(diff)[:10]}")
    return out
