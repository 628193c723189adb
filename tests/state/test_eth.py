"""Ethereum signature primitives against eth-account (a real wallet library)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.state.auth.eth import (
    HALF_N,
    SECP256K1_N,
    EthSigner,
    SignatureError,
    is_address,
    recover_address,
    to_checksum_address,
    verify_personal_sign,
)


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), message=st.binary(max_size=300))
def test_signer_and_recovery_agree_with_eth_account(key, message):
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        return
    account = Account.from_key(key)
    ours = EthSigner(key)
    assert ours.address == account.address
    theirs = Account.sign_message(encode_defunct(primitive=message), key).signature
    assert ours.sign_message(message) == "0x" + bytes(theirs).hex()  # RFC 6979: identical
    assert recover_address(message, bytes(theirs)) == account.address


def test_checksum_matches_eth_account():
    account = Account.create()
    assert to_checksum_address(account.address.lower()) == account.address
    assert is_address(account.address)
    assert is_address(account.address.lower())
    flipped = account.address[:2] + account.address[2:].swapcase()
    assert flipped == flipped.lower() or flipped == flipped.upper() or not is_address(flipped)
    assert not is_address("0x123")
    assert not is_address("0xZZ34567890abcdef1234567890abcdef12345678")


def test_wrong_signer_and_tampered_message_fail():
    alice, bob = Account.create(), Account.create()
    sig = Account.sign_message(encode_defunct(text="hello"), alice.key).signature
    assert verify_personal_sign(b"hello", bytes(sig), alice.address)
    assert not verify_personal_sign(b"hello", bytes(sig), bob.address)
    assert not verify_personal_sign(b"hellO", bytes(sig), alice.address)


def test_high_s_twin_is_refused():
    account = Account.create()
    sig = bytes(Account.sign_message(encode_defunct(text="x"), account.key).signature)
    s = int.from_bytes(sig[32:64], "big")
    assert s <= HALF_N
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # flip v too
    with pytest.raises(SignatureError, match="high-s"):
        recover_address(b"x", twin)


@pytest.mark.parametrize(
    "signature",
    ["0x00", "zz" * 65, "0x" + "00" * 65, "0x" + "11" * 64 + "05"],
)
def test_malformed_signatures_raise(signature):
    with pytest.raises(SignatureError):
        recover_address(b"x", signature)
