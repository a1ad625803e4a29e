"""The AEAD record layer."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.transport import channel
from shoal.transport.channel import (
    RECORD_HEADER,
    RECORD_OVERHEAD,
    RecordOpener,
    RecordSealer,
    RecordType,
)
from shoal.transport.errors import BadRecord, ChannelError, KeyExhausted
from shoal.wire.frames import FrameDecoder

KEY = bytes(range(32))


def body(record: bytes) -> bytes:
    """Strip the 4-byte frame length (what FrameDecoder yields)."""
    return record[4:]


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=2000)), max_size=20))
def test_records_round_trip_in_order(records: list[tuple[int, bytes]]) -> None:
    sealer, opener, dec = RecordSealer(KEY), RecordOpener(KEY), FrameDecoder()
    wire = b"".join(sealer.seal(t, p) for t, p in records)
    assert [opener.open(f) for f in dec.feed(wire)] == records


def test_seal_into_matches_seal_and_opens_into_buffer() -> None:
    payload = os.urandom(5000)
    a = RecordSealer(KEY).seal(RecordType.BULK_DATA, payload)
    out = bytearray(RECORD_OVERHEAD + len(payload) + 7)
    n = RecordSealer(KEY).seal_into(RecordType.BULK_DATA, memoryview(payload), out)
    assert n == len(a) and bytes(out[:n]) == a
    dest = bytearray(len(payload))
    RecordOpener(KEY).open_into(RecordType.BULK_DATA, body(a)[1:], memoryview(dest))
    assert dest == payload


def test_nonces_never_repeat_so_same_payload_differs() -> None:
    s = RecordSealer(KEY)
    assert s.seal(1, b"same") != s.seal(1, b"same")


@pytest.mark.parametrize("where", [0, 1, 5, -1])
def test_tampered_record_fails_and_latches(where: int) -> None:
    rec = bytearray(body(RecordSealer(KEY).seal(RecordType.MESSAGE, b"hello world")))
    rec[where] ^= 0x01
    opener = RecordOpener(KEY)
    with pytest.raises(BadRecord, match="authentication"):
        opener.open(bytes(rec))
    good = body(RecordSealer(KEY).seal(RecordType.MESSAGE, b"hello world"))
    with pytest.raises(BadRecord, match="closed"):
        opener.open(good)


def test_replayed_or_reordered_record_fails() -> None:
    s = RecordSealer(KEY)
    r1, r2 = body(s.seal(1, b"one")), body(s.seal(1, b"two"))
    o = RecordOpener(KEY)
    o.open(r1)
    with pytest.raises(BadRecord):
        o.open(r1)
    o2 = RecordOpener(KEY)
    with pytest.raises(BadRecord):
        o2.open(r2)


def test_wrong_direction_key_fails() -> None:
    rec = body(RecordSealer(KEY).seal(1, b"x"))
    with pytest.raises(BadRecord):
        RecordOpener(bytes(32)).open(rec)


def test_key_exhaustion_closes_before_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "MAX_RECORDS", 2)
    s = RecordSealer(KEY)
    s.seal(1, b"a")
    s.seal(1, b"b")
    with pytest.raises(KeyExhausted):
        s.seal(1, b"c")
    with pytest.raises(ChannelError):
        s.seal(1, b"d")


def test_record_header_layout() -> None:
    rec = RecordSealer(KEY).seal(RecordType.MESSAGE, b"abc")
    length, rtype = RECORD_HEADER.unpack_from(rec)
    assert length == len(rec) - 4 and rtype == RecordType.MESSAGE
    assert len(rec) == RECORD_OVERHEAD + 3


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_opener_raises_only_channel_errors(data: bytes) -> None:
    opener = RecordOpener(KEY)
    with contextlib.suppress(ChannelError):
        opener.open(data)


@given(st.binary(max_size=200), st.integers(0, 255))
def test_open_into_raises_only_channel_errors(data: bytes, rtype: int) -> None:
    out = bytearray(max(0, len(data) - 16))
    with contextlib.suppress(ChannelError):
        RecordOpener(KEY).open_into(rtype, data, memoryview(out))
