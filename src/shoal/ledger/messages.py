"""Wire messages of feed replication (protocol ``ledger``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from shoal.identity.keys import PeerId
from shoal.ledger.entry import HASH_BYTES
from shoal.ledger.limits import MAX_ENTRIES_PER_REPLY, MAX_ENTRY_BYTES, MAX_FEEDS_PER_HAVE
from shoal.wire.codec import Message
from shoal.wire.fields import as_bytes, as_int, as_list, as_peer_id, expect_len


@dataclass(frozen=True, slots=True)
class FeedHead:
    author: PeerId
    seq: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class LedgerHave(Message):
    """Gossip: the heads of the feeds the sender holds."""

    TYPE: ClassVar[str] = "ledger.have"
    heads: tuple[FeedHead, ...]

    def to_fields(self) -> list[Any]:
        return [[[h.author.raw, h.seq, h.hash] for h in self.heads]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 1, cls.TYPE)
        heads = []
        for row in as_list(fields[0], "heads", MAX_FEEDS_PER_HAVE):
            r = as_list(row, "head", 3)
            expect_len(r, 3, "head")
            heads.append(
                FeedHead(
                    as_peer_id(r[0], "author"),
                    as_int(r[1], "seq"),
                    as_bytes(r[2], "hash", HASH_BYTES, exact=HASH_BYTES),
                )
            )
        return cls(tuple(heads))


@dataclass(frozen=True, slots=True)
class LedgerWant(Message):
    """Pull: send me ``count`` entries of ``author``'s feed from ``start``."""

    TYPE: ClassVar[str] = "ledger.want"
    author: PeerId
    start: int
    count: int

    def to_fields(self) -> list[Any]:
        return [self.author.raw, self.start, self.count]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 3, cls.TYPE)
        return cls(
            as_peer_id(fields[0], "author"),
            as_int(fields[1], "start"),
            as_int(fields[2], "count", 1, MAX_ENTRIES_PER_REPLY),
        )


@dataclass(frozen=True, slots=True)
class LedgerEntries(Message):
    """Entries of one feed, in seq order; each is verified by the receiver."""

    TYPE: ClassVar[str] = "ledger.entries"
    entries: tuple[bytes, ...]

    def to_fields(self) -> list[Any]:
        return [list(self.entries)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 1, cls.TYPE)
        items = as_list(fields[0], "entries", MAX_ENTRIES_PER_REPLY)
        return cls(tuple(as_bytes(e, "entry", MAX_ENTRY_BYTES) for e in items))


LEDGER_MESSAGES: tuple[type[Message], ...] = (LedgerHave, LedgerWant, LedgerEntries)
