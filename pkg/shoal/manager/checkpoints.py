"""Checkpoints: a consistent database copy plus a copy of the filesystem, restorable later.

    tmp/checkpoints/<id>/metadata.json      what was saved, when, sizes, and the manifest
    tmp/checkpoints/<id>/database.sqlite    online-backup copy (db stack)
    tmp/checkpoints/<id>/mount/             the JuiceFS tree (juicefs stack)

The manifest (format 2) lists every file of the checkpoint with its size and SHA-256 (a
symlink with its target, a directory with its mode). `verify()` checks it before a restore
touches anything: a missing, truncated or changed file, an extra one, or a database snapshot
that fails SQLite's integrity check is a CheckpointError(409) naming the first problems, and
the live data stays as it was.

Crash safety:
- a checkpoint is built in a hidden temp directory and renamed into place: it is either
  there whole or not at all;
- the database is restored with the backup API into the live file, one transaction;
- the filesystem is restored through a journal at `<mount>/.shoal-restore/`: the checkpoint
  is copied to `new/`, then `READY` is written; only then are the current top-level entries
  moved to `old/` (then `OLD_MOVED`), and the entries of `new/` moved up. Renames within
  the mount are atomic. `recover()` rolls an interrupted restore back (no READY: the previous
  tree is untouched) or forward (READY: finish the swap).

All functions block; the manager calls them in a thread, one at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from shoal.manager import database
from shoal.manager.juicefs import SPECIAL

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JOURNAL = ".shoal-restore"
METADATA = "metadata.json"
FORMAT = 2


class CheckpointError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def validate_id(checkpoint_id: str) -> str:
    if not isinstance(checkpoint_id, str) or not ID_PATTERN.match(checkpoint_id) or ".." in checkpoint_id:
        raise CheckpointError(
            400, "checkpoint id must be 1-128 characters: letters, digits, '.', '_', '-'; no '..' or '/'"
        )
    return checkpoint_id


def _user_entries(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n not in SPECIAL and n != JOURNAL)


def _copy_tree(src: Path, dst: Path) -> dict[str, int]:
    """Copy the user's files (not JuiceFS's own) from src into dst, keeping modes and times."""
    dst.mkdir(parents=True, exist_ok=True)
    files = size = 0
    for name in _user_entries(src):
        s, d = src / name, dst / name
        if s.is_symlink() or not s.is_dir():
            shutil.copy2(s, d, follow_symlinks=False)
        else:
            shutil.copytree(s, d, symlinks=True, copy_function=shutil.copy2)
    for dirpath, _dirs, names in os.walk(dst):
        for n in names:
            files += 1
            try:
                size += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    shutil.copystat(src, dst)
    return {"files": files, "bytes": size}


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest(work: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {type, bytes, sha256 | target | mode}} of every entry under `work`
    (metadata.json excluded)."""
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirs, names in os.walk(work):
        for name in sorted(dirs + names):
            full = Path(dirpath) / name
            rel = full.relative_to(work).as_posix()
            if rel == METADATA:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = {"type": "symlink", "target": os.readlink(full)}
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = {"type": "dir", "mode": stat.S_IMODE(st.st_mode)}
            else:
                out[rel] = {"type": "file", "bytes": st.st_size, "sha256": _sha256(full)}
    return out


def _integrity(snapshot: Path) -> str | None:
    """None when SQLite finds the snapshot sound, else what it says."""
    try:
        conn = sqlite3.connect(f"file:{snapshot}?mode=ro&immutable=1", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    text = "; ".join(str(r[0]) for r in result[:5])
    return None if text == "ok" else text


def verify(root: Path, checkpoint_id: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a checkpoint against its manifest before restoring it; its metadata, or
    CheckpointError(409) with the reasons (nothing is changed either way)."""
    meta = meta or load(root, checkpoint_id)
    folder = root / checkpoint_id
    expected = meta.get("manifest")
    if not isinstance(expected, dict):
        raise CheckpointError(
            409,
            f"checkpoint {checkpoint_id!r} has no manifest (format {meta.get('format')}); it cannot be verified",
        )
    problems: list[str] = []
    try:
        actual = manifest(folder)
    except OSError as exc:
        raise CheckpointError(409, f"checkpoint {checkpoint_id!r} is unreadable: {exc}") from None
    for rel, want in sorted(expected.items()):
        got = actual.get(rel)
        if got is None:
            problems.append(f"{rel} is missing")
        elif got.get("type") != want.get("type"):
            problems.append(f"{rel} is a {got.get('type')}, expected a {want.get('type')}")
        elif want.get("type") == "file" and got.get("bytes") != want.get("bytes"):
            problems.append(f"{rel} has {got.get('bytes')} bytes, expected {want.get('bytes')}")
        elif got != want and want.get("type") != "dir":
            problems.append(f"{rel} does not match its checksum")
    for rel in sorted(set(actual) - set(expected)):
        problems.append(f"{rel} is not in the manifest")
    if "database" in meta and not problems:
        bad = _integrity(folder / meta["database"]["file"])
        if bad:
            problems.append(f"the database snapshot fails SQLite's integrity check: {bad}")
    if "database" in meta and "database.sqlite" not in expected:
        problems.append("the manifest lacks the database snapshot its metadata names")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            409, f"checkpoint {checkpoint_id!r} is corrupt or incomplete: " + "; ".join(problems[:5]) + more
        )
    return meta


def delete(root: Path, checkpoint_id: str) -> None:
    """Remove a checkpoint: renamed out of sight first (atomic), then removed."""
    validate_id(checkpoint_id)
    folder = root / checkpoint_id
    if not (folder / METADATA).exists() and not folder.exists():
        raise CheckpointError(404, f"checkpoint {checkpoint_id!r} not found")
    trash = root / f".{checkpoint_id}.deleted-{uuid.uuid4().hex[:8]}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def create(root: Path, checkpoint_id: str, db_path: Path | None, mount: Path | None) -> dict[str, Any]:
    """Build checkpoint `checkpoint_id` under root (tmp/checkpoints); its metadata."""
    validate_id(checkpoint_id)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_id
    if final.exists():
        raise CheckpointError(409, f"checkpoint {checkpoint_id!r} already exists")
    work = root / f".{checkpoint_id}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        meta: dict[str, Any] = {"id": checkpoint_id, "created_at": time.time(), "format": FORMAT}
        if db_path is not None:
            database.backup(db_path, work / "database.sqlite")
            meta["database"] = {"file": "database.sqlite", "bytes": (work / "database.sqlite").stat().st_size}
        if mount is not None:
            meta["filesystem"] = {"dir": "mount", **_copy_tree(mount, work / "mount")}
        meta["manifest"] = manifest(work)
        (work / METADATA).write_text(json.dumps(meta, indent=2))
        _fsync_tree(work)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return meta


def load(root: Path, checkpoint_id: str) -> dict[str, Any]:
    validate_id(checkpoint_id)
    meta_file = root / checkpoint_id / METADATA
    try:
        return json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(404, f"checkpoint {checkpoint_id!r} not found") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(409, f"checkpoint {checkpoint_id!r} is unreadable: {exc}") from None


def list_ids(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / METADATA).exists())


def describe(root: Path) -> list[dict[str, Any]]:
    """Each checkpoint's id, time, format and sizes (not its manifest)."""
    out = []
    for cid in list_ids(root):
        try:
            meta = load(root, cid)
        except CheckpointError as exc:
            out.append({"id": cid, "error": str(exc)})
            continue
        files = [v for v in (meta.get("manifest") or {}).values() if v.get("type") == "file"]
        out.append(
            {
                "id": cid,
                "created_at": meta.get("created_at"),
                "format": meta.get("format"),
                "database": "database" in meta,
                "filesystem": "filesystem" in meta,
                "files": len(files),
                "bytes": sum(int(v.get("bytes") or 0) for v in files),
            }
        )
    return out


def restore_database(root: Path, checkpoint_id: str, db_path: Path) -> bool:
    snapshot = root / checkpoint_id / "database.sqlite"
    if not snapshot.exists():
        return False
    database.restore_into(snapshot, db_path)
    return True


def restore_filesystem(root: Path, checkpoint_id: str, mount: Path) -> bool:
    source = root / checkpoint_id / "mount"
    if not source.exists():
        return False
    recover(mount)  # finish or undo an earlier interrupted restore first
    journal = mount / JOURNAL
    shutil.rmtree(journal, ignore_errors=True)
    (journal / "new").mkdir(parents=True)
    _copy_tree(source, journal / "new")
    _fsync_tree(journal / "new")
    (journal / "READY").write_text(checkpoint_id)
    recover(mount)
    return True


def recover(mount: Path) -> str:
    """Finish (READY written) or undo (not written) an interrupted filesystem restore."""
    journal = mount / JOURNAL
    if not journal.exists():
        return "clean"
    if not (journal / "READY").exists():
        shutil.rmtree(journal, ignore_errors=True)
        return "rolled back"
    old, new = journal / "old", journal / "new"
    if not (journal / "OLD_MOVED").exists():
        old.mkdir(exist_ok=True)
        for name in _user_entries(mount):
            os.rename(mount / name, old / name)
        (journal / "OLD_MOVED").write_text("")
    for name in sorted(os.listdir(new)):
        os.rename(new / name, mount / name)
    shutil.copystat(new, mount)
    shutil.rmtree(journal, ignore_errors=True)
    return "rolled forward"
