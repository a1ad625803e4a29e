"""The piggyback buffer: fewest-sent first, bounded retransmission, bounded size."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from shoal.identity.keys import PeerId
from shoal.membership.gossip import GossipBuffer
from shoal.membership.state import Member, MemberState
from shoal.wire.contact import Contact


def member(i: int, inc: int = 0, state: MemberState = MemberState.ALIVE) -> Member:
    return Member(Contact(PeerId(i.to_bytes(32, "big")), f"h:{i}"), state, inc)


def ids(ms: list[Member]) -> list[int]:
    return [int.from_bytes(m.contact.peer_id.raw, "big") for m in ms]


def test_fewest_sent_first_then_newest() -> None:
    buf = GossipBuffer(100)
    for i in range(5):
        buf.enqueue(member(i))
    assert ids(buf.take(2, limit=10)) == [4, 3]  # newest of the never-sent
    buf.enqueue(member(9))
    # 9 (never sent), then 2, 1, 0 (never sent), then 4, 3 (sent once)
    assert ids(buf.take(6, limit=10)) == [9, 2, 1, 0, 4, 3]


def test_each_update_is_sent_exactly_limit_times() -> None:
    buf = GossipBuffer(100)
    for i in range(7):
        buf.enqueue(member(i))
    counts: dict[int, int] = {}
    for _ in range(100):
        for i in ids(buf.take(3, limit=4)):
            counts[i] = counts.get(i, 0) + 1
    assert counts == {i: 4 for i in range(7)}
    assert len(buf) == 0


def test_newer_statement_replaces_and_restarts_count() -> None:
    buf = GossipBuffer(10)
    buf.enqueue(member(1))
    buf.take(1, limit=2)
    buf.enqueue(member(1, inc=3, state=MemberState.SUSPECT))
    assert len(buf) == 1
    got = buf.take(5, limit=2)
    assert got == [member(1, 3, MemberState.SUSPECT)]
    assert buf.take(5, limit=2) == [member(1, 3, MemberState.SUSPECT)]
    assert buf.take(5, limit=2) == []


def test_skip_leaves_entry_unsent() -> None:
    buf = GossipBuffer(10)
    buf.enqueue(member(1))
    buf.enqueue(member(2))
    skip = member(2).contact.peer_id
    assert ids(buf.take(5, limit=1, skip=skip)) == [1]
    assert ids(buf.take(5, limit=1)) == [2]


def test_capacity_evicts_most_sent() -> None:
    buf = GossipBuffer(3)
    buf.enqueue(member(1))
    buf.take(1, limit=10)  # 1 now sent once
    buf.enqueue(member(2))
    buf.enqueue(member(3))
    buf.enqueue(member(4))  # full: drops 1, the most sent
    assert len(buf) == 3
    assert buf.get(member(1).contact.peer_id) is None
    assert sorted(ids(buf.take(10, limit=10))) == [2, 3, 4]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=200), st.integers())
def test_random_use_stays_bounded(ops: list[tuple[int, int]], seed: int) -> None:
    rng = random.Random(seed)
    buf = GossipBuffer(8)
    for who, n in ops:
        if n == 0:
            buf.discard(member(who).contact.peer_id)
        else:
            buf.enqueue(member(who, inc=n))
        got = buf.take(rng.randint(0, 4), limit=rng.randint(1, 6))
        assert len(set(ids(got))) == len(got)
        assert len(buf) <= 8
