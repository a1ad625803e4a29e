"""Drive the replication core on a running node (the asyncio runtime's side).

Registers the ``ledger.*`` messages with the node's codec and hands them to the
core on the node's loop. ``announce(peers)`` gossips our heads; receivers pull what
they miss. An equivocation the core detects is passed to ``on_equivocation`` (the
training hook submits it on-chain).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from shoal.effects import Emit, Send
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedStore
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.ledger.replication import EquivocationDetected, ReplicationCore
from shoal.runtime.node import Node
from shoal.wire.codec import Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


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
        for t in LEDGER_MESSAGES:  # the runner registers them at start; API users may not
            node.codec.register(t)
        node.handle_protocol("ledger", self._on_message)

    def announce(self, peers: Iterable[Contact]) -> None:
        """Gossip our heads to ``peers`` (call on the node's loop)."""
        have = self.core.advertise()
        self.node.apply([Send(p, have) for p in peers if p.peer_id != self.node.peer_id])

    def _on_message(self, sender: Contact, msg: Message) -> None:
        self.messages += 1
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
