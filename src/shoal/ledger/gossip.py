"""Drive the replication core on a running node (the asyncio runtime's side).

Registers the ``ledger.*`` messages with the node's codec and hands them to the
core on the node's loop. ``announce(peers)`` gossips our heads; receivers pull what
they miss. An equivocation the core detects is passed to ``on_equivocation`` (the
training hook submits it on-chain). The heads each peer last advertised are kept
(``heard``), so a node can tell when the swarm holds the same feeds as it does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.effects import Emit, Send
from shoal.identity.keys import PeerId
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedStore
from shoal.ledger.messages import LEDGER_MESSAGES, FeedHead, LedgerHave
from shoal.ledger.replication import EquivocationDetected, ReplicationCore
from shoal.runtime.node import Node
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

# Peers whose last advertised heads we remember; any peer can send a HAVE, so the map
# is bounded (the oldest is forgotten first). Far above a run's group of peers.
MAX_HEARD_PEERS = 1024


@dataclass(frozen=True, slots=True)
class Heard:
    """The heads a peer last advertised, since when it has advertised exactly these,
    and when we last heard them (monotonic seconds)."""

    heads: frozenset[FeedHead]
    since: float
    seen: float


class FeedGossip:
    def __init__(
        self,
        node: Node,
        store: FeedStore,
        on_equivocation: Callable[[EquivocationProof], None] | None = None,
    ) -> None:
        self.node = node
        self.core = ReplicationCore(store)
        self.on_equivocation = on_equivocation
        self.messages = 0
        # peer -> the heads it last advertised to us (read on the node's loop)
        self.heard: dict[PeerId, Heard] = {}
        for t in LEDGER_MESSAGES:  # the runner registers them at start; API users may not
            node.codec.register(t)
        node.handle_protocol("ledger", self._on_message)

    def announce(self, peers: Iterable[Contact]) -> None:
        """Gossip our heads to ``peers`` (call on the node's loop)."""
        have = self.core.advertise()
        self.node.apply([Send(p, have) for p in peers if p.peer_id != self.node.peer_id])

    def _on_message(self, sender: Contact, msg: Message) -> None:
        self.messages += 1
        if isinstance(msg, LedgerHave):
            self._remember(sender.peer_id, frozenset(msg.heads))
        try:
            acts = self.core.on_message(sender, msg)
        except Exception:  # a store failure must not take the node loop down
            log.exception("ledger message from %s failed", sender.peer_id.short())
            return
        for a in acts:
            if isinstance(a, Emit) and isinstance(a.event, EquivocationDetected):
                log.warning("equivocation by %s", a.event.proof.a.author.short())
                if self.on_equivocation is not None:
                    self.on_equivocation(a.event.proof)
        self.node.apply([a for a in acts if isinstance(a, Send)])

    def _remember(self, peer: PeerId, heads: frozenset[FeedHead]) -> None:
        now = time.monotonic()
        old = self.heard.pop(peer, None)  # re-inserted last: the order is oldest first
        if len(self.heard) >= MAX_HEARD_PEERS:
            del self.heard[next(iter(self.heard))]
        since = old.since if old is not None and old.heads == heads else now
        self.heard[peer] = Heard(heads, since, now)
