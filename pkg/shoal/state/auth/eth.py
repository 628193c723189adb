"""Ethereum signatures: keccak-256, EIP-55 addresses, EIP-191 `personal_sign`, secp256k1 recovery.

Why by hand and not eth-account at run time: recovery is three calls into libsecp256k1
(coincurve) plus keccak (pycryptodome); eth-account and its dependency tree stay a test extra,
where the tests use it to prove that real wallets' signatures verify here.
"""

from __future__ import annotations

import functools
import re

from coincurve import PrivateKey, PublicKey
from Crypto.Hash import keccak

# secp256k1 group order; EIP-2: a signature with s above n/2 is the malleable twin, refused.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class SignatureError(ValueError):
    """A signature that is malformed or does not recover to a public key."""


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def to_checksum_address(address: str) -> str:
    """The EIP-55 mixed-case form of a 0x-prefixed 40-hex-digit address."""
    return _checksum(address[2:].lower())


@functools.lru_cache(maxsize=65536)
def _checksum(lower: str) -> str:
    """Cached: every authenticated request normalises its caller's address (a keccak each)."""
    digest = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(lower))


def is_address(value: object) -> bool:
    """True for 0x + 40 hex digits, all-lower, all-upper or with a correct EIP-55 checksum."""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        return False
    body = value[2:]
    if body == body.lower() or body == body.upper():
        return True
    return to_checksum_address(value) == value


def normalize_address(address: str) -> str:
    """The form used for index keys: lower case."""
    return address.lower()


def looks_like_address(value: object) -> bool:
    """0x and 40 hex digits, whatever the case (checksum or not)."""
    return isinstance(value, str) and _ADDRESS.match(value) is not None


def canonical_address(value: str) -> str:
    """The EIP-55 form of an address, and any other value unchanged: how addresses are stored,
    compared and filtered on (owner, operator_id, ethereum_address, a user peer's public_key)."""
    return to_checksum_address(value) if looks_like_address(value) else value


def same_address(a: object, b: object) -> bool:
    """Equal values, addresses compared case-insensitively."""
    if looks_like_address(a) and looks_like_address(b):
        return a.lower() == b.lower()  # type: ignore[union-attr]
    return a == b


def personal_message_hash(message: bytes) -> bytes:
    """EIP-191 version 0x45: what `personal_sign` / `eth_sign` wallets actually sign."""
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def public_key_to_address(public_key: PublicKey) -> str:
    return to_checksum_address("0x" + keccak256(public_key.format(compressed=False)[1:])[-20:].hex())


def parse_signature(signature: str | bytes) -> tuple[int, int, int]:
    """(r, s, recovery id) from 65 bytes r || s || v (v 27/28 or 0/1), hex with or without 0x."""
    if isinstance(signature, str):
        text = signature[2:] if signature[:2] in ("0x", "0X") else signature
        if len(text) != 130:
            raise SignatureError("a signature is 65 bytes (130 hex digits)")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise SignatureError("a signature is hex") from None
    else:
        raw = bytes(signature)
        if len(raw) != 65:
            raise SignatureError("a signature is 65 bytes")
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:64], "big")
    v = raw[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise SignatureError("the recovery byte v must be 27, 28, 0 or 1")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureError("r and s must be in 1 .. n-1")
    if s > HALF_N:
        raise SignatureError("high-s signature (EIP-2): use the low-s form")
    return r, s, v


def recover_address(message: bytes, signature: str | bytes) -> str:
    """The EIP-55 address whose key made this `personal_sign` signature over `message`."""
    r, s, v = parse_signature(signature)
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
    try:
        public_key = PublicKey.from_signature_and_message(
            compact, personal_message_hash(message), hasher=None
        )
    except Exception as exc:  # coincurve raises ValueError/Exception for unrecoverable points
        raise SignatureError(f"signature does not recover to a public key: {exc}") from None
    return public_key_to_address(public_key)


def verify_personal_sign(message: bytes, signature: str | bytes, address: str) -> bool:
    """True if `signature` over `message` was made by `address` (compared case-insensitively)."""
    try:
        return recover_address(message, signature).lower() == address.lower()
    except SignatureError:
        return False


class EthSigner:
    """Signs like a wallet's `personal_sign` (deterministic RFC 6979, low-s), for clients and scripts."""

    def __init__(self, private_key: bytes | str) -> None:
        if isinstance(private_key, str):
            private_key = bytes.fromhex(private_key[2:] if private_key.startswith("0x") else private_key)
        self._key = PrivateKey(bytes(private_key))
        self.address = public_key_to_address(self._key.public_key)

    @classmethod
    def generate(cls) -> EthSigner:
        return cls(PrivateKey().secret)

    @property
    def private_key(self) -> bytes:
        return self._key.secret

    def sign_message(self, message: bytes | str) -> str:
        """0x-hex r || s || v with v in 27/28, as wallets return it."""
        if isinstance(message, str):
            message = message.encode()
        sig = self._key.sign_recoverable(personal_message_hash(message), hasher=None)
        return "0x" + (sig[:64] + bytes([sig[64] + 27])).hex()
