"""Hostile but well-formed input: the core never raises and never outgrows its bounds."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.effects import Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.membership import (
    SWIM_MESSAGES,
    Ack,
    Gossip,
    Member,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberState,
    MemberSuspect,
    Ping,
    PingReq,
    SwimConfig,
    SwimCore,
)
from shoal.membership.state import MAX_INCARNATION
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact

CODEC = Codec(SWIM_MESSAGES)
POOL = [Contact(PeerId(i.to_bytes(32, "big")), f"10.0.0.{i}:1") for i in range(1, 25)]
ME = POOL[0]
CFG = SwimConfig(max_members=6, max_tombstones=3, max_piggyback=4, tombstone_ttl_s=5.0)

peers = st.sampled_from(POOL)
incs = st.one_of(st.integers(0, 4), st.integers(0, MAX_INCARNATION))
statements = st.builds(
    Member,
    peers,
    st.sampled_from(MemberState),
    incs,
    st.one_of(st.none(), peers.map(lambda c: c.peer_id)),
).map(lambda m: m if m.state is MemberState.SUSPECT else Member(m.contact, m.state, m.incarnation))
updates = st.lists(statements, max_size=4).map(tuple)

# (kind, args...) operations; "seq" of -1 means "reuse a seq the core sent".
ops = st.one_of(
    st.tuples(
        st.just("msg"),
        peers,
        st.sampled_from(["ping", "ack", "req", "gossip"]),
        st.one_of(st.just(-1), st.integers(0, 2**32 - 1)),
        incs,
        updates,
        peers,
    ),
    st.tuples(st.just("timer"), st.integers(0, 1000)),
    st.tuples(st.just("add"), peers),
    st.tuples(st.just("unreachable"), peers),
    st.tuples(st.just("wait"), st.floats(0.0, 30.0)),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(ops, max_size=80), st.integers(0, 2**32))
def test_random_hostile_sequences(sequence: list[Any], seed: int) -> None:
    core = SwimCore(ME, CFG, random.Random(seed))
    now = 0.0
    pending: dict[str, float] = {}
    sent_seqs: list[int] = [0]

    def take(actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, SetTimer):
                if a.at is None:
                    pending.pop(a.name, None)
                else:
                    assert a.at >= now - 1e-9
                    pending[a.name] = a.at
            elif isinstance(a, Send):
                assert a.to.peer_id != ME.peer_id
                # everything we send is valid on the wire, and survives decoding
                assert CODEC.decode(CODEC.encode(a.msg)) == a.msg
                assert len(getattr(a.msg, "updates", ())) <= CFG.max_piggyback
                if isinstance(a.msg, Ping | PingReq):
                    sent_seqs.append(a.msg.seq)
            else:
                assert isinstance(a, Emit)
                assert isinstance(a.event, MemberJoined | MemberSuspect | MemberDead | MemberAlive)
                assert a.event.contact.peer_id != ME.peer_id

    take(core.start(now))
    for op in sequence:
        kind = op[0]
        if kind == "msg":
            _, sender, mtype, seq, inc, ups, target = op
            if seq < 0:
                seq = sent_seqs[-1]
            msg: Any = {
                "ping": Ping(seq, inc, ups),
                "ack": Ack(seq, inc, ups),
                "req": PingReq(seq, inc, target, ups),
                "gossip": Gossip(inc, ups),
            }[mtype]
            take(core.on_message(now, sender, msg))
        elif kind == "timer":
            if pending:
                name = sorted(pending)[op[1] % len(pending)]
                now = max(now, pending.pop(name))
                take(core.on_timer(now, name))
        elif kind == "add":
            take(core.add_member(now, op[1]))
        elif kind == "unreachable":
            take(core.on_unreachable(now, op[1]))
        else:
            now += op[1]
        core.check_invariants()
        assert core.view_size <= CFG.max_members
        assert core.tombstone_count <= CFG.max_tombstones
        assert core.gossip_backlog <= CFG.max_members + CFG.max_tombstones + 1
        assert len(core.members()) == core.view_size + core.tombstone_count
        assert 0 <= core.incarnation <= MAX_INCARNATION


def test_view_fills_to_the_bound_from_strangers_and_no_further() -> None:
    core = SwimCore(ME, CFG, random.Random(1))
    for c in POOL[1:]:
        core.on_message(
            0.0, c, Ping(1, 0, tuple(Member(o, MemberState.ALIVE, 0) for o in POOL[:4]))
        )
    assert core.view_size == CFG.max_members


def test_incarnation_is_clamped_not_overflowed() -> None:
    core = SwimCore(ME, CFG, random.Random(1))
    core.on_message(0.0, POOL[1], Gossip(0, (Member(ME, MemberState.DEAD, MAX_INCARNATION),)))
    assert core.incarnation == MAX_INCARNATION
    out = core.on_message(0.0, POOL[1], Ping(1, 0))
    (ack,) = [a for a in out if isinstance(a, Send)]
    assert CODEC.decode(CODEC.encode(ack.msg)) == ack.msg
