"""The engine's bookkeeping (byte counts, batched trace, heap compaction) changes
nothing about a run."""

from __future__ import annotations

import hashlib
import io

import pytest

import shoal.sim.engine as engine
from shoal.dht.messages import Ping
from shoal.effects import Action, Send, SetTimer
from shoal.identity import Identity
from shoal.peer.core import peer_codec
from shoal.sim.engine import Simulator, sim_addr
from shoal.wire.codec import Message
from shoal.wire.contact import Contact


class Chatty:
    """Every tick: ping the next host, set an RPC-style timeout and cancel the last."""

    def __init__(self, index: int, contacts: list[Contact]) -> None:
        self.index = index
        self.contacts = contacts
        self.ticks = 0
        self.fired: list[str] = []
        self.got = 0

    def on_message(self, now: float, sender: Contact, msg: Message) -> list[Action]:
        self.got += 1
        return []

    def on_timer(self, now: float, name: str) -> list[Action]:
        self.fired.append(name)
        if name != "tick":
            return []
        self.ticks += 1
        to = self.contacts[(self.index + 1) % len(self.contacts)]
        out: list[Action] = [
            Send(to, Ping(self.ticks)),
            SetTimer("tick", now + 0.01),
            SetTimer(f"rpc:{self.ticks}", now + 5.0),
            SetTimer(f"rpc:{self.ticks - 1}", None),
        ]
        if self.ticks % 7 == 0:
            out.append(SetTimer("tick", now + 0.02))  # replaced before it fires
        return out


def _run(trace: io.StringIO | None = None) -> tuple[Simulator, list[Chatty]]:
    sim = Simulator(3, codec=peer_codec(), trace_file=trace)
    ids = [Identity.from_seed(bytes([i]) * 32) for i in range(4)]
    contacts = [Contact(x.peer_id, sim_addr(i)) for i, x in enumerate(ids)]
    cores = [Chatty(i, contacts) for i in range(4)]
    for c, core in zip(contacts, cores, strict=True):
        sim.add_host(c, core)
    sim.counting = True
    for i in range(4):
        sim.apply(i, [SetTimer("tick", 0.001 * i)])
    sim.run_until(3.0)
    sim.crash(2)
    sim.run_until(12.0)
    return sim, cores


def test_compaction_drops_dead_timers_without_changing_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain, plain_cores = _run()
    monkeypatch.setattr(engine, "_COMPACT_MIN_DEAD", 16)
    small, small_cores = _run()
    assert small.trace_sha256 == plain.trace_sha256
    assert [c.fired for c in small_cores] == [c.fired for c in plain_cores]
    assert small.delivered == plain.delivered > 0
    assert len(small._heap) < len(plain._heap) / 4


def test_byte_counts_are_the_encoded_sizes_and_the_trace_file_is_the_hashed_text() -> None:
    trace = io.StringIO()
    sim, cores = _run(trace)
    size = len(peer_codec().encode(Ping(1)))
    sent = sim.sent["dht"]
    # every tick sends one ping; ids 1..9 encode to the same size
    assert sent[0] >= cores[0].ticks * size and sent[0] <= cores[0].ticks * (size + 8)
    text = trace.getvalue()
    assert text.count("\n") > engine._TRACE_BATCH  # several batches were written
    assert hashlib.sha256(text.encode()).hexdigest() == sim.trace_sha256
    assert " crash 2\n" in text


def test_a_run_that_raises_still_writes_its_trace() -> None:
    class Boom(Chatty):
        def on_timer(self, now: float, name: str) -> list[Action]:
            if now > 1.0:
                raise RuntimeError("core bug")
            return super().on_timer(now, name)

    trace = io.StringIO()
    sim = Simulator(1, codec=peer_codec(), trace_file=trace)
    ident = Identity.from_seed(b"\x09" * 32)
    contacts = [Contact(ident.peer_id, sim_addr(0))]
    sim.add_host(contacts[0], Boom(0, contacts))
    sim.apply(0, [SetTimer("tick", 0.0)])
    with pytest.raises(RuntimeError):
        sim.run_until(5.0)
    lines = trace.getvalue().splitlines()
    assert len(lines) > 100 and lines[-1].endswith("timer 0 tick")


def test_sends_to_unknown_addresses_or_wrong_keys_are_dropped() -> None:
    sim, _ = _run()
    before = sim.dropped
    stranger = Contact(Identity.from_seed(b"\x07" * 32).peer_id, sim_addr(1))
    sim.apply(0, [Send(stranger, Ping(1)), Send(Contact(stranger.peer_id, "sim:99"), Ping(2))])
    assert sim.dropped == before + 2
