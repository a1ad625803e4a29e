"""How the participants of a round are split into averaging groups.

Moshpit SGD (Ryabinin et al., 2021) arranges peers in a grid and, each round, averages
along a different axis, so after d rounds of groups of M every peer holds the average
of all M^d. ``moshpit_groups`` does this for d = 2 with any peer count: peers are
ordered by a hash of (seed, epoch, peer), epoch = round // 2; even rounds average rows
(contiguous runs of that order) and odd rounds average columns (every G-th peer). When
n = M * M this is exactly Moshpit's 2-D grid; each new epoch reshuffles the grid so
swarms bigger than M * M still mix.

The partition is a pure function of its inputs: every peer that sees the same
participants computes the same groups.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from shoal.identity.keys import PeerId


def _rank(seed: bytes, tag: bytes, pid: PeerId) -> bytes:
    return hashlib.sha256(tag + len(seed).to_bytes(4, "big") + seed + pid.raw).digest()


def moshpit_groups(
    peer_ids: Iterable[PeerId], round_no: int, group_size: int, seed: bytes
) -> list[list[PeerId]]:
    """Partition ``peer_ids`` into ceil(n / group_size) groups whose sizes differ by at
    most one (so none exceeds ``group_size``). Each group is sorted by PeerId and the
    groups are sorted by their smallest member. Input order and duplicates do not
    matter."""
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    if round_no < 0:
        raise ValueError("round_no must be >= 0")
    ids = sorted(set(peer_ids), key=lambda p: p.raw)
    n = len(ids)
    if n == 0:
        return []
    g = math.ceil(n / group_size)
    tag = b"shoal/moshpit/v1\x00" + (round_no // 2).to_bytes(8, "big")
    order = sorted(ids, key=lambda p: _rank(seed, tag, p))
    groups: list[list[PeerId]] = [[] for _ in range(g)]
    if round_no % 2 == 0:
        base, extra = divmod(n, g)
        i = 0
        for k in range(g):
            size = base + (1 if k < extra else 0)
            groups[k] = order[i : i + size]
            i += size
    else:
        for i, p in enumerate(order):
            groups[i % g].append(p)
    out = [sorted(grp, key=lambda p: p.raw) for grp in groups]
    out.sort(key=lambda grp: grp[0].raw)
    return out


def shard_of(peer_id: PeerId, round_no: int, shards: int, seed: bytes) -> int:
    """The progress shard ``peer_id`` publishes to in ``round_no``. Reshuffled every
    round, so the peers that share a shard (and so may share a group) change."""
    if shards <= 1:
        return 0
    h = hashlib.sha256(
        b"shoal/shard/v1\x00" + seed + round_no.to_bytes(8, "big") + peer_id.raw
    ).digest()
    return int.from_bytes(h[:8], "big") % shards
