"""``round.*`` wire messages: group formation after a round closes.

    round.join   [run, round, model_version, samples, attempt]
        member -> the leader of its group: "I am in, with this many samples".
        ``attempt`` counts the leaders this member already gave up on.
    round.group  [run, round, model_version, members, member_samples, total_samples,
                  attempt]
        leader -> every member that joined: the authoritative group. ``members`` are
        contacts sorted by PeerId, the leader among them; ``member_samples[i]`` is the
        weight of ``members[i]`` and ``total_samples`` their sum; ``attempt`` goes up
        each time the group is re-formed without members the data plane could not
        reach.

    round.close  [run, round, model_version]
        leader -> the other members of its group as it computed them, when it closes:
        "the round is over; join". Peers that poll a little later than others
        close at once instead of missing the leader's join window.

The sender of each is the transport-authenticated peer, never a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Self

from shoal.wire.codec import MalformedMessage, Message
from shoal.wire.contact import Contact
from shoal.wire.fields import as_int, as_list, as_str, expect_len
from shoal.wire.limits import MAX_LIST_ITEMS

MAX_ROUND = 2**63 - 1
MAX_SAMPLES = 2**63 - 1
MAX_ATTEMPT = 1024


def _fields(fields: Any, n: int, what: str) -> list[Any]:
    f = as_list(fields, what, n)
    expect_len(f, n, what)
    return f


@dataclass(frozen=True, slots=True)
class RoundJoin(Message):
    TYPE: ClassVar[str] = "round.join"
    run: str
    round_no: int
    model_version: int
    samples: int
    attempt: int

    def to_fields(self) -> list[Any]:
        return [self.run, self.round_no, self.model_version, self.samples, self.attempt]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        t = cls.TYPE
        f = _fields(fields, 5, t)
        return cls(
            as_str(f[0], f"{t}.run"),
            as_int(f[1], f"{t}.round", 0, MAX_ROUND),
            as_int(f[2], f"{t}.model_version", 0, MAX_ROUND),
            as_int(f[3], f"{t}.samples", 0, MAX_SAMPLES),
            as_int(f[4], f"{t}.attempt", 0, MAX_ATTEMPT),
        )


@dataclass(frozen=True, slots=True)
class RoundGroup(Message):
    TYPE: ClassVar[str] = "round.group"
    run: str
    round_no: int
    model_version: int
    members: tuple[Contact, ...]
    member_samples: tuple[int, ...]
    total_samples: int
    attempt: int

    def to_fields(self) -> list[Any]:
        return [
            self.run,
            self.round_no,
            self.model_version,
            [c.to_fields() for c in self.members],
            list(self.member_samples),
            self.total_samples,
            self.attempt,
        ]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        t = cls.TYPE
        f = _fields(fields, 7, t)
        items = as_list(f[3], f"{t}.members", MAX_LIST_ITEMS)
        if not items:
            raise MalformedMessage(f"{t}.members: a group has at least one member")
        members = tuple(Contact.from_fields(c, f"{t}.members[{i}]") for i, c in enumerate(items))
        raws = [m.peer_id.raw for m in members]
        if any(a >= b for a, b in pairwise(raws)):
            raise MalformedMessage(f"{t}.members: must be sorted by peer id, without repeats")
        raw_samples = as_list(f[4], f"{t}.member_samples", MAX_LIST_ITEMS)
        if len(raw_samples) != len(members):
            raise MalformedMessage(f"{t}.member_samples: one entry per member expected")
        samples = tuple(
            as_int(x, f"{t}.member_samples[{i}]", 0, MAX_SAMPLES) for i, x in enumerate(raw_samples)
        )
        total = as_int(f[5], f"{t}.total_samples", 0, MAX_SAMPLES)
        if total != sum(samples):
            raise MalformedMessage(f"{t}.total_samples: {total} is not the sum of member_samples")
        return cls(
            as_str(f[0], f"{t}.run"),
            as_int(f[1], f"{t}.round", 0, MAX_ROUND),
            as_int(f[2], f"{t}.model_version", 0, MAX_ROUND),
            members,
            samples,
            total,
            as_int(f[6], f"{t}.attempt", 0, MAX_ATTEMPT),
        )


@dataclass(frozen=True, slots=True)
class RoundClose(Message):
    TYPE: ClassVar[str] = "round.close"
    run: str
    round_no: int
    model_version: int

    def to_fields(self) -> list[Any]:
        return [self.run, self.round_no, self.model_version]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        t = cls.TYPE
        f = _fields(fields, 3, t)
        return cls(
            as_str(f[0], f"{t}.run"),
            as_int(f[1], f"{t}.round", 0, MAX_ROUND),
            as_int(f[2], f"{t}.model_version", 0, MAX_ROUND),
        )


ROUND_MESSAGES: tuple[type[Message], ...] = (RoundJoin, RoundGroup, RoundClose)
