"""Moshpit-style group formation: split a large swarm into small all-reduce groups.

All-reduce cost grows with the group (more streams, more chances that one member is
dead), so a swarm of N peers averages in groups of at most ``group_size`` and changes
who is grouped with whom every round. After a few rounds every peer's update has
reached every other peer through overlapping groups (Ryabinin et al., "Moshpit SGD",
2021), so the swarm converges to the global average without any all-to-all step.

Partition for round r: each peer gets the key SHA-256(seed | r | peer id); peers
sorted by key are dealt round-robin into ceil(N / group_size) groups. So groups are
balanced (sizes differ by at most one, never a lone straggler), reshuffled
pseudo-randomly every round, and identical at every peer that holds the same peer set,
seed and round number. No coordinator and no messages are needed.

Moshpit's paper uses a d-dimensional grid instead (exact average after d rounds when
N = M^d); that needs N close to a perfect power, which a churning swarm rarely is. Hashed
regrouping mixes in O(log N) rounds in expectation and tolerates any N.
"""

from __future__ import annotations

import hashlib
import struct

from shoal.identity.keys import PeerId

_DOMAIN = b"shoal-moshpit-v1\n"


def moshpit_groups(
    peers: list[PeerId], round_no: int, group_size: int, seed: bytes
) -> list[list[PeerId]]:
    """Partition ``peers`` into groups of at most ``group_size`` for round ``round_no``.

    Every peer appears in exactly one group; duplicates in ``peers`` count once. Each
    group is sorted by peer id (the order `all_reduce` expects); groups are listed in
    a fixed order, so "my group" is the same list at every member.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if round_no < 0:
        raise ValueError(f"round_no must be >= 0, got {round_no}")
    unique = sorted(set(peers))
    if not unique:
        return []
    salt = hashlib.sha256(_DOMAIN + struct.pack(">Q", round_no) + seed).digest()
    order = sorted(unique, key=lambda p: (hashlib.sha256(salt + p.raw).digest(), p.raw))
    n_groups = -(-len(order) // group_size)
    groups: list[list[PeerId]] = [[] for _ in range(n_groups)]
    for i, peer in enumerate(order):
        groups[i % n_groups].append(peer)
    return [sorted(g) for g in groups]


def group_of(groups: list[list[PeerId]], peer: PeerId) -> int:
    """Index of the group holding ``peer``; ValueError if it is in none."""
    for i, g in enumerate(groups):
        if peer in g:
            return i
    raise ValueError(f"{peer.short()} is in no group")
