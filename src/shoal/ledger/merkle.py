"""Merkle root over a round's feed heads (its contributors' commitment entries).

Leaves are sorted by author so every peer computes the same root from the same set.
Leaf and node hashes are domain-separated (0x00 / 0x01 prefixes) so a leaf can never
be passed off as an inner node (second-preimage attack on plain Merkle trees). An odd
node is promoted unchanged to the next level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from shoal.ledger.payloads import Contribution


def leaf_hash(c: Contribution) -> bytes:
    return hashlib.sha256(
        b"\x00" + c.author.raw + c.seq.to_bytes(8, "big") + c.entry_hash
        + c.samples.to_bytes(8, "big")
    ).digest()  # fmt: skip


def feeds_root(contributions: Iterable[Contribution]) -> bytes:
    level = [leaf_hash(c) for c in sorted(contributions, key=lambda c: c.author.raw)]
    if not level:
        raise ValueError("a feeds root needs at least one feed head")
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
