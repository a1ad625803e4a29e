"""The iterative Kademlia lookup, as a state machine with no RPC or timer knowledge.

The core asks ``next_queries()`` which contacts to query now, sends them, and reports
each outcome with ``on_response`` or ``on_failure``. The lookup keeps every contact
it has heard of, ordered by XOR distance to the target, and:

- keeps at most ``alpha`` queries in flight;
- only queries contacts among the ``k`` nearest not-failed ones it knows;
- is done when each of those ``k`` nearest has answered or failed (or there are no
  more to ask), or after ``max_queries`` queries so a hostile peer feeding endless
  fake contacts cannot keep it running.

Hops. Each known contact has a *depth*: contacts that seeded the lookup (from our
routing table) have depth 1; a contact first learned from the reply of a depth-``d``
contact has depth ``d + 1`` (if it is learned from several replies, the smallest
depth counts). Depth is how many sequential round trips it took to reach a contact.
A lookup's ``hops`` is the largest depth among the contacts in its result (the ``k``
nearest that answered) — the number of round trips needed to reach the whole result.
A FIND_VALUE lookup reports the largest depth among responders whose records made it
into the result instead (see ``DhtCore.get``). A lookup nobody answered has 0 hops.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from shoal.identity.keys import PeerId
from shoal.wire.contact import Contact

NEW, IN_FLIGHT, RESPONDED, FAILED = 0, 1, 2, 3


class Candidate:
    __slots__ = ("contact", "depth", "dist", "state")

    def __init__(self, contact: Contact, dist: int, depth: int) -> None:
        self.contact = contact
        self.dist = dist
        self.depth = depth
        self.state = NEW


class Lookup:
    __slots__ = (
        "_by_dist",
        "_excluded",
        "_failed",
        "_in_flight",
        "_order",
        "_queried",
        "alpha",
        "exclude",
        "k",
        "max_candidates",
        "max_queries",
        "target",
    )

    def __init__(
        self,
        target: int,
        seeds: list[Contact],
        *,
        k: int,
        alpha: int,
        exclude: PeerId | None = None,
        max_queries: int = 0,
    ) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self.exclude = exclude
        self._excluded = exclude.dht_key ^ target if exclude is not None else -1
        # Contacts far outside the k nearest never matter; keep a few k of slack for
        # failures so memory per lookup is O(k) whatever peers send.
        self.max_candidates = 4 * k
        self.max_queries = max_queries if max_queries > 0 else 16 * k
        self._by_dist: dict[int, Candidate] = {}
        self._order: list[int] = []  # distances, ascending; failed ones are removed
        # Distances of contacts that failed, so a reply naming them again is ignored.
        # Only queried contacts can fail, so this is bounded by max_queries.
        self._failed: set[int] = set()
        self._in_flight = 0
        self._queried = 0
        self._learn(seeds, 1)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queried(self) -> int:
        return self._queried

    def _learn(self, contacts: list[Contact] | tuple[Contact, ...], depth: int) -> None:
        by_dist, order, target = self._by_dist, self._order, self.target
        excluded, failed, most = self._excluded, self._failed, self.max_candidates
        for c in contacts:
            dist = c.peer_id.dht_key ^ target
            known = by_dist.get(dist)
            if known is not None:
                # Known candidates are never failed or excluded: both are kept out.
                if depth < known.depth:
                    known.depth = depth
                continue
            if dist == excluded or dist in failed:
                continue
            if len(order) >= most and dist > order[-1]:
                continue
            by_dist[dist] = Candidate(c, dist, depth)
            insort(order, dist)
            if len(order) > self.max_candidates:
                self._trim()

    def _trim(self) -> None:
        """Drop the farthest candidates that are not in flight."""
        order = self._order
        i = len(order) - 1
        while len(order) > self.max_candidates and i >= 0:
            cand = self._by_dist[order[i]]
            if cand.state != IN_FLIGHT:
                del self._by_dist[order[i]]
                del order[i]
            i -= 1

    def next_queries(self) -> list[Contact]:
        """Contacts to query now (marked in flight). Empty when nothing more to ask."""
        out: list[Contact] = []
        if self._queried >= self.max_queries:
            return out
        seen = 0
        for dist in self._order:
            if self._in_flight >= self.alpha or seen >= self.k:
                break
            cand = self._by_dist[dist]
            if cand.state == FAILED:
                continue
            seen += 1
            if cand.state == NEW:
                cand.state = IN_FLIGHT
                self._in_flight += 1
                self._queried += 1
                out.append(cand.contact)
                if self._queried >= self.max_queries:
                    break
        return out

    @property
    def done(self) -> bool:
        if self._queried >= self.max_queries:
            return self._in_flight == 0
        seen = 0
        for dist in self._order:
            if seen >= self.k:
                break
            state = self._by_dist[dist].state
            if state == FAILED:
                continue
            if state in (NEW, IN_FLIGHT):
                return False
            seen += 1
        return True

    def _settle(self, peer_id: PeerId, state: int) -> Candidate | None:
        cand = self._by_dist.get(peer_id.dht_key ^ self.target)
        if cand is None or cand.state != IN_FLIGHT or cand.contact.peer_id.raw != peer_id.raw:
            return None
        cand.state = state
        self._in_flight -= 1
        return cand

    def on_response(
        self, peer_id: PeerId, contacts: list[Contact] | tuple[Contact, ...]
    ) -> Candidate | None:
        """``peer_id`` answered with ``contacts``. Returns its candidate, or None if it
        was not a query of this lookup in flight (the reply is then ignored)."""
        cand = self._settle(peer_id, RESPONDED)
        if cand is not None:
            self._learn(contacts, cand.depth + 1)
        return cand

    def on_failure(self, peer_id: PeerId) -> None:
        cand = self._settle(peer_id, FAILED)
        if cand is not None:
            self._failed.add(cand.dist)
            del self._by_dist[cand.dist]
            del self._order[bisect_left(self._order, cand.dist)]

    def responded(self) -> list[Candidate]:
        """The ``k`` nearest candidates that answered, nearest first."""
        out: list[Candidate] = []
        for dist in self._order:
            cand = self._by_dist[dist]
            if cand.state == RESPONDED:
                out.append(cand)
                if len(out) >= self.k:
                    break
        return out

    def result(self) -> list[Contact]:
        return [c.contact for c in self.responded()]

    @property
    def hops(self) -> int:
        return max((c.depth for c in self.responded()), default=0)
