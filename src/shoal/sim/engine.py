"""Discrete-event engine: a heap of (time, seq) events over virtual time.

Hosts are sans-IO cores addressed as ``sim:<index>``. Every delivered message and
fired timer is folded into a SHA-256 trace, so two runs with the same seed can be
compared byte for byte; ``trace_file`` also writes the trace lines out for diffing
a failing seed.

With ``counting`` on, the encoded size of every message a host sends is added to
``sent[protocol][host]``. A message is encoded once, when it is sent: that one
encoding gives both its size and the digest the trace records on delivery.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.sim.network import NetworkModel
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

_MSG = 0
_TIMER = 1
# Trace lines are hashed (and written) in batches of this many: one hash update per
# batch instead of two per event. Hashing the joined lines gives the same digest.
_TRACE_BATCH = 4096
# Cancelled and replaced timers stay in the heap until their time comes (every RPC
# sets a timeout and nearly every one is cancelled by its reply). Once more than this
# many are dead and they outnumber the live entries, the heap is rebuilt without them.
# The (time, seq) order of what remains is unchanged, so the run is too.
_COMPACT_MIN_DEAD = 65_536


# A simulated swarm allocates millions of short-lived objects (messages, actions, heap
# entries) while holding millions of long-lived ones (routing tables, stores, keys),
# and every full collection of CPython's cyclic GC walks all of them: at 10,000 peers
# that was ~20% of the run's CPU (perf: gc_collect_main, visit_decref,
# visit_reachable). With a young generation this large most short-lived objects die
# before their first collection instead of being promoted and walked again and again.
GC_YOUNG_THRESHOLD = 100_000


@contextmanager
def simulation_gc() -> Iterator[Callable[[], None]]:
    """Run the block with a large young generation; yields ``freeze()``, which takes
    every object alive at that moment (a swarm once built) out of later collections.
    The collector's thresholds and frozen objects are restored on exit. Garbage
    collection never changes what the simulated cores do, only when memory is freed.
    """
    old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, old[1], old[2])
    frozen = False

    def freeze() -> None:
        nonlocal frozen
        gc.collect()  # what is already garbage is freed, not kept for good
        gc.freeze()
        frozen = True

    try:
        yield freeze
    finally:
        if frozen:
            gc.unfreeze()
        gc.set_threshold(*old)


class SimCore(Protocol):
    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]: ...

    def on_timer(self, now: float, name: str) -> list[Action]: ...


def sim_addr(index: int) -> str:
    return f"sim:{index}"


class Simulator:
    def __init__(
        self,
        seed: int,
        network: NetworkModel | None = None,
        codec: Codec | None = None,
        trace_file: IO[str] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        # The network draws from its own stream so adding a core that uses randomness
        # does not change which packets get lost.
        self.net_rng = random.Random(seed ^ 0x5EED)
        self.network = network or NetworkModel()
        self.codec = codec
        self.now = 0.0
        self.cores: list[SimCore | None] = []
        self.contacts: list[Contact] = []
        # (time, seq, kind, dst, a, b, digest): a message is (src, msg, digest of its
        # encoding or ""), a timer is (name, its seq, "").
        self._heap: list[tuple[float, int, int, int, Any, Any, str]] = []
        self._seq = 0
        self._dead_timers = 0  # heap entries of cancelled or replaced timers
        self._timers: list[dict[str, int]] = []
        self._trace = hashlib.sha256()
        self._trace_file = trace_file
        self._lines: list[str] = []
        # "sim:<i>" -> i, so a send does not parse its destination address
        self._index: dict[str, int] = {}
        self.delivered = 0
        self.dropped = 0
        self.on_emit: Callable[[int, float, object], None] = lambda i, t, e: None
        self.counting = False
        # protocol -> bytes sent per host (only while ``counting``)
        self.sent: dict[str, list[int]] = {}
        # message class -> its protocol (``Message.protocol`` splits TYPE on each call)
        self._protocols: dict[type[Message], str] = {}

    # -- hosts -----------------------------------------------------------------
    def add_host(self, contact: Contact, core: SimCore) -> int:
        index = len(self.cores)
        if contact.addr != sim_addr(index):
            raise ValueError(f"host {index} must have address {sim_addr(index)}")
        self.cores.append(core)
        self.contacts.append(contact)
        self._index[contact.addr] = index
        self._timers.append({})
        return index

    def crash(self, index: int) -> None:
        """The host vanishes: its pending timers never fire and packets to it are lost."""
        self.network.crashed.add(index)
        self.cores[index] = None
        self._dead_timers += len(self._timers[index])
        self._timers[index] = {}
        self._record(f"{self._t()} crash {index}")

    def restart(self, index: int, core: SimCore) -> None:
        self.network.crashed.discard(index)
        self.cores[index] = core
        self._record(f"{self._t()} restart {index}")

    # -- running ---------------------------------------------------------------
    def apply(self, index: int, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._send(index, a.to, a.msg)
            elif isinstance(a, SetTimer):
                self._set_timer(index, a.name, a.at)
            elif isinstance(a, Emit):
                self.on_emit(index, self.now, a.event)

    def run_until(self, t_end: float, max_events: int | None = None) -> None:
        try:
            self._run_until(t_end, max_events)
        finally:
            self._flush()  # a run that raised still leaves its whole trace for diffing

    def _run_until(self, t_end: float, max_events: int | None) -> None:
        heap, cores, timers, lines = self._heap, self.cores, self._timers, self._lines
        contacts, apply = self.contacts, self.apply
        pop = heapq.heappop
        n = 0
        # For a message a is the sender's index and b the Message; for a timer a is
        # its name and b its seq (see the heap's comment in __init__).
        while heap and heap[0][0] <= t_end:
            t, _, kind, dst, a, b, digest = pop(heap)
            self.now = t
            core = cores[dst]
            if core is None:
                continue
            if kind == _MSG:
                lines.append(f"{round(t * 1e6)} msg {a}>{dst} {b.TYPE} {digest}")
                self.delivered += 1
                apply(dst, core.on_message(t, contacts[a], b))
            else:
                pending = timers[dst]
                if pending.get(a) != b:
                    self._dead_timers -= 1
                    continue  # replaced or cancelled
                del pending[a]
                lines.append(f"{round(t * 1e6)} timer {dst} {a}")
                apply(dst, core.on_timer(t, a))
            if len(lines) >= _TRACE_BATCH:
                self._flush()
            n += 1
            if max_events is not None and n >= max_events:
                break
        if self.now < t_end:
            self.now = t_end

    @property
    def trace_sha256(self) -> str:
        self._flush()
        return self._trace.hexdigest()

    # -- internals -------------------------------------------------------------
    def _send(self, src: int, to: Contact, msg: Message) -> None:
        data = b""
        if self.codec is not None:
            data = self.codec.encode(msg)
            if self.counting:
                proto = self._protocols.get(type(msg))
                if proto is None:
                    proto = self._protocols[type(msg)] = msg.protocol
                per = self.sent.get(proto)
                if per is None:
                    per = self.sent[proto] = [0] * len(self.cores)
                per[src] += len(data)
        dst = self._index.get(to.addr, -1)
        # Compare raw keys: PeerId's generated __eq__ builds tuples on every call.
        if dst < 0 or self.contacts[dst].peer_id.raw != to.peer_id.raw:
            self.dropped += 1  # wrong key at that address: the transport would refuse it
            return
        d = self.network.delay(self.net_rng, src, dst)
        if d is None:
            self.dropped += 1
            return
        digest = hashlib.sha256(data).hexdigest()[:16] if self.codec is not None else ""
        self._seq += 1
        heapq.heappush(self._heap, (self.now + d, self._seq, _MSG, dst, src, msg, digest))

    def _set_timer(self, index: int, name: str, at: float | None) -> None:
        timers = self._timers[index]
        if at is None:
            if timers.pop(name, None) is not None:
                self._dead_timers += 1
            return
        self._seq += 1
        if name in timers:
            self._dead_timers += 1
        timers[name] = self._seq
        heapq.heappush(
            self._heap, (max(at, self.now), self._seq, _TIMER, index, name, self._seq, "")
        )
        if self._dead_timers > _COMPACT_MIN_DEAD and 2 * self._dead_timers > len(self._heap):
            self._compact()

    def _compact(self) -> None:
        timers = self._timers
        # In place: run_until holds a reference to this list.
        self._heap[:] = [e for e in self._heap if e[2] == _MSG or timers[e[3]].get(e[4]) == e[5]]
        heapq.heapify(self._heap)
        self._dead_timers = 0

    def _t(self) -> str:
        return f"{round(self.now * 1e6)}"

    def _record(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= _TRACE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        data = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._trace.update(data.encode())
        if self._trace_file is not None:
            self._trace_file.write(data)
