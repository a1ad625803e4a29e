"""SWIM wire messages.

Every message carries the sender's own incarnation (so a receiver learns it first
hand) and up to MAX_PIGGYBACK_WIRE gossip entries (``Member`` statements).

=================  ==================================================================
``swim.ping``      ``[seq, incarnation, updates]``: are you alive? Answer with an ack.
``swim.ack``       ``[seq, incarnation, updates]``: answer to a ping, or a relayed
                   answer for a ping-req (then ``seq`` is the requester's).
``swim.ping_req``  ``[seq, incarnation, target, updates]``: ping ``target`` for me and
                   relay its ack with my ``seq``.
``swim.gossip``    ``[incarnation, updates]``: updates only, no answer expected. Sent to
                   a peer we hold suspect or dead when it talks to us without pinging,
                   so it can refute.
=================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from shoal.membership.config import MAX_PIGGYBACK_WIRE
from shoal.membership.state import MAX_INCARNATION, Member
from shoal.wire.codec import Message
from shoal.wire.contact import Contact
from shoal.wire.fields import as_int, as_list, expect_len

MAX_SEQ = 2**32 - 1


def _updates_to_fields(updates: tuple[Member, ...]) -> list[Any]:
    return [u.to_fields() for u in updates]


def _updates_from_fields(x: Any, name: str) -> tuple[Member, ...]:
    items = as_list(x, name, MAX_PIGGYBACK_WIRE)
    return tuple(Member.from_fields(item, f"{name}[{i}]") for i, item in enumerate(items))


def _seq(x: Any, what: str) -> int:
    return as_int(x, f"{what}.seq", 0, MAX_SEQ)


def _incarnation(x: Any, what: str) -> int:
    return as_int(x, f"{what}.incarnation", 0, MAX_INCARNATION)


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE: ClassVar[str] = "swim.ping"
    seq: int
    incarnation: int
    updates: tuple[Member, ...] = ()

    def to_fields(self) -> list[Any]:
        return [self.seq, self.incarnation, _updates_to_fields(self.updates)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 3, cls.TYPE)
        return cls(
            _seq(fields[0], cls.TYPE),
            _incarnation(fields[1], cls.TYPE),
            _updates_from_fields(fields[2], f"{cls.TYPE}.updates"),
        )


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE: ClassVar[str] = "swim.ack"
    seq: int
    incarnation: int
    updates: tuple[Member, ...] = ()

    def to_fields(self) -> list[Any]:
        return [self.seq, self.incarnation, _updates_to_fields(self.updates)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 3, cls.TYPE)
        return cls(
            _seq(fields[0], cls.TYPE),
            _incarnation(fields[1], cls.TYPE),
            _updates_from_fields(fields[2], f"{cls.TYPE}.updates"),
        )


@dataclass(frozen=True, slots=True)
class PingReq(Message):
    TYPE: ClassVar[str] = "swim.ping_req"
    seq: int
    incarnation: int
    target: Contact
    updates: tuple[Member, ...] = ()

    def to_fields(self) -> list[Any]:
        return [
            self.seq,
            self.incarnation,
            self.target.to_fields(),
            _updates_to_fields(self.updates),
        ]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 4, cls.TYPE)
        return cls(
            _seq(fields[0], cls.TYPE),
            _incarnation(fields[1], cls.TYPE),
            Contact.from_fields(fields[2], f"{cls.TYPE}.target"),
            _updates_from_fields(fields[3], f"{cls.TYPE}.updates"),
        )


@dataclass(frozen=True, slots=True)
class Gossip(Message):
    TYPE: ClassVar[str] = "swim.gossip"
    incarnation: int
    updates: tuple[Member, ...] = ()

    def to_fields(self) -> list[Any]:
        return [self.incarnation, _updates_to_fields(self.updates)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        return cls(
            _incarnation(fields[0], cls.TYPE),
            _updates_from_fields(fields[1], f"{cls.TYPE}.updates"),
        )


SwimMessage = Ping | Ack | PingReq | Gossip

SWIM_MESSAGES: tuple[type[Message], ...] = (Ping, Ack, PingReq, Gossip)
