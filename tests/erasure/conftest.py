"""Shared data for the erasure tests: a payload of an odd size and its fragments."""

from __future__ import annotations

import random

import pytest

from shoal.erasure import encode

ODD_2MIB = (2 << 20) - 7


def payload(length: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(length)


@pytest.fixture(scope="session")
def chunk() -> bytes:
    return payload(ODD_2MIB)


@pytest.fixture(scope="session")
def frags(chunk) -> list[bytes]:
    return encode(chunk)


def flip(frag: bytes, pos: int) -> bytes:
    """The fragment with one bit changed at byte `pos` (negative counts from the end)."""
    b = bytearray(frag)
    b[pos] ^= 0x10
    return bytes(b)
