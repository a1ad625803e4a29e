"""Entry codec: round trips, signatures, and hostile bytes (hypothesis)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.identity.keys import Identity
from shoal.ledger.entry import (
    GENESIS_PREV,
    HEADER_BYTES,
    Entry,
    EntryError,
    Kind,
    decode_entry,
    parse_header,
    sign_entry,
)
from shoal.ledger.limits import MAX_ENTRY_BYTES, MAX_PAYLOAD_BYTES
from shoal.ledger.payloads import (
    Attestation,
    Contribution,
    JoinedRun,
    RoundAggregate,
    UpdateCommitment,
    decode_payload,
    encode_payload,
)

ID = Identity.from_seed(bytes(range(32)))


def _entry(payload: bytes = b"p", seq: int = 0) -> Entry:
    return sign_entry(ID, seq, GENESIS_PREV, Kind.JOINED_RUN, 1000, payload)


def test_round_trip_and_header_layout() -> None:
    e = _entry()
    assert decode_entry(e.encode()) == e
    assert len(e.header) == HEADER_BYTES == 121
    author, seq, prev = parse_header(e.header)
    assert (author, seq, prev) == (ID.peer_id, 0, GENESIS_PREV)


@pytest.mark.parametrize("field", range(7))
def test_any_changed_field_is_refused(field: int) -> None:
    fields = msgpack.unpackb(_entry().encode(), raw=False)
    other = Identity.from_seed(bytes(32))
    replacement = [other.peer_id.raw, 1, b"\x01" * 32, 2, 1001, b"q", b"\x00" * 64][field]
    fields[field] = replacement
    with pytest.raises(EntryError):
        decode_entry(msgpack.packb(fields, use_bin_type=True))


def test_every_single_byte_flip_is_refused_or_changes_nothing() -> None:
    raw = _entry(b"payload bytes").encode()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(EntryError):
            decode_entry(bytes(bad))


def test_limits() -> None:
    with pytest.raises(EntryError, match="exceeds"):
        sign_entry(ID, 0, GENESIS_PREV, Kind.JOINED_RUN, 0, b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(EntryError, match="exceeds"):
        decode_entry(b"\x00" * (MAX_ENTRY_BYTES + 1))
    with pytest.raises(EntryError, match="unknown entry kind"):
        sign_entry(ID, 0, GENESIS_PREV, 9, 0, b"")  # type: ignore[arg-type]
    with pytest.raises(EntryError, match="seq"):
        sign_entry(ID, -1, GENESIS_PREV, Kind.JOINED_RUN, 0, b"")
    fields = msgpack.unpackb(_entry().encode(), raw=False)
    fields[1] = True  # a bool is not a seq
    with pytest.raises(EntryError, match="integer"):
        decode_entry(msgpack.packb(fields))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(EntryError):
        decode_entry(data)


_scalar = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1), st.binary(max_size=70),
    st.text(max_size=5), st.none(), st.booleans(),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_scalar, min_size=0, max_size=9))
def test_decoder_refuses_wrong_shapes(fields: list[object]) -> None:
    with pytest.raises(EntryError):
        decode_entry(msgpack.packb(fields, use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    data=st.one_of(st.binary(max_size=200), st.lists(_scalar, max_size=6).map(msgpack.packb)),
)
def test_payload_decoder_never_crashes(kind: Kind, data: bytes) -> None:
    with contextlib.suppress(EntryError):
        decode_payload(kind, data)


def test_payload_round_trips() -> None:
    c = Contribution(ID.peer_id, 3, b"\x05" * 32, 64)
    for p in (
        JoinedRun("run"),
        UpdateCommitment("run", 4, b"\x01" * 32, 128),
        RoundAggregate("run", 4, b"\x02" * 32, b"\x03" * 32, (c,)),
        Attestation("run", b"report"),
    ):
        from shoal.ledger.payloads import KIND_OF

        assert decode_payload(KIND_OF[type(p)], encode_payload(p)) == p
    with pytest.raises(EntryError, match="listed twice"):
        decode_payload(
            Kind.ROUND_AGGREGATE,
            encode_payload(RoundAggregate("run", 4, b"\x02" * 32, b"\x03" * 32, (c, c))),
        )
    with pytest.raises(EntryError, match="at least one sample"):
        decode_payload(
            Kind.UPDATE_COMMITMENT, encode_payload(UpdateCommitment("r", 0, b"\x01" * 32, 0))
        )
