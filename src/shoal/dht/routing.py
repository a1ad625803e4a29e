"""Kademlia routing table: 256 k-buckets by XOR distance, each with a replacement cache.

Bucket ``i`` holds the contacts whose XOR distance to us has its highest set bit at
``i`` (so bucket 255 covers half the key space, bucket 254 a quarter, ...). Buckets
are created lazily; a 10k-node swarm fills about 14 of them per node.

Within a bucket, contacts are kept least-recently-seen first. A full bucket keeps its
old, live contacts (they have proven they stay up) and parks newcomers in a bounded
replacement cache. A contact that fails ``max_fails`` times in a row is evicted and
the most recently seen replacement takes its place.
"""

from __future__ import annotations

import heapq
from enum import Enum

from shoal.identity.keys import PeerId
from shoal.wire.contact import Contact

KEY_BITS = 256

# ``closest`` answers are kept for this many (target, n) pairs until the set of live
# contacts changes. A holder is asked about the same few keys over and over (every
# peer polling a key's records asks the same ~k holders), and recency updates, the
# commonest change to a table, do not change which contacts are nearest.
CLOSEST_CACHE_ENTRIES = 8


class AddResult(Enum):
    ADDED = "added"  # a new contact entered the table
    UPDATED = "updated"  # already present; moved to most-recently-seen
    CACHED = "cached"  # bucket full; held in the replacement cache
    SELF = "self"  # our own id; ignored


class _Entry:
    __slots__ = ("contact", "fails", "key", "last_seen")

    def __init__(self, contact: Contact, now: float) -> None:
        self.contact = contact
        self.key = contact.peer_id.dht_key
        self.fails = 0
        self.last_seen = now


class _Bucket:
    __slots__ = ("cache", "live")

    def __init__(self) -> None:
        # Insertion order is recency order: the first entry is the least recently seen.
        self.live: dict[PeerId, _Entry] = {}
        self.cache: dict[PeerId, _Entry] = {}


class RoutingTable:
    __slots__ = ("_buckets", "_closest", "_count", "_desc", "k", "max_fails", "self_key")

    def __init__(self, self_key: int, k: int, max_fails: int = 3) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.self_key = self_key
        self.k = k
        self.max_fails = max_fails
        self._buckets: dict[int, _Bucket] = {}
        # Bucket indices, highest first; rebuilt only when a bucket appears or goes,
        # so ``closest`` (every lookup step and every reply) does not sort them.
        self._desc: list[int] = []
        # (target, n) -> the n + 1 nearest live contacts (one spare for ``exclude``)
        self._closest: dict[tuple[int, int], list[Contact]] = {}
        self._count = 0

    # -- queries ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, peer_id: object) -> bool:
        if not isinstance(peer_id, PeerId):
            return False
        b = self._buckets.get(self.bucket_index(peer_id.dht_key))
        return b is not None and peer_id in b.live

    @property
    def cache_size(self) -> int:
        return sum(len(b.cache) for b in self._buckets.values())

    def bucket_index(self, key: int) -> int:
        """Index of the bucket for ``key``; -1 for our own key."""
        return (key ^ self.self_key).bit_length() - 1

    def nonempty_buckets(self) -> list[int]:
        return sorted(i for i, b in self._buckets.items() if b.live)

    def contacts(self) -> list[Contact]:
        """Every live contact, nearest bucket first, least recently seen first within."""
        return [e.contact for i in sorted(self._buckets) for e in self._buckets[i].live.values()]

    def get(self, peer_id: PeerId) -> Contact | None:
        b = self._buckets.get(self.bucket_index(peer_id.dht_key))
        e = b.live.get(peer_id) if b is not None else None
        return e.contact if e is not None else None

    def closest(self, target: int, n: int, exclude: PeerId | None = None) -> list[Contact]:
        """The ``n`` live contacts nearest ``target`` by XOR distance, nearest first.

        Buckets partition the key space into XOR-distance ranges that do not overlap
        from ``target``'s point of view either: with ``d = self ^ target``, buckets
        whose bit ``i`` is set in ``d`` come first (highest ``i`` first), then the
        others (lowest ``i`` first). So we visit whole buckets in that order and only
        sort inside each, touching about ``n`` contacts instead of the whole table.
        """
        if n <= 0:
            return []
        cache = self._closest
        near = cache.get((target, n))
        if near is None:
            near = self._nearest(target, n + 1)
            if len(cache) >= CLOSEST_CACHE_ENTRIES:
                del cache[next(iter(cache))]
            cache[(target, n)] = near
        if exclude is None:
            return near[:n]
        skip = exclude.dht_key
        return [c for c in near if c.peer_id.dht_key != skip][:n]

    def _nearest(self, target: int, n: int) -> list[Contact]:
        d = self.self_key ^ target
        desc = self._desc
        order = [i for i in desc if (d >> i) & 1]
        order += [i for i in reversed(desc) if not (d >> i) & 1]
        buckets = self._buckets
        out: list[Contact] = []
        for i in order:
            live = buckets[i].live
            if not live:
                continue
            # (distance, entry): keys are distinct, so entries are never compared.
            ranked = sorted([(e.key ^ target, e) for e in live.values()])
            for _, e in ranked:
                out.append(e.contact)
                if len(out) >= n:
                    return out
        return out

    def closest_brute(self, target: int, n: int) -> list[Contact]:
        """Reference implementation of ``closest`` (for tests)."""
        entries = [e for b in self._buckets.values() for e in b.live.values()]
        return [e.contact for e in heapq.nsmallest(n, entries, key=lambda e: e.key ^ target)]

    def head(self, key: int) -> tuple[Contact, float] | None:
        """The least-recently-seen contact in ``key``'s bucket and when it was seen."""
        b = self._buckets.get(self.bucket_index(key))
        if b is None or not b.live:
            return None
        e = next(iter(b.live.values()))
        return e.contact, e.last_seen

    # -- updates ---------------------------------------------------------------------

    def add(self, contact: Contact, now: float) -> AddResult:
        """Record that ``contact`` is alive (it sent us something or answered us)."""
        key = contact.peer_id.dht_key
        idx = self.bucket_index(key)
        if idx < 0:
            return AddResult.SELF
        b = self._buckets.get(idx)
        if b is None:
            b = self._buckets[idx] = _Bucket()
            self._desc = sorted(self._buckets, reverse=True)
        pid = contact.peer_id
        e = b.live.pop(pid, None)
        if e is not None:
            if e.contact is not contact and e.contact != contact:
                self._closest.clear()  # the address changed
            e.contact = contact  # the address may have changed
            e.fails = 0
            e.last_seen = now
            b.live[pid] = e
            return AddResult.UPDATED
        if len(b.live) < self.k:
            b.cache.pop(pid, None)
            b.live[pid] = _Entry(contact, now)
            self._count += 1
            self._closest.clear()
            return AddResult.ADDED
        c = b.cache.pop(pid, None)
        if c is None:
            c = _Entry(contact, now)
        else:
            c.contact = contact
            c.last_seen = now
        b.cache[pid] = c
        if len(b.cache) > self.k:
            del b.cache[next(iter(b.cache))]
        return AddResult.CACHED

    def seen(self, peer_id: PeerId, now: float) -> bool:
        """Mark a present contact live again; False if it is not in the table."""
        b = self._buckets.get(self.bucket_index(peer_id.dht_key))
        if b is None:
            return False
        e = b.live.pop(peer_id, None)
        if e is None:
            return False
        e.fails = 0
        e.last_seen = now
        b.live[peer_id] = e
        return True

    def fail(self, peer_id: PeerId) -> tuple[bool, Contact | None]:
        """Count a failed RPC. Returns (evicted, promoted replacement or None)."""
        b = self._buckets.get(self.bucket_index(peer_id.dht_key))
        if b is None:
            return False, None
        if b.cache.pop(peer_id, None) is not None:
            return False, None  # a failing replacement is simply forgotten
        e = b.live.get(peer_id)
        if e is None:
            return False, None
        e.fails += 1
        if e.fails < self.max_fails:
            return False, None
        return True, self._evict(b, peer_id)

    def remove(self, peer_id: PeerId) -> Contact | None:
        """Drop ``peer_id`` (membership says it is dead); return a promoted replacement."""
        idx = self.bucket_index(peer_id.dht_key)
        b = self._buckets.get(idx)
        if b is None:
            return None
        b.cache.pop(peer_id, None)
        promoted = self._evict(b, peer_id) if peer_id in b.live else None
        if not b.live and not b.cache:
            del self._buckets[idx]
            self._desc = sorted(self._buckets, reverse=True)
        return promoted

    def _evict(self, b: _Bucket, peer_id: PeerId) -> Contact | None:
        del b.live[peer_id]
        self._count -= 1
        self._closest.clear()
        if not b.cache:
            return None
        # The most recently seen replacement is the likeliest to still be up.
        pid = next(reversed(b.cache))
        e = b.cache.pop(pid)
        e.fails = 0
        b.live[pid] = e
        self._count += 1
        return e.contact
