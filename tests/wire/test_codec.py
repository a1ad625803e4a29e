import contextlib
from dataclasses import dataclass
from typing import Any, Self

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.identity import Identity
from shoal.wire.codec import (
    PROTOCOL_VERSION,
    Codec,
    DecodeError,
    MalformedMessage,
    Message,
    MessageTooLarge,
    UnknownMessageType,
    UnknownVersion,
)
from shoal.wire.contact import Contact
from shoal.wire.fields import as_int, expect_len
from shoal.wire.limits import MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class Hello(Message):
    TYPE = "test.hello"
    n: int
    who: Contact

    def to_fields(self) -> list[Any]:
        return [self.n, self.who.to_fields()]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        return cls(as_int(fields[0], "n"), Contact.from_fields(fields[1], "who"))


CODEC = Codec([Hello])
ME = Contact(Identity.from_seed(b"\x02" * 32).peer_id, "127.0.0.1:4000")


def test_round_trip() -> None:
    msg = Hello(7, ME)
    assert CODEC.decode(CODEC.encode(msg)) == msg
    assert msg.protocol == "test"


def test_unknown_version() -> None:
    data = msgpack.packb([PROTOCOL_VERSION + 1, "test.hello", [1, ME.to_fields()]])
    with pytest.raises(UnknownVersion, match="not supported"):
        CODEC.decode(data)


def test_unknown_type() -> None:
    with pytest.raises(UnknownMessageType):
        CODEC.decode(msgpack.packb([PROTOCOL_VERSION, "test.nope", []]))


def test_oversized_message() -> None:
    with pytest.raises(MessageTooLarge):
        CODEC.decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))


def test_bad_fields_named() -> None:
    data = msgpack.packb([PROTOCOL_VERSION, "test.hello", [-1, ME.to_fields()]])
    with pytest.raises(MalformedMessage, match="n:"):
        CODEC.decode(data)
    data = msgpack.packb([PROTOCOL_VERSION, "test.hello", [1, [b"short", "x:1"]]])
    with pytest.raises(MalformedMessage, match=r"who\.peer_id"):
        CODEC.decode(data)


def test_contact_parse() -> None:
    c = Contact.parse(str(ME))
    assert c == ME
    assert c.host_port() == ("127.0.0.1", 4000)
    for bad in ["nope", f"{ME.peer_id}@host", f"{ME.peer_id}@host:99999", "sh1zz@h:1"]:
        with pytest.raises(ValueError):
            Contact.parse(bad)


@given(st.binary(max_size=512))
def test_random_bytes_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(json_like)
def test_random_fields_only_malformed(fields: Any) -> None:
    data = msgpack.packb([PROTOCOL_VERSION, "test.hello", fields], use_bin_type=True)
    with contextlib.suppress(DecodeError):
        CODEC.decode(data)
