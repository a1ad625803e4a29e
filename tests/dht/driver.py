"""A tiny deterministic network for driving many DhtCores in one test.

Sends are delivered instantly in FIFO order (optionally through the real codec);
timers sit in a heap and fire, in order, whenever no message is in flight. Dead nodes
swallow messages; the sender learns nothing and waits for its RPC timeout.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque

from shoal.dht import DHT_MESSAGES, DhtConfig, DhtCore
from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity import Identity, PeerId
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact


def identity(i: int, seed: int = 0) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"node-{seed}-{i}".encode()).digest())


class Network:
    def __init__(
        self, n: int, config: DhtConfig | None = None, seed: int = 0, codec: bool = True
    ) -> None:
        self.config = config or DhtConfig()
        self.now = 0.0
        self.ids = [identity(i, seed) for i in range(n)]
        self.contacts = [
            Contact(ident.peer_id, f"10.0.{i // 250}.{i % 250}:7000")
            for i, ident in enumerate(self.ids)
        ]
        self.cores: dict[PeerId, DhtCore] = {}
        for i, c in enumerate(self.contacts):
            self.cores[c.peer_id] = DhtCore(c, self.config, random.Random(seed * 100_003 + i))
        self.by_peer = {c.peer_id: c for c in self.contacts}
        self.index = {c.peer_id: i for i, c in enumerate(self.contacts)}
        self.record_trace = False
        self.dead: set[PeerId] = set()
        self.codec = Codec(DHT_MESSAGES) if codec else None
        self.queue: deque[tuple[Contact, Send]] = deque()
        self.timers: list[tuple[float, int, PeerId, str]] = []
        self.timer_at: dict[tuple[PeerId, str], float] = {}
        self.seq = 0
        self.events: dict[PeerId, list[object]] = {c.peer_id: [] for c in self.contacts}
        self.trace: list[tuple[int, Action]] = []
        self.messages = 0

    def core(self, i: int) -> DhtCore:
        return self.cores[self.contacts[i].peer_id]

    def apply(self, me: Contact, actions: list[Action]) -> None:
        for a in actions:
            if self.record_trace:
                self.trace.append((self.index[me.peer_id], a))
            if isinstance(a, Send):
                self.queue.append((me, a))
            elif isinstance(a, SetTimer):
                key = (me.peer_id, a.name)
                if a.at is None:
                    self.timer_at.pop(key, None)
                else:
                    self.timer_at[key] = a.at
                    self.seq += 1
                    heapq.heappush(self.timers, (a.at, self.seq, me.peer_id, a.name))
            elif isinstance(a, Emit):
                self.events[me.peer_id].append(a.event)

    def deliver_all(self) -> None:
        while self.queue:
            src, send = self.queue.popleft()
            dst = send.to.peer_id
            if dst in self.dead or src.peer_id in self.dead or dst not in self.cores:
                continue
            msg = send.msg
            if self.codec is not None:
                msg = self.codec.decode(self.codec.encode(msg))
            self.messages += 1
            self.apply(send.to, self.cores[dst].on_message(self.now, src, msg))

    def run_until(self, t: float) -> None:
        """Deliver messages and fire timers up to time ``t``."""
        self.deliver_all()
        while self.timers and self.timers[0][0] <= t:
            at, _, pid, name = heapq.heappop(self.timers)
            if self.timer_at.get((pid, name)) != at or pid in self.dead:
                continue
            del self.timer_at[(pid, name)]
            self.now = max(self.now, at)
            self.apply(self.by_peer[pid], self.cores[pid].on_timer(self.now, name))
            self.deliver_all()
        self.now = max(self.now, t)

    def settle(self, dt: float = 30.0) -> None:
        """Run long enough for every RPC to answer or time out (not periodic timers)."""
        self.run_until(self.now + dt)

    def bootstrap_all(self) -> None:
        first = self.contacts[0]
        self.apply(first, self.cores[first.peer_id].bootstrap(self.now, []))
        for c in self.contacts[1:]:
            self.apply(c, self.cores[c.peer_id].bootstrap(self.now, [first]))
            self.deliver_all()

    def last_event(self, i: int, kind: type[object], op_id: int | None = None) -> object:
        for ev in reversed(self.events[self.contacts[i].peer_id]):
            if isinstance(ev, kind) and (op_id is None or getattr(ev, "op_id", None) == op_id):
                return ev
        raise AssertionError(f"no {kind.__name__} event for node {i} op {op_id}")

    def true_closest(self, target: int, k: int, exclude: PeerId | None = None) -> list[PeerId]:
        live = [
            c.peer_id for c in self.contacts if c.peer_id not in self.dead and c.peer_id != exclude
        ]
        return sorted(live, key=lambda p: p.dht_key ^ target)[:k]
