"""The auth dir: the cluster secret(s) and the API-key table, one JSON file every process reads.

    D/auth.json   {"version": 1, "secrets": [...], "keys": [...]}   mode 0600, replaced atomically
    D/auth.lock   flock taken by every writer (two `shoal auth key create` never lose a key)
    D/admin.key   the first admin key, mode 0600 (`shoal auth init` prints it once too)

An API key is `shoal_<id>_<secret>`: a 16-hex-digit id to look the record up, then 256 random
bits. Only SHA-256 of the whole key is stored. A fast hash is right here: the key is random,
so there is no dictionary to try, and a slow KDF (argon2, bcrypt) would only cost every request.

Why a file and not shoal.kv: every service (storage nodes on other machines included) needs
the table without depending on a kv service being up, and a file replaced by rename is seen
whole or not at all. Readers (`KeyTable`) stat the file at most every 0.5 s and reload when its
inode, size or mtime changed, so a revocation reaches every process within about 0.5 s of the
write. Rotating the cluster secret keeps the previous one accepted until it is retired.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from shoal.web.auth import tokens
from shoal.web.auth.roles import AuthError, Principal, check_role

FILE = "auth.json"
LOCK = "auth.lock"
ADMIN_KEY = "admin.key"
PREFIX = "shoal_"
_KEY = re.compile(r"^shoal_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")


class AuthDirError(Exception):
    """The auth dir is missing, not initialised, or refused a change (CLI shows the message)."""


@dataclass
class KeyRecord:
    id: str
    name: str
    role: str
    hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """What `key list` shows: everything but the hash."""
        d = asdict(self)
        d.pop("hash")
        d["state"] = self.state()
        return d


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_key(key: str) -> str | None:
    """The key id of a well-formed API key, else None (then it may be a JWT)."""
    m = _KEY.match(key)
    return m.group(1) if m else None


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def load(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise AuthDirError(
            f"{directory} is not an auth dir (no {FILE}); run `shoal auth init --dir {directory}`"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise AuthDirError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not data.get("secrets"):
        raise AuthDirError(f"{path} is not a version-1 auth file with a cluster secret")
    return data


class AuthDir:
    """Writers' side: init, issue, revoke, rotate (the `shoal auth` command uses this)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.file = self.dir / FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        with self._locked():
            data = load(self.dir)
            result = change(data)
            _write_atomic(self.file, orjson.dumps(data, option=orjson.OPT_INDENT_2))
            return result

    def init(self) -> str:
        """Create the dir (0700), a cluster secret and an admin key; returns the admin key."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        with self._locked():
            if self.file.exists():
                raise AuthDirError(f"{self.dir} is already initialised ({FILE} exists)")
            record, key = self._record("admin", "admin", None)
            data = {"version": 1, "secrets": [self._secret()], "keys": [asdict(record)]}
            _write_atomic(self.dir / ADMIN_KEY, key.encode() + b"\n")
            _write_atomic(self.file, orjson.dumps(data, option=orjson.OPT_INDENT_2))
        return key

    @staticmethod
    def _secret() -> dict[str, Any]:
        return {"id": secrets.token_hex(4), "value": secrets.token_hex(32), "created_at": time.time()}

    @staticmethod
    def _record(role: str, name: str, expires_in: float | None) -> tuple[KeyRecord, str]:
        check_role(role)
        if not _NAME.match(name):
            raise AuthDirError(
                f"key name {name!r}: 1-64 of letters, digits and ._@:- (starting alphanumeric)"
            )
        key_id, key = new_key()
        now = time.time()
        expires = None if expires_in is None else now + expires_in
        return KeyRecord(key_id, name, role, hash_key(key), now, expires), key

    def create_key(self, role: str, name: str, expires_in: float | None = None) -> tuple[KeyRecord, str]:
        """A new key (the only time it exists in clear); names are unique among active keys."""
        try:
            record, key = self._record(role, name, expires_in)
        except ValueError as exc:
            raise AuthDirError(str(exc)) from None

        def add(data: dict[str, Any]) -> None:
            for k in data["keys"]:
                if k["name"] == name and KeyRecord(**k).state() == "active":
                    raise AuthDirError(f"an active key is already named {name!r} (revoke it first)")
            data["keys"].append(asdict(record))

        self._update(add)
        return record, key

    def keys(self) -> list[KeyRecord]:
        return [KeyRecord(**k) for k in load(self.dir)["keys"]]

    def revoke(self, id_or_name: str) -> list[KeyRecord]:
        """Revoke the key with this id, or the active keys with this name; AuthDirError if none."""

        def mark(data: dict[str, Any]) -> list[KeyRecord]:
            now = time.time()
            hit = []
            for k in data["keys"]:
                if k["revoked_at"] is None and id_or_name in (k["id"], k["name"]):
                    k["revoked_at"] = now
                    hit.append(KeyRecord(**k))
            if not hit:
                raise AuthDirError(f"no unrevoked key has the id or name {id_or_name!r}")
            return hit

        return self._update(mark)

    def rotate_secret(self) -> str:
        """Add a new cluster secret (used for signing from now on); the old ones still verify."""

        def add(data: dict[str, Any]) -> str:
            s = self._secret()
            data["secrets"].insert(0, s)
            return s["id"]

        return self._update(add)

    def retire_secrets(self) -> int:
        """Drop every cluster secret but the newest; returns how many were dropped."""

        def drop(data: dict[str, Any]) -> int:
            gone = len(data["secrets"]) - 1
            del data["secrets"][1:]
            return gone

        return self._update(drop)


class KeyTable:
    """Readers' side: the table as this process last saw it, refreshed at most every `interval` s."""

    def __init__(self, directory: str | Path, interval: float = 0.5) -> None:
        self.dir = Path(directory)
        self.file = self.dir / FILE
        self.interval = interval
        self._checked = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, KeyRecord] = {}
        self._secrets: list[bytes] = []
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return
        self._checked = now
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            if force:
                load(self.dir)  # raises the AuthDirError that says what to run
            return  # keep the last good table rather than lock everyone out mid-rewrite
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            data = load(self.dir)
        except AuthDirError:
            if force:
                raise
            return
        self._keys = {k["id"]: KeyRecord(**k) for k in data["keys"]}
        self._secrets = [bytes.fromhex(s["value"]) for s in data["secrets"]]
        self._stamp = stamp

    @property
    def secrets(self) -> list[bytes]:
        """Cluster secrets, newest (the signing one) first."""
        self.refresh()
        return self._secrets

    def record(self, key_id: str) -> KeyRecord | None:
        self.refresh()
        return self._keys.get(key_id)

    def require_active(self, key_id: str) -> KeyRecord:
        """The record of a key that may still be used; AuthError(401) if revoked/expired/unknown."""
        record = self.record(key_id)
        if record is None:
            raise AuthError("unknown API key")
        state = record.state()
        if state != "active":
            raise AuthError(f"API key {key_id} is {state}")
        return record

    def authenticate(self, key: str) -> Principal:
        key_id = parse_key(key)
        if key_id is None:
            raise AuthError("malformed API key")
        record = self.record(key_id)
        if record is None or not hmac.compare_digest(record.hash, hash_key(key)):
            raise AuthError("unknown API key")  # the same answer: an id alone tells nothing
        record = self.require_active(key_id)
        return Principal("key", record.id, record.role, record.name, via="key")

    def verify_bearer(self, credential: str) -> Principal:
        """Who a Bearer credential is: an API key, or a JWT from POST /auth/token whose key is still
        active with the same role; AuthError(401) otherwise. One check for every service (the State
        Service's --auth-dir too), so revocation means the same everywhere."""
        if credential.startswith(PREFIX):
            return self.authenticate(credential)
        p = tokens.principal_from_claims(tokens.decode_token(credential, self.secrets))
        if p.kind == "key":
            record = self.require_active(p.id)  # a revoked key's tokens die with it
            if record.role != p.role:
                raise AuthError("token role no longer matches its API key")
        return p
