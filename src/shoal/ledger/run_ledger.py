"""One peer's ledger for one run: its feed, the chain, and the rules for a round.

The training loop calls, per round:
  1. ``commit_update(round, delta_hash, samples)`` before its update is used: a
     signed update-commitment entry, durable in the feed;
  2. ``accept_commitment(entry, round)`` on every group member's commitment it
     pulled by replication: refused if forged, for another run, for another round
     (a replayed old commitment), already used in an earlier aggregate, or by a peer
     the chain has not admitted;
  3. ``record_round(round, model_hash, contributions)``: a round-aggregate entry
     naming the model hash and every contributor's commitment (its feed head);
  4. ``anchor(entry)``: one transaction with the Merkle root of those heads, the
     model hash, and each contributor's credit (its samples).
"""

from __future__ import annotations

import logging
import time

from shoal.identity.keys import Identity, PeerId
from shoal.ledger.chain import Ledger, LedgerRevert
from shoal.ledger.entry import Entry, EntryError, Kind
from shoal.ledger.feed import FeedStore
from shoal.ledger.limits import MAX_CONTRIBUTORS
from shoal.ledger.merkle import feeds_root
from shoal.ledger.payloads import (
    Contribution,
    JoinedRun,
    RoundAggregate,
    UpdateCommitment,
    payload_of,
)

log = logging.getLogger(__name__)

# Admission is read from the chain at most this often per peer: a ban takes effect
# off-chain within this time (on-chain, anchors refuse banned peers at once).
ADMISSION_CACHE_S = 30.0


class NotAdmitted(RuntimeError):
    """The chain has not admitted this peer to the run (or has banned it)."""


class CommitmentRejected(ValueError):
    """A peer's update commitment cannot be used for this round."""


class RunLedger:
    def __init__(
        self, identity: Identity, store: FeedStore, chain: Ledger | None, run: str
    ) -> None:
        self.identity = identity
        self.store = store
        self.chain = chain
        self.run = run
        self._used: set[bytes] = set()
        self._admitted: dict[PeerId, float] = {}  # peer -> monotonic time it was checked
        for e in store.entries(identity.peer_id):
            if e.kind == Kind.ROUND_AGGREGATE:
                agg = payload_of(e)
                assert isinstance(agg, RoundAggregate)
                self._used.update(c.entry_hash for c in agg.contributors)

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    def join(self) -> None:
        """Refuse to take part unless admitted on-chain; then record the join."""
        if self.chain is not None and not self.chain.is_admitted(self.peer_id):
            raise NotAdmitted(f"peer {self.peer_id} is not admitted to run {self.run!r} on-chain")
        for e in self.store.entries(self.peer_id):
            p = payload_of(e)
            if isinstance(p, JoinedRun) and p.run == self.run:
                return
        self.store.append(self.identity, JoinedRun(self.run))

    def admitted_within(self, peer: PeerId, seconds: float) -> bool:
        """Did the chain say ``peer`` was admitted less than ``seconds`` ago?"""
        seen = self._admitted.get(peer)
        return seen is not None and time.monotonic() - seen < seconds

    def is_admitted(self, peer: PeerId) -> bool:
        if self.chain is None:
            return True
        now = time.monotonic()
        seen = self._admitted.get(peer)
        if seen is not None and now - seen < ADMISSION_CACHE_S:
            return True
        if not self.chain.is_admitted(peer):
            self._admitted.pop(peer, None)
            return False
        self._admitted[peer] = now
        return True

    def commit_update(self, round_no: int, delta_hash: bytes, samples: int) -> Contribution:
        e = self.store.append(
            self.identity, UpdateCommitment(self.run, round_no, delta_hash, max(1, samples))
        )
        return Contribution(e.author, e.seq, e.hash, max(1, samples))

    def commitment_of(self, author: PeerId, round_no: int) -> Entry | None:
        """``author``'s newest commitment for ``round_no`` that we hold, if any."""
        head = self.store.head(author)
        if head is None:
            return None
        # Commitments are recent; scan back a bounded number of entries.
        for e in reversed(self.store.entries(author, max(0, head.seq - 64))):
            if e.kind == Kind.UPDATE_COMMITMENT:
                p = payload_of(e)
                if isinstance(p, UpdateCommitment) and p.run == self.run and p.round == round_no:
                    return e
        return None

    def accept_commitment(self, entry: Entry, round_no: int) -> Contribution:
        who = f"{entry.author.short()}#{entry.seq}"
        if not entry.signature_ok():
            raise CommitmentRejected(f"commitment {who} is not signed by its author")
        if entry.kind != Kind.UPDATE_COMMITMENT:
            raise CommitmentRejected(f"entry {who} is a {entry.kind.name}, not a commitment")
        try:
            p = payload_of(entry)
        except EntryError as exc:
            raise CommitmentRejected(f"commitment {who}: {exc}") from exc
        assert isinstance(p, UpdateCommitment)
        if p.run != self.run:
            raise CommitmentRejected(f"commitment {who} is for run {p.run!r}, not {self.run!r}")
        if p.round != round_no:
            raise CommitmentRejected(
                f"commitment {who} is for round {p.round}, not {round_no} (replayed or stale)"
            )
        if entry.hash in self._used:
            raise CommitmentRejected(f"commitment {who} was already used in an earlier round")
        stored = self.store.get(entry.author, entry.seq)
        if stored is None or stored.hash != entry.hash:
            raise CommitmentRejected(f"commitment {who} is not in the author's verified feed")
        if not self.is_admitted(entry.author):
            raise CommitmentRejected(f"{entry.author} is not admitted on-chain")
        return Contribution(entry.author, entry.seq, entry.hash, p.samples)

    def record_round(
        self, round_no: int, model_hash: bytes, contributions: list[Contribution]
    ) -> Entry:
        if not 0 < len(contributions) <= MAX_CONTRIBUTORS:
            raise ValueError(f"a round has 1..{MAX_CONTRIBUTORS} contributors")
        contribs = tuple(sorted(contributions, key=lambda c: c.author.raw))
        root = feeds_root(contribs)
        agg = RoundAggregate(self.run, round_no, model_hash, root, contribs)
        entry = self.store.append(self.identity, agg)
        self._used.update(c.entry_hash for c in contribs)
        return entry

    def anchor(self, aggregate: Entry) -> str | None:
        """Anchor a round-aggregate entry on-chain in one transaction.

        Returns the tx hash, or None when the round was already anchored (another
        member of the group got there first) with the same root and model hash.
        """
        if self.chain is None:
            return None
        agg = payload_of(aggregate)
        assert isinstance(agg, RoundAggregate)
        credits = [(c.author, c.samples) for c in agg.contributors]
        try:
            return self.chain.anchor_round(agg.round, agg.feeds_root, agg.model_hash, credits)
        except LedgerRevert as exc:
            if exc.reason != "stale-round":
                raise
            have = self.chain.anchor(agg.round)
            if have is not None and have[:2] == (agg.feeds_root, agg.model_hash):
                return None
            raise
