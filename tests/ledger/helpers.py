"""Builders shared by the ledger tests."""

from __future__ import annotations

from collections import deque

from shoal.effects import Emit, Send
from shoal.identity.keys import Identity
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.ledger.replication import ReplicationCore
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact

CODEC = Codec(LEDGER_MESSAGES)


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


def digest(n: int) -> bytes:
    return bytes([n]) * 32


def pump(cores: dict[Contact, ReplicationCore], rounds: int = 3) -> list[object]:
    """Gossip heads all-to-all, then deliver every message (through the codec)."""
    events: list[object] = []
    for _ in range(rounds):
        q: deque[tuple[Contact, Contact, bytes]] = deque()
        for src, core in cores.items():
            for dst in cores:
                if dst != src:
                    q.append((src, dst, CODEC.encode(core.advertise())))
        steps = 0
        while q:
            steps += 1
            assert steps < 10_000, "replication did not converge"
            src, dst, data = q.popleft()
            for act in cores[dst].on_message(src, CODEC.decode(data)):
                if isinstance(act, Send):
                    q.append((dst, act.to, CODEC.encode(act.msg)))
                elif isinstance(act, Emit):
                    events.append(act.event)
    return events
