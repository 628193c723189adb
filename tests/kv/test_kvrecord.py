"""ext/kvrecord.pyx and its pure-Python twin: same keys accepted, same errors, same bytes."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.kv import Entry, InvalidKey
from shoal.kv import keys as kv_keys
from tests.conftest import both, native_required

impl = both("kvrecord")


@pytest.fixture
def codec(impl):
    impl.bind(kv_keys._explain, Entry)
    return impl


def test_native_build_is_in_force():
    if os.environ.get("SHOAL_PURE_PYTHON"):
        pytest.skip("by design: SHOAL_PURE_PYTHON forces the twin in this run")
    if native_required():
        assert _native.native("kvrecord") is not None, "ext/kvrecord.pyx was not compiled"
    assert kv_keys.check_key is _native.load("kvrecord").check_key


keys_st = st.one_of(
    st.text(max_size=40),
    st.text(max_size=40).map(lambda s: "/" + s),
    st.integers(min_value=1000, max_value=1030).map(lambda n: "/" + "k" * (n - 1)),
    st.sampled_from(["", "/", "/a\0b", "/\ud800", "/é/ü", "a/b", "/" + "é" * 600]),
    st.binary(max_size=8),
    st.none(),
)


def outcome(codec, key):
    try:
        return codec.check_key(key)
    except InvalidKey as e:
        return ("invalid", str(e))


@settings(max_examples=400, deadline=None)
@given(keys_st)
def test_check_key_agrees_with_the_twin(key):
    native = _native.native("kvrecord")
    pure = _native.pure("kvrecord")
    for m in (pure, native):
        if m is not None:
            m.bind(kv_keys._explain, Entry)
    expected = outcome(pure, key)
    if native is not None:
        assert outcome(native, key) == expected
    if isinstance(key, str) and key.startswith("/") and "\0" not in key and not isinstance(expected, tuple):
        assert expected == key.encode()


def test_bad_keys_say_why(codec):
    for key, why in [
        ("", "empty key"),
        ("a", "must start with '/'"),
        ("/a\0", "NUL"),
        ("/\ud800", "UTF-8"),
        ("/" + "x" * 1024, "at most 1024 bytes"),
        (b"/a", "keys are str"),
    ]:
        with pytest.raises(InvalidKey, match=why):
            codec.check_key(key)
    assert codec.check_key("/" + "x" * 1023) == b"/" + b"x" * 1023


u64 = st.integers(min_value=0, max_value=2**64 - 1)
f64 = st.floats(allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(u64, u64, f64, f64, st.binary(max_size=300), st.text(max_size=20).map(lambda s: "/" + s))
def test_record_round_trip_and_layout(version, rev, created, updated, value, key):
    native = _native.native("kvrecord")
    pure = _native.pure("kvrecord")
    rec = pure.encode_record(version, rev, created, updated, value)
    assert rec == struct.pack("<QQdd", version, rev, created, updated) + value
    for m in (pure, native):
        if m is None:
            continue
        m.bind(kv_keys._explain, Entry)
        assert m.encode_record(version, rev, created, updated, value) == rec
        assert m.decode_entry(key, rec) == Entry(key, value, version, created, updated, rev)
        assert m.record_version(rec) == version


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 2, 3]), u64, st.binary(min_size=1, max_size=300), st.none() | st.binary(max_size=200)
)
def test_change_record_layout(code, version, raw, value):
    expected = struct.pack("<BQH", code, version, len(raw)) + raw + (value or b"")
    for m in (_native.pure("kvrecord"), _native.native("kvrecord")):
        if m is not None:
            assert m.encode_change(code, version, raw, value) == expected


def test_short_records_are_refused(codec):
    with pytest.raises(ValueError, match="at least"):
        codec.decode_entry("/k", b"\0" * 31)
    with pytest.raises(ValueError, match="at least"):
        codec.record_version(b"\0" * 7)
    with pytest.raises(ValueError, match="65535"):
        codec.encode_change(1, 1, b"k" * 65536, None)
