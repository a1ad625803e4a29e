"""The buffer of membership updates piggybacked on outgoing SWIM messages.

Infection-style dissemination (SWIM section 4.1): every update this node accepts is
queued here and sent on the next messages, fewest-times-sent first, until it has been
sent ``limit`` times (``retransmit_mult * ceil(log2(n + 1))``), which reaches every
member of a view of ``n`` with high probability.

Entries are kept in buckets indexed by how often they were sent, each bucket a dict in
insertion order. Picking ``m`` entries costs O(m + buckets) however long the buffer is;
the number of buckets is at most the retransmit limit (a few dozen). Within a bucket
the newest entry goes first, so fresh news overtakes old news sent equally often.
The buffer holds at most one entry per peer (a newer statement replaces an older) and
at most ``capacity`` entries; when full, the entry sent most often is dropped.
"""

from __future__ import annotations

from shoal.identity.keys import PeerId
from shoal.membership.state import Member


class GossipBuffer:
    __slots__ = ("_buckets", "_capacity", "_where")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._buckets: list[dict[PeerId, Member]] = [{}]
        self._where: dict[PeerId, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    @property
    def capacity(self) -> int:
        return self._capacity

    def enqueue(self, update: Member) -> None:
        """Queue ``update``, replacing any queued statement about the same peer."""
        pid = update.contact.peer_id
        old = self._where.get(pid)
        if old is not None:
            del self._buckets[old][pid]
        elif len(self._where) >= self._capacity:
            self._evict_most_sent()
        self._buckets[0][pid] = update
        self._where[pid] = 0

    def discard(self, pid: PeerId) -> None:
        count = self._where.pop(pid, None)
        if count is not None:
            del self._buckets[count][pid]

    def get(self, pid: PeerId) -> Member | None:
        count = self._where.get(pid)
        return None if count is None else self._buckets[count][pid]

    def take(self, max_items: int, limit: int, skip: PeerId | None = None) -> list[Member]:
        """Pick up to ``max_items`` entries to send now and count them as sent once.

        An entry that reaches ``limit`` sends leaves the buffer. ``skip`` names a peer
        whose entry the caller already put in the message.
        """
        picked: list[tuple[int, PeerId]] = []
        if max_items <= 0 or not self._where:
            return []
        for count, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            for pid in reversed(bucket):
                if pid != skip:
                    picked.append((count, pid))
                    if len(picked) >= max_items:
                        break
            if len(picked) >= max_items:
                break
        out = [self._buckets[count].pop(pid) for count, pid in picked]
        # Move oldest first so each bucket keeps its newest-last order.
        for (count, pid), update in zip(reversed(picked), reversed(out), strict=True):
            sent = count + 1
            if sent >= limit:
                del self._where[pid]
                continue
            if sent == len(self._buckets):
                self._buckets.append({})
            self._buckets[sent][pid] = update
            self._where[pid] = sent
        return out

    def _evict_most_sent(self) -> None:
        for bucket in reversed(self._buckets):
            if bucket:
                pid = next(iter(bucket))
                del bucket[pid]
                del self._where[pid]
                return
