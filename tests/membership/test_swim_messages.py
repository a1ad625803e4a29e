"""SWIM messages: round trips, and strict validation of hostile input."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.identity.keys import PeerId
from shoal.membership.config import MAX_PIGGYBACK_WIRE
from shoal.membership.messages import MAX_SEQ, SWIM_MESSAGES, Ack, Gossip, Ping, PingReq
from shoal.membership.state import MAX_INCARNATION, Member, MemberState
from shoal.wire.codec import PROTOCOL_VERSION, Codec, DecodeError, MalformedMessage, Message
from shoal.wire.contact import Contact

CODEC = Codec(SWIM_MESSAGES)

contacts = st.builds(
    Contact,
    st.binary(min_size=32, max_size=32).map(PeerId),
    st.text(max_size=40).filter(lambda s: len(s.encode()) <= 256),
)
members = st.builds(Member, contacts, st.sampled_from(MemberState), st.integers(0, MAX_INCARNATION))
updates = st.lists(members, max_size=MAX_PIGGYBACK_WIRE).map(tuple)
seqs = st.integers(0, MAX_SEQ)
incs = st.integers(0, MAX_INCARNATION)
messages = st.one_of(
    st.builds(Ping, seqs, incs, updates),
    st.builds(Ack, seqs, incs, updates),
    st.builds(PingReq, seqs, incs, contacts, updates),
    st.builds(Gossip, incs, updates),
)

# Anything msgpack can carry, nested a little.
msgpack_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


def test_types_are_swim_and_distinct() -> None:
    types = [m.TYPE for m in SWIM_MESSAGES]
    assert len(set(types)) == len(types)
    assert all(t.startswith("swim.") for t in types)
    assert {"swim.ping", "swim.ack", "swim.ping_req"} <= set(types)


@settings(max_examples=150)
@given(messages)
def test_round_trip(msg: Message) -> None:
    assert CODEC.decode(CODEC.encode(msg)) == msg


@settings(max_examples=300)
@given(st.sampled_from(SWIM_MESSAGES), st.lists(msgpack_objects, max_size=6))
def test_from_fields_rejects_garbage_cleanly(cls: type[Message], fields: list[Any]) -> None:
    with contextlib.suppress(MalformedMessage):
        cls.from_fields(fields)


@settings(max_examples=300)
@given(st.sampled_from(SWIM_MESSAGES), messages, st.data())
def test_mutated_valid_fields_fail_cleanly(cls: type[Message], msg: Message, data: Any) -> None:
    """Start from a valid field list and replace one nested value with garbage."""
    fields = msgpack.unpackb(msgpack.packb(msg.to_fields(), use_bin_type=True), raw=False)

    def mutate(x: Any) -> Any:
        if isinstance(x, list) and x and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(x) - 1))
            x = list(x)
            x[i] = mutate(x[i])
            return x
        return data.draw(msgpack_objects)

    mutated = mutate(fields)
    if not isinstance(mutated, list):
        mutated = [mutated]
    with contextlib.suppress(MalformedMessage):
        cls.from_fields(mutated)


@settings(max_examples=300)
@given(st.sampled_from([m.TYPE for m in SWIM_MESSAGES]), msgpack_objects)
def test_decode_rejects_garbage_envelopes(tag: str, fields: Any) -> None:
    data = msgpack.packb([PROTOCOL_VERSION, tag, fields], use_bin_type=True)
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_rejects_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)


def _contact() -> Contact:
    return Contact(PeerId(b"\x01" * 32), "10.0.0.1:7000")


def test_specific_violations_are_reported() -> None:
    good = Member(_contact(), MemberState.ALIVE, 0).to_fields()
    cases: list[tuple[type[Message], list[Any], str]] = [
        (Ping, [1, 0], "expected 3 fields"),
        (Ping, [-1, 0, []], "seq"),
        (Ping, [MAX_SEQ + 1, 0, []], "seq"),
        (Ping, [1, MAX_INCARNATION + 1, []], "incarnation"),
        (Ping, [1, 0, [good] * (MAX_PIGGYBACK_WIRE + 1)], "exceeds the limit"),
        (Ack, [1, 0, [[good[0], 7, 0]]], "state"),
        (Ack, [1, 0, {"a": 1}], "updates"),
        (PingReq, [1, 0, [b"short", "x:1"], []], "target"),
        (Gossip, [0, [[good[0], 0, 1.5]]], "incarnation"),
    ]
    for cls, fields, needle in cases:
        with pytest.raises(MalformedMessage, match=needle):
            cls.from_fields(fields)
