"""What the round core asks of its runtime and tells the application.

The first two are requests the PeerCore carries out on the DHT core (signing with
the node's identity on put, verifying on get, then answering with
``RoundCore.on_dht_records(now, tag, records)``). The rest are for the training
service / data plane.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.identity.keys import PeerId
from shoal.wire.contact import Contact


@dataclass(frozen=True, slots=True)
class DhtPutRequest:
    """Publish ``value`` under ``key``, signed by this peer, expiring ``ttl_s`` from
    now. The runtime picks the record's seq (increasing per key)."""

    tag: str
    key: bytes
    value: bytes
    ttl_s: float


@dataclass(frozen=True, slots=True)
class DhtGetRequest:
    """Read every record under ``key``; answer with ``on_dht_records(now, tag, ...)``
    holding ``(publisher, value)`` of each record that verified (possibly none)."""

    tag: str
    key: bytes


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """This peer closed round ``round_no``: ``reason`` is ``"target"``,
    ``"deadline"`` or ``"peer_closed"`` (a peer's join said the round was over).
    ``estimated_samples`` is the swarm total it saw; ``participants`` how many peers
    it will group (its shard's announced peers, itself included)."""

    round_no: int
    reason: str
    estimated_samples: int
    participants: int
    samples: int


@dataclass(frozen=True, slots=True)
class GroupFormed:
    """Average with exactly these peers (sorted by PeerId), weighting ``members[i]``
    by ``member_samples[i]``; ``total_samples`` is their sum. A later GroupFormed for the same
    round with a higher ``attempt`` replaces this one."""

    round_no: int
    members: tuple[Contact, ...]
    member_samples: tuple[int, ...]
    total_samples: int
    attempt: int
    leader: PeerId


@dataclass(frozen=True, slots=True)
class GroupFallback:
    """No leader answered: this peer averages alone this round (a GroupFormed of one
    follows)."""

    round_no: int
    reason: str


@dataclass(frozen=True, slots=True)
class RoundDone:
    """The data plane finished round ``round_no``; the core forgets it."""

    round_no: int
    group_size: int
    total_samples: int
    attempt: int
