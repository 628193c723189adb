"""A node's Ed25519 identity: created on first start in the data dir, used to sign requests
to other nodes, and checked against the `nodes` entity's registered public keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = "node_identity.pem"


class NodeIdentity:
    """An Ed25519 key pair; `public_key` is base64 of the 32 raw bytes (the nodes entity's format)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = base64.b64encode(raw).decode()

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: str | Path) -> NodeIdentity:
        """The key in `data_dir`/node_identity.pem, created (mode 0600) if absent."""
        path = Path(data_dir) / KEY_FILE
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            identity = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(identity.private_pem())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # never replace a key another worker created meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            pem = path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._key.sign(message)).decode()


def verify(public_key_b64: str, message: bytes, signature_b64: str) -> bool:
    """True if `signature_b64` is this public key's Ed25519 signature over `message`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
