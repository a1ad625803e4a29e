"""A small deterministic world for driving many RoundCores in one test.

The DHT is a dict (key -> publisher -> value) read and written after ``dht_delay``;
messages go through the real codec and arrive after a random latency drawn from the
world's own RNG (so deliveries can overtake each other); timers sit in one heap.
Training is emulated: every ``tick_s`` each live peer reports ``rate * elapsed``
samples. Dead peers swallow messages and fire no timers.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity import Identity, PeerId
from shoal.rounds import (
    ROUND_MESSAGES,
    DhtGetRequest,
    DhtPutRequest,
    GroupFormed,
    Phase,
    RoundConfig,
    RoundCore,
)
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

CODEC = Codec(ROUND_MESSAGES)


def identity(i: int, seed: int = 0) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"round-node-{seed}-{i}".encode()).digest())


@dataclass
class World:
    n: int
    config: RoundConfig
    seed: int = 0
    latency: tuple[float, float] = (0.005, 0.03)
    dht_delay: float = 0.05
    tick_s: float = 0.5
    rates: list[float] = field(default_factory=list)
    run: str = "run-a"
    drop: Callable[[int, int, Message], bool] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed ^ 0xD1CE)
        ids = [identity(i, self.seed) for i in range(self.n)]
        self.contacts = [Contact(x.peer_id, f"10.1.0.{i}:7000") for i, x in enumerate(ids)]
        self.index = {c.peer_id: i for i, c in enumerate(self.contacts)}
        self.cores = [
            RoundCore(c, self.run, self.config, random.Random(self.seed * 7919 + i))
            for i, c in enumerate(self.contacts)
        ]
        if not self.rates:
            self.rates = [100.0] * self.n
        self.now = 0.0
        self.dht: dict[bytes, dict[bytes, tuple[PeerId, bytes]]] = {}
        self.heap: list[tuple[float, int, int, str, object]] = []
        self.seq = 0
        self.timers: list[dict[str, int]] = [{} for _ in range(self.n)]
        self.dead: set[int] = set()
        self.events: list[list[tuple[float, object]]] = [[] for _ in range(self.n)]
        self.log: list[str] = []
        self.started: dict[int, float] = {}
        self.on_event: Callable[[int, object], None] = lambda i, ev: None

    # -- scheduling ----------------------------------------------------------------
    def _push(self, t: float, idx: int, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, idx, kind, payload))

    def apply(self, i: int, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                j = self.index[a.to.peer_id]
                assert a.to == self.contacts[j], "sent to a wrong address"
                data = CODEC.encode(a.msg)
                if self.drop is not None and self.drop(i, j, a.msg):
                    continue
                lo, hi = self.latency
                self._push(self.now + self.rng.uniform(lo, hi), j, "msg", (i, data))
            elif isinstance(a, SetTimer):
                if a.at is None:
                    self.timers[i].pop(a.name, None)
                else:
                    self.seq += 1
                    self.timers[i][a.name] = self.seq
                    heapq.heappush(self.heap, (max(a.at, self.now), self.seq, i, "timer", a.name))
            elif isinstance(a, Emit):
                ev = a.event
                if isinstance(ev, DhtPutRequest):
                    self._push(self.now + self.dht_delay, i, "put", ev)
                elif isinstance(ev, DhtGetRequest):
                    self._push(self.now + self.dht_delay, i, "get", ev)
                else:
                    self.events[i].append((self.now, ev))
                    self.log.append(f"{self.now:.6f} {i} {ev!r}")
                    self.on_event(i, ev)

    def start(self, i: int, round_no: int = 0, version: int = 0, at: float | None = None) -> None:
        self._push(self.now if at is None else at, i, "start", (round_no, version))

    def start_all(self, round_no: int = 0, version: int = 0) -> None:
        for i in range(self.n):
            self.start(i, round_no, version)

    def kill(self, i: int) -> None:
        self.dead.add(i)
        self.timers[i] = {}

    def run_until(self, t_end: float) -> None:
        while self.heap and self.heap[0][0] <= t_end:
            t, seq, i, kind, payload = heapq.heappop(self.heap)
            self.now = t
            if i in self.dead:
                continue
            core = self.cores[i]
            if kind == "timer":
                assert isinstance(payload, str)
                if self.timers[i].get(payload) != seq:
                    continue
                del self.timers[i][payload]
                self.log.append(f"{t:.6f} {i} timer {payload}")
                self.apply(i, core.on_timer(t, payload))
            elif kind == "msg":
                assert isinstance(payload, tuple)
                src, data = payload
                msg = CODEC.decode(data)
                self.log.append(f"{t:.6f} {src}>{i} {msg.TYPE}")
                self.apply(i, core.on_message(t, self.contacts[src], msg))
            elif kind == "put":
                assert isinstance(payload, DhtPutRequest)
                slot = self.dht.setdefault(payload.key, {})
                slot[core.me.peer_id.raw] = (core.me.peer_id, payload.value)
            elif kind == "get":
                assert isinstance(payload, DhtGetRequest)
                recs = [v for _, v in sorted(self.dht.get(payload.key, {}).items())]
                self.apply(i, core.on_dht_records(t, payload.tag, recs))
            elif kind == "start":
                assert isinstance(payload, tuple)
                self.started[i] = t
                self.apply(i, core.start_round(t, payload[0], payload[1]))
                self._push(t + self.tick_s, i, "tick", payload[0])
            elif (
                kind == "tick"
                and core.phase in (Phase.TRAINING, Phase.CLOSING)
                and core.round_no == payload
            ):
                samples = int(self.rates[i] * (t - self.started[i]))
                self.apply(i, core.report_progress(t, samples))
                self._push(t + self.tick_s, i, "tick", payload)
        self.now = max(self.now, t_end)

    # -- results -------------------------------------------------------------------
    def live(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.dead]

    def of_type(self, i: int, cls: type) -> list[object]:
        return [ev for _, ev in self.events[i] if isinstance(ev, cls)]

    def final_group(self, i: int) -> GroupFormed | None:
        groups = [ev for ev in self.of_type(i, GroupFormed) if isinstance(ev, GroupFormed)]
        return groups[-1] if groups else None
