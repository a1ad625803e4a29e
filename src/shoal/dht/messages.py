"""DHT wire messages.

Every request carries a request id ``rid`` that its reply echoes; the core matches a
reply to its request by ``rid`` *and* by the authenticated sender, so a peer cannot
answer a question it was not asked. Keys and targets travel as 32 big-endian bytes
(msgpack integers stop at 64 bits).

    dht.ping        [rid]                       -> dht.pong [rid]
    dht.find_node   [rid, target]               -> dht.nodes [rid, contacts]
    dht.find_value  [rid, key]                  -> dht.value [rid, records, contacts]
    dht.store       [rid, record]               -> dht.store_ack [rid, ok, reason]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from shoal.dht.records import KEY_BYTES, SignedRecord
from shoal.wire.codec import MalformedMessage, Message
from shoal.wire.contact import Contact
from shoal.wire.fields import as_bytes, as_int, as_list, as_str, expect_len
from shoal.wire.limits import MAX_LIST_ITEMS, MAX_STRING_BYTES

MAX_RID = 2**64 - 1


def _rid(x: Any, what: str) -> int:
    return as_int(x, f"{what}.rid", 0, MAX_RID)


def _fields(fields: Any, n: int, what: str) -> list[Any]:
    f = as_list(fields, what, n)
    expect_len(f, n, what)
    return f


def _contacts(x: Any, name: str) -> tuple[Contact, ...]:
    items = as_list(x, name, MAX_LIST_ITEMS)
    return tuple(Contact.from_fields(c, f"{name}[{i}]") for i, c in enumerate(items))


def _records(x: Any, name: str) -> tuple[SignedRecord, ...]:
    items = as_list(x, name, MAX_LIST_ITEMS)
    return tuple(SignedRecord.from_fields(r, f"{name}[{i}]") for i, r in enumerate(items))


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE: ClassVar[str] = "dht.ping"
    rid: int

    def to_fields(self) -> list[Any]:
        return [self.rid]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 1, cls.TYPE)
        return cls(_rid(f[0], cls.TYPE))


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE: ClassVar[str] = "dht.pong"
    rid: int

    def to_fields(self) -> list[Any]:
        return [self.rid]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 1, cls.TYPE)
        return cls(_rid(f[0], cls.TYPE))


@dataclass(frozen=True, slots=True)
class FindNode(Message):
    TYPE: ClassVar[str] = "dht.find_node"
    rid: int
    target: bytes

    def to_fields(self) -> list[Any]:
        return [self.rid, self.target]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 2, cls.TYPE)
        return cls(
            _rid(f[0], cls.TYPE),
            as_bytes(f[1], f"{cls.TYPE}.target", KEY_BYTES, exact=KEY_BYTES),
        )


@dataclass(frozen=True, slots=True)
class Nodes(Message):
    TYPE: ClassVar[str] = "dht.nodes"
    rid: int
    contacts: tuple[Contact, ...]

    def to_fields(self) -> list[Any]:
        return [self.rid, [c.to_fields() for c in self.contacts]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 2, cls.TYPE)
        return cls(_rid(f[0], cls.TYPE), _contacts(f[1], f"{cls.TYPE}.contacts"))


@dataclass(frozen=True, slots=True)
class FindValue(Message):
    TYPE: ClassVar[str] = "dht.find_value"
    rid: int
    key: bytes

    def to_fields(self) -> list[Any]:
        return [self.rid, self.key]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 2, cls.TYPE)
        return cls(
            _rid(f[0], cls.TYPE),
            as_bytes(f[1], f"{cls.TYPE}.key", KEY_BYTES, exact=KEY_BYTES),
        )


@dataclass(frozen=True, slots=True)
class Value(Message):
    """Reply to FIND_VALUE: the records the responder holds (possibly none) and the
    contacts it knows closest to the key, so the lookup can go on either way."""

    TYPE: ClassVar[str] = "dht.value"
    rid: int
    records: tuple[SignedRecord, ...]
    contacts: tuple[Contact, ...]

    def to_fields(self) -> list[Any]:
        return [
            self.rid,
            [r.to_fields() for r in self.records],
            [c.to_fields() for c in self.contacts],
        ]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 3, cls.TYPE)
        return cls(
            _rid(f[0], cls.TYPE),
            _records(f[1], f"{cls.TYPE}.records"),
            _contacts(f[2], f"{cls.TYPE}.contacts"),
        )


@dataclass(frozen=True, slots=True)
class Store(Message):
    TYPE: ClassVar[str] = "dht.store"
    rid: int
    record: SignedRecord

    def to_fields(self) -> list[Any]:
        return [self.rid, self.record.to_fields()]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 2, cls.TYPE)
        return cls(_rid(f[0], cls.TYPE), SignedRecord.from_fields(f[1], f"{cls.TYPE}.record"))


@dataclass(frozen=True, slots=True)
class StoreAck(Message):
    """``ok`` is False when the holder refused the record; ``reason`` says why."""

    TYPE: ClassVar[str] = "dht.store_ack"
    rid: int
    ok: bool
    reason: str = ""

    def to_fields(self) -> list[Any]:
        return [self.rid, self.ok, self.reason]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        f = _fields(fields, 3, cls.TYPE)
        if not isinstance(f[1], bool):
            raise MalformedMessage(f"{cls.TYPE}.ok: expected a boolean, got {type(f[1]).__name__}")
        return cls(_rid(f[0], cls.TYPE), f[1], as_str(f[2], f"{cls.TYPE}.reason", MAX_STRING_BYTES))


DHT_MESSAGES: tuple[type[Message], ...] = (
    Ping,
    Pong,
    FindNode,
    Nodes,
    FindValue,
    Value,
    Store,
    StoreAck,
)
