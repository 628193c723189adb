"""Ed25519 signatures of operations and of replication traffic, with node keys.

An operation's author signs b"shoal-crdt-op-v1" + op id (the BLAKE3 hash of its encoding), so a
signature covers every byte of the operation and cannot be reused for anything else the node
signs. Replication requests sign their audience (cluster id and the target node's key), a nonce,
method, path, body hash and time, so a captured request is refused by every other node (audience)
and by its target a second time (nonce, remembered for the time window); replies sign the
request's signature and the reply body's hash, so a reply cannot be replayed for another request.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

from blake3 import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

OP_CONTEXT = b"shoal-crdt-op-v1"
KEY_HEADER = "x-shoal-repl-key"
TIME_HEADER = "x-shoal-repl-time"
SIG_HEADER = "x-shoal-repl-signature"
AUDIENCE_HEADER = "x-shoal-repl-audience"
NONCE_HEADER = "x-shoal-repl-nonce"
WINDOW = 300  # seconds a replication request's time may be off


class Signer:
    """A node's private key (shoal.state's NodeIdentity key) as raw bytes for the CRDT."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_b64 = base64.b64encode(self.public).decode()

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(key)

    def sign_op(self, op_id: bytes) -> bytes:
        return self._key.sign(OP_CONTEXT + op_id)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@lru_cache(maxsize=1024)
def _public(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        _public(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_op(author: bytes, op_id: bytes, signature: bytes) -> bool:
    return verify(author, OP_CONTEXT + op_id, signature)


def parse_key(text: str) -> bytes:
    """A node public key given as base64 (the nodes entity's format) or 64 hex digits."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"{text!r} is not a base64 or hex Ed25519 public key") from None
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not 32 bytes")
    return raw


def request_message(method: str, path: str, body: bytes, timestamp: int, audience: str, nonce: str) -> bytes:
    """What a replication request's signature covers; `audience` is '<cluster id>:<target key b64>'."""
    digest = blake3(body).hexdigest()
    return f"shoal-repl-v2\n{audience}\n{nonce}\n{method.upper()}\n{path}\n{digest}\n{timestamp}".encode()


def reply_message(request_signature: bytes, body: bytes) -> bytes:
    return b"shoal-repl-reply-v1\n" + request_signature + b"\n" + blake3(body).digest()
