import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dht.messages import (
    DHT_MESSAGES,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Store,
    StoreAck,
    Value,
)
from shoal.dht.records import SignedRecord, key_for
from shoal.identity import Identity
from shoal.wire.codec import PROTOCOL_VERSION, Codec, DecodeError, MalformedMessage, Message
from shoal.wire.contact import Contact
from shoal.wire.limits import MAX_LIST_ITEMS

ME = Identity.from_seed(b"m" * 32)
CONTACT = Contact(ME.peer_id, "10.0.0.1:7000")
RECORD = SignedRecord.create(ME, key_for("k"), b"value", 3, 1e6)
CODEC = Codec(DHT_MESSAGES)

SAMPLES: list[Message] = [
    Ping(1),
    Pong(2**64 - 1),
    FindNode(3, key_for("t")),
    Nodes(4, (CONTACT,) * 3),
    Nodes(5, ()),
    FindValue(6, key_for("v")),
    Value(7, (RECORD,), (CONTACT,)),
    Store(8, RECORD),
    StoreAck(9, True, ""),
    StoreAck(10, False, "StaleRecord: old"),
]


def test_types_are_distinct_and_namespaced() -> None:
    types = [m.TYPE for m in DHT_MESSAGES]
    assert len(set(types)) == len(types) == 8
    assert all(t.startswith("dht.") for t in types)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_roundtrip(msg: Message) -> None:
    assert CODEC.decode(CODEC.encode(msg)) == msg


def test_contact_list_at_limit_is_accepted_and_over_limit_rejected() -> None:
    at_limit = Nodes(1, (CONTACT,) * MAX_LIST_ITEMS)
    assert CODEC.decode(CODEC.encode(at_limit)) == at_limit
    fields = [1, [CONTACT.to_fields()] * (MAX_LIST_ITEMS + 1)]
    with pytest.raises(MalformedMessage, match="exceeds the limit"):
        Nodes.from_fields(fields)


@pytest.mark.parametrize(
    ("cls", "fields", "match"),
    [
        (Ping, [], "expected 1 fields"),
        (Ping, [-1], "outside"),
        (Ping, [True], "integer"),
        (FindNode, [1, b"short"], "expected 32 bytes"),
        (FindValue, [1, "not bytes"], "expected bytes"),
        (Nodes, [1, [[b"x" * 32]]], "peer_id"),
        (Store, [1, [b"k"]], "expected 6 fields"),
        (StoreAck, [1, 1, ""], "boolean"),
        (StoreAck, [1, True, "x" * 300], "longer than"),
        (Value, [1, [], {}], "expected a list"),
    ],
)
def test_specific_errors_name_the_field(cls: type[Message], fields: list[Any], match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        cls.from_fields(fields)


def leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=40),
        st.binary(max_size=70),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=64, max_size=64),
    )


ANY = st.recursive(leaf(), lambda inner: st.lists(inner, max_size=7), max_leaves=15)


@given(cls=st.sampled_from(DHT_MESSAGES), fields=st.lists(ANY, max_size=4))
@settings(max_examples=150, deadline=None)
def test_random_fields_raise_only_malformed(cls: type[Message], fields: list[Any]) -> None:
    with contextlib.suppress(MalformedMessage):
        cls.from_fields(fields)


@given(msg=st.sampled_from(SAMPLES), data=st.data())
@settings(max_examples=300, deadline=None)
def test_one_bad_field_raises_only_malformed(msg: Message, data: st.DataObject) -> None:
    fields = msg.to_fields()
    i = data.draw(st.integers(0, len(fields) - 1))
    fields[i] = data.draw(ANY)
    with contextlib.suppress(MalformedMessage):
        type(msg).from_fields(fields)


@given(tag=st.sampled_from([m.TYPE for m in DHT_MESSAGES]), fields=ANY)
@settings(max_examples=300, deadline=None)
def test_codec_decode_of_random_objects_raises_only_decode_errors(tag: str, fields: Any) -> None:
    data = msgpack.packb([PROTOCOL_VERSION, tag, fields], use_bin_type=True)
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_codec_decode_of_random_bytes_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)
