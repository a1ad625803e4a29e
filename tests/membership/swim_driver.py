"""A small deterministic driver for SwimCore tests: virtual time, a heap of events,
fixed-latency delivery, crashes, restarts and per-link drop rules.

It is deliberately independent of the project's simulator so that the membership
tests do not depend on it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.membership import SWIM_MESSAGES, MemberState, SwimConfig, SwimCore
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

CODEC = Codec(SWIM_MESSAGES)

DropRule = Callable[[PeerId, PeerId], bool]


def make_contacts(n: int, rng: random.Random) -> list[Contact]:
    return [
        Contact(PeerId(rng.randbytes(32)), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7000")
        for i in range(n)
    ]


@dataclass
class Node:
    contact: Contact
    core: SwimCore
    life: int
    timers: dict[str, int] = field(default_factory=dict)


class SwimDriver:
    def __init__(
        self,
        n: int,
        seed: int,
        config: SwimConfig | None = None,
        latency: float = 0.01,
        wire: bool = False,
        unreachable_on_crash: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.config = config or SwimConfig()
        self.latency = latency
        self.wire = wire
        self.unreachable_on_crash = unreachable_on_crash
        self.contacts = make_contacts(n, self.rng)
        self.by_id = {c.peer_id: c for c in self.contacts}
        self.nodes: dict[PeerId, Node] = {}
        self.crashed: set[PeerId] = set()
        self.drop_rules: list[DropRule] = []
        self.now = 0.0
        self._heap: list[tuple[float, int, Any]] = []
        self._counter = 0
        self._life = 0
        # (time, observer, event) for every Emit; every action if record_actions.
        self.events: list[tuple[float, PeerId, object]] = []
        self.record_actions = False
        self.trace: list[tuple[float, PeerId, str]] = []
        self.messages_sent = 0

    # ------------------------------------------------------------- lifecycle

    def boot(self, pid: PeerId, seeds: list[Contact]) -> SwimCore:
        self._life += 1
        core = SwimCore(
            self.by_id[pid], self.config, random.Random(f"{self.seed}:{pid.raw.hex()}:{self._life}")
        )
        node = Node(self.by_id[pid], core, self._life)
        self.nodes[pid] = node
        self.crashed.discard(pid)
        self._handle(node, core.start(self.now))
        for seed in seeds:
            self._handle(node, core.add_member(self.now, seed))
        return core

    def boot_all(self, seeds_per_node: int = 3, introducer: int | None = 0) -> None:
        for i, c in enumerate(self.contacts):
            others = [o for o in self.contacts if o.peer_id != c.peer_id]
            seeds = self.rng.sample(others, min(seeds_per_node, len(others)))
            if introducer is not None and i != introducer:
                intro = self.contacts[introducer]
                if intro not in seeds:
                    seeds.append(intro)
            self.boot(c.peer_id, seeds)

    def crash(self, pid: PeerId) -> None:
        self.crashed.add(pid)
        del self.nodes[pid]

    def core(self, pid: PeerId) -> SwimCore:
        return self.nodes[pid].core

    def live(self) -> list[PeerId]:
        return [c.peer_id for c in self.contacts if c.peer_id in self.nodes]

    # ------------------------------------------------------------- running

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= t_end:
            at, _, item = heapq.heappop(heap)
            self.now = at
            kind = item[0]
            if kind == "msg":
                _, src, dst, life, payload = item
                node = self.nodes.get(dst)
                if node is None or node.life != life:
                    continue
                msg = CODEC.decode(payload) if self.wire else payload
                self._handle(node, node.core.on_message(at, self.by_id[src], msg))
            elif kind == "timer":
                _, pid, life, name, token = item
                node = self.nodes.get(pid)
                if node is None or node.life != life or node.timers.get(name) != token:
                    continue
                del node.timers[name]
                self._handle(node, node.core.on_timer(at, name))
            else:  # unreachable
                _, pid, life, target = item
                node = self.nodes.get(pid)
                if node is None or node.life != life:
                    continue
                self._handle(node, node.core.on_unreachable(at, target))
        self.now = t_end

    def _push(self, at: float, item: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (at, self._counter, item))

    def _dropped(self, src: PeerId, dst: PeerId) -> bool:
        return any(rule(src, dst) for rule in self.drop_rules)

    def _handle(self, node: Node, actions: list[Action]) -> None:
        me = node.contact.peer_id
        for action in actions:
            if self.record_actions:
                self.trace.append((self.now, me, repr(action)))
            if isinstance(action, Send):
                self.messages_sent += 1
                dst = action.to.peer_id
                target = self.nodes.get(dst)
                if target is None:
                    if self.unreachable_on_crash:
                        self._push(self.now + self.latency, ("unr", me, node.life, action.to))
                    continue
                if self._dropped(me, dst):
                    continue
                msg: Message = action.msg
                payload = CODEC.encode(msg) if self.wire else msg
                self._push(self.now + self.latency, ("msg", me, dst, target.life, payload))
            elif isinstance(action, SetTimer):
                if action.at is None:
                    node.timers.pop(action.name, None)
                else:
                    self._counter += 1
                    node.timers[action.name] = self._counter
                    heapq.heappush(
                        self._heap,
                        (
                            action.at,
                            self._counter,
                            ("timer", me, node.life, action.name, self._counter),
                        ),
                    )
            elif isinstance(action, Emit):
                self.events.append((self.now, me, action.event))
            else:  # pragma: no cover - a new action kind must be handled here
                raise AssertionError(f"unknown action {action!r}")

    # ------------------------------------------------------------- observations

    def state_of(self, observer: PeerId, pid: PeerId) -> MemberState | None:
        m = self.core(observer).member(pid)
        return None if m is None else m.state

    def events_of(self, kind: type, about: PeerId | None = None) -> list[tuple[float, PeerId, Any]]:
        return [
            (t, obs, ev)
            for t, obs, ev in self.events
            if isinstance(ev, kind) and (about is None or ev.contact.peer_id == about)  # type: ignore[attr-defined]
        ]
