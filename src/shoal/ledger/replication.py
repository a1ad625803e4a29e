"""Feed replication as a sans-IO core: gossip heads, pull missing ranges, verify all.

``advertise()`` returns a LedgerHave of our heads for the runtime to gossip.
``on_message(sender, msg)`` returns actions: replies to send back to ``sender`` and
events (entries ingested, equivocation found, an entry refused). The core holds no
socket or clock; its only state besides the feed store is nothing at all, so a lost
message just means the next gossip round asks again.

A head we hold at the same seq but with a different hash is a fork hint: we pull that
one entry, and ingesting it yields the equivocation proof.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shoal.effects import Action, Emit, Send
from shoal.ledger.entry import EntryError, decode_entry
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedError, FeedStore, Ingested
from shoal.ledger.limits import MAX_ENTRIES_PER_REPLY, MAX_FEEDS_PER_HAVE
from shoal.ledger.messages import FeedHead, LedgerEntries, LedgerHave, LedgerWant
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EntriesIngested:
    sender: Contact
    count: int


@dataclass(frozen=True, slots=True)
class EquivocationDetected:
    proof: EquivocationProof


@dataclass(frozen=True, slots=True)
class EntryRefused:
    sender: Contact
    reason: str


class ReplicationCore:
    def __init__(self, store: FeedStore) -> None:
        self.store = store

    def advertise(self) -> LedgerHave:
        heads = self.store.heads()[:MAX_FEEDS_PER_HAVE]
        return LedgerHave(tuple(FeedHead(h.author, h.seq, h.hash) for h in heads))

    def on_message(self, sender: Contact, msg: Message) -> list[Action]:
        if isinstance(msg, LedgerHave):
            return self._on_have(sender, msg)
        if isinstance(msg, LedgerWant):
            got = self.store.entries(msg.author, msg.start, min(msg.count, MAX_ENTRIES_PER_REPLY))
            return [Send(sender, LedgerEntries(tuple(e.encode() for e in got)))] if got else []
        if isinstance(msg, LedgerEntries):
            return self._on_entries(sender, msg)
        return []

    def _on_have(self, sender: Contact, msg: LedgerHave) -> list[Action]:
        out: list[Action] = []
        for h in msg.heads:
            mine = self.store.head(h.author)
            if mine is None or mine.seq < h.seq:
                start = 0 if mine is None else mine.seq + 1
                count = min(h.seq - start + 1, MAX_ENTRIES_PER_REPLY)
                out.append(Send(sender, LedgerWant(h.author, start, count)))
            else:
                have = self.store.get(h.author, h.seq)
                if have is not None and have.hash != h.hash:
                    out.append(Send(sender, LedgerWant(h.author, h.seq, 1)))
        return out

    def _on_entries(self, sender: Contact, msg: LedgerEntries) -> list[Action]:
        out: list[Action] = []
        appended = 0
        last = None
        for raw in msg.entries:
            try:
                entry = decode_entry(raw)
                result, proof = self.store.ingest(entry)
            except (EntryError, FeedError) as exc:
                log.warning("refused an entry from %s: %s", sender, exc)
                out.append(Emit(EntryRefused(sender, str(exc))))
                break  # later entries of the batch cannot link past a refused one
            if result is Ingested.APPENDED:
                appended += 1
                last = entry
            elif proof is not None:
                log.warning("equivocation by %s at seq %d", entry.author.short(), entry.seq)
                out.append(Emit(EquivocationDetected(proof)))
        if appended:
            out.append(Emit(EntriesIngested(sender, appended)))
        if last is not None and len(msg.entries) == MAX_ENTRIES_PER_REPLY:
            # A full batch: there may be more; keep pulling from where it ended.
            out.append(Send(sender, LedgerWant(last.author, last.seq + 1, MAX_ENTRIES_PER_REPLY)))
        return out
