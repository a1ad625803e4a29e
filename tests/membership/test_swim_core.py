"""SwimCore driven by hand, one event at a time."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity.keys import PeerId
from shoal.membership import (
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
from shoal.wire.contact import Contact

A, S, D = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def contact(i: int) -> Contact:
    return Contact(PeerId(i.to_bytes(32, "big")), f"10.0.{i // 256}.{i % 256}:7000")


ME = contact(1)


def make(n_members: int = 0, seed: int = 0, **cfg: Any) -> SwimCore:
    core = SwimCore(ME, SwimConfig(**cfg), random.Random(seed))
    core.start(0.0)
    for i in range(n_members):
        core.add_member(0.0, contact(10 + i))
    return core


def sends(actions: list[Action], kind: type | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (kind is None or isinstance(a.msg, kind))]


def timers(actions: list[Action]) -> dict[str, float | None]:
    return {a.name: a.at for a in actions if isinstance(a, SetTimer)}


def events(actions: list[Action]) -> list[object]:
    return [a.event for a in actions if isinstance(a, Emit)]


def tick(core: SwimCore, now: float) -> tuple[list[Action], Send | None]:
    actions = core.on_timer(now, "period")
    pings = sends(actions, Ping)
    assert len(pings) <= 1
    return actions, (pings[0] if pings else None)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SwimConfig(ping_timeout_s=1.0, protocol_period_s=1.0)
    with pytest.raises(ValueError):
        SwimConfig(max_piggyback=10_000)
    with pytest.raises(ValueError):
        SwimConfig(max_members=0)


def test_start_arms_period_within_one_period() -> None:
    core = SwimCore(ME, SwimConfig(), random.Random(3))
    t = timers(core.start(10.0))
    at = t["period"]
    assert at is not None and 10.0 <= at < 11.0


def test_add_member_joins_once_and_respects_bound() -> None:
    core = make(max_members=2)
    assert events(core.add_member(0, contact(10))) == [MemberJoined(contact(10), 0)]
    assert core.add_member(0, contact(10)) == []
    assert core.add_member(0, ME) == []
    core.add_member(0, contact(11))
    assert core.add_member(0, contact(12)) == []
    assert core.view_size == 2
    assert [m.contact for m in core.alive_members()] == [contact(10), contact(11)]


def test_ping_is_answered_with_same_seq_and_own_incarnation() -> None:
    core = make()
    out = core.on_message(0, contact(7), Ping(42, 3))
    (ack,) = sends(out, Ack)
    assert ack.to == contact(7)
    assert isinstance(ack.msg, Ack) and ack.msg.seq == 42 and ack.msg.incarnation == 0
    # the unknown sender joined at the incarnation it announced, and is gossiped
    assert MemberJoined(contact(7), 3) in events(out)
    assert Member(contact(7), A, 3) in ack.msg.updates


def test_every_member_probed_once_per_pass() -> None:
    core = make(n_members=10)
    probed: list[PeerId] = []
    now = 1.0
    for _ in range(30):
        _, ping = tick(core, now)
        assert ping is not None and isinstance(ping.msg, Ping)
        probed.append(ping.to.peer_id)
        core.on_message(now + 0.01, ping.to, Ack(ping.msg.seq, 0))
        now += 1.0
    for p in range(3):
        assert len(set(probed[10 * p : 10 * p + 10])) == 10
    assert probed[:10] != probed[10:20]  # reshuffled each pass


def test_member_added_mid_pass_is_probed_in_that_pass() -> None:
    core = make(n_members=6)
    now = 1.0
    _, ping = tick(core, now)
    core.add_member(now, contact(99))
    seen = {ping.to.peer_id} if ping else set()
    for _ in range(6):
        now += 1.0
        _, ping = tick(core, now)
        assert ping is not None
        seen.add(ping.to.peer_id)
    assert contact(99).peer_id in seen and len(seen) == 7


def test_direct_ack_prevents_suspicion() -> None:
    core = make(n_members=1)
    actions, ping = tick(core, 1.0)
    assert ping is not None and isinstance(ping.msg, Ping)
    name = f"ping_timeout:{ping.msg.seq}"
    assert timers(actions)[name] == pytest.approx(1.3)
    out = core.on_message(1.05, ping.to, Ack(ping.msg.seq, 0))
    assert timers(out) == {name: None}
    out, _ = tick(core, 2.0)
    assert not [e for e in events(out) if isinstance(e, MemberSuspect)]


def _fail_probe(core: SwimCore, now: float) -> tuple[Send, list[Send]]:
    """Tick, let the direct ping time out, return (ping, ping_reqs)."""
    _, ping = tick(core, now)
    assert ping is not None and isinstance(ping.msg, Ping)
    out = core.on_timer(now + 0.3, f"ping_timeout:{ping.msg.seq}")
    return ping, sends(out, PingReq)


def test_indirect_probe_and_suspicion_and_death() -> None:
    core = make(n_members=5)
    ping, reqs = _fail_probe(core, 1.0)
    assert isinstance(ping.msg, Ping)
    target = ping.to
    assert len(reqs) == 3
    helpers = {r.to.peer_id for r in reqs}
    assert len(helpers) == 3 and target.peer_id not in helpers
    for r in reqs:
        assert isinstance(r.msg, PingReq)
        assert r.msg.target == target and r.msg.seq == ping.msg.seq
    # an ack with the right seq from someone we did not ask does not count
    stranger = contact(200)
    core.on_message(1.5, stranger, Ack(ping.msg.seq, 0))
    out, _ = tick(core, 2.0)
    assert MemberSuspect(target, 0) in events(out)
    deadline = 2.0 + core.suspicion_timeout()
    name = f"suspect:{target.peer_id.raw.hex()}"
    assert timers(out)[name] == pytest.approx(deadline)
    assert core.member(target.peer_id) == Member(target, S, 0)
    # a timer that fires early is re-armed, not obeyed
    assert timers(core.on_timer(deadline - 1, name)) == {name: pytest.approx(deadline)}
    out = core.on_timer(deadline, name)
    assert events(out) == [MemberDead(target, 0)]
    assert core.member(target.peer_id) == Member(target, D, 0)
    # the 4 others, plus the stranger, who joined by talking to us
    assert core.view_size == 5 and core.member(stranger.peer_id) == Member(stranger, A, 0)
    assert Member(target, D, 0) in core.members()
    assert target.peer_id not in {m.contact.peer_id for m in core.alive_members()}
    # never probed again
    now = deadline
    for _ in range(20):
        now += 1.0
        _, p = tick(core, now)
        assert p is not None and p.to != target
        assert isinstance(p.msg, Ping)
        core.on_message(now, p.to, Ack(p.msg.seq, 0))


def test_relayed_ack_counts() -> None:
    core = make(n_members=5)
    ping, reqs = _fail_probe(core, 1.0)
    assert isinstance(ping.msg, Ping)
    core.on_message(1.6, reqs[1].to, Ack(ping.msg.seq, 0))
    out, _ = tick(core, 2.0)
    assert not [e for e in events(out) if isinstance(e, MemberSuspect)]


def test_unreachable_goes_indirect_at_once() -> None:
    core = make(n_members=5)
    _, ping = tick(core, 1.0)
    assert ping is not None and isinstance(ping.msg, Ping)
    assert core.on_unreachable(1.01, contact(250)) == []
    out = core.on_unreachable(1.01, ping.to)
    assert len(sends(out, PingReq)) == 3
    assert timers(out) == {f"ping_timeout:{ping.msg.seq}": None}
    assert core.on_unreachable(1.02, ping.to) == []  # only once
    assert core.on_timer(1.3, f"ping_timeout:{ping.msg.seq}") == []


def test_relaying_a_ping_req() -> None:
    core = make()
    requester, target = contact(20), contact(21)
    out = core.on_message(0.0, requester, PingReq(77, 0, target))
    (p,) = sends(out, Ping)
    assert p.to == target and isinstance(p.msg, Ping)
    relay_seq = p.msg.seq
    assert timers(out)[f"relay:{relay_seq}"] == pytest.approx(1.0)
    # an ack for that seq from someone else is not relayed
    assert sends(core.on_message(0.1, contact(22), Ack(relay_seq, 0)), Ack) == []
    out = core.on_message(0.1, target, Ack(relay_seq, 0))
    (a,) = sends(out, Ack)
    assert a.to == requester and isinstance(a.msg, Ack) and a.msg.seq == 77
    assert sends(core.on_message(0.2, target, Ack(relay_seq, 0)), Ack) == []  # once


def test_expired_relay_is_forgotten() -> None:
    core = make()
    out = core.on_message(0.0, contact(20), PingReq(77, 0, contact(21)))
    (p,) = sends(out, Ping)
    assert isinstance(p.msg, Ping)
    core.on_timer(1.0, f"relay:{p.msg.seq}")
    assert sends(core.on_message(1.1, contact(21), Ack(p.msg.seq, 0)), Ack) == []


def test_ping_req_for_me_is_acked_directly() -> None:
    core = make()
    out = core.on_message(0.0, contact(20), PingReq(5, 0, ME))
    (a,) = sends(out)
    assert a.to == contact(20) and isinstance(a.msg, Ack) and a.msg.seq == 5


@pytest.mark.parametrize("state", [S, D])
def test_refutation_bumps_incarnation_and_gossips_alive(state: MemberState) -> None:
    core = make(n_members=1)
    core.on_message(0, contact(10), Gossip(0, (Member(ME, state, 0),)))
    assert core.incarnation == 1
    _, ping = tick(core, 1.0)
    assert ping is not None and isinstance(ping.msg, Ping)
    assert ping.msg.incarnation == 1
    assert Member(ME, A, 1) in ping.msg.updates
    # a stale rumour (below our incarnation) is ignored
    core.on_message(1.1, contact(10), Gossip(0, (Member(ME, state, 0),)))
    assert core.incarnation == 1
    core.on_message(1.1, contact(10), Gossip(0, (Member(ME, D, 7),)))
    assert core.incarnation == 8
    core.on_message(1.1, contact(10), Gossip(0, (Member(ME, A, 20),)))
    assert core.incarnation == 20


def test_suspect_refuted_by_higher_alive() -> None:
    core = make(n_members=1)
    x = contact(10)
    out = core.on_message(0, contact(11), Gossip(0, (Member(x, S, 0),)))
    assert MemberSuspect(x, 0) in events(out)
    name = f"suspect:{x.peer_id.raw.hex()}"
    first_deadline = timers(out)[name]
    # a newer suspicion does not extend the deadline
    out = core.on_message(1, contact(11), Gossip(0, (Member(x, S, 1),)))
    assert name not in timers(out) and core.member(x.peer_id) == Member(x, S, 1)
    out = core.on_message(2, contact(11), Gossip(0, (Member(x, A, 1),)))
    assert core.member(x.peer_id) == Member(x, S, 1)  # same incarnation: not enough
    out = core.on_message(2, contact(11), Gossip(0, (Member(x, A, 2),)))
    assert events(out) == [MemberAlive(x, 2)]
    assert timers(out) == {name: None}
    assert core.on_timer(first_deadline or 0.0, name) == []


def test_suspect_sender_is_told_so_in_the_ack() -> None:
    core = make(n_members=1)
    x = contact(10)
    core.on_message(0, contact(11), Gossip(0, (Member(x, S, 0),)))
    (ack,) = sends(core.on_message(0.5, x, Ping(9, 0)), Ack)
    assert isinstance(ack.msg, Ack) and ack.msg.updates[0] == Member(x, S, 0)


def test_restarted_node_is_told_it_is_dead_and_taken_back() -> None:
    """The rejoin path, end to end between two cores."""
    a = make(n_members=2)
    x = contact(10)
    a.on_message(0, contact(11), Gossip(0, (Member(x, D, 0),)))
    assert a.member(x.peer_id) == Member(x, D, 0)
    # x restarts: fresh core, same key, incarnation 0
    fresh = SwimCore(x, SwimConfig(), random.Random(9))
    fresh.start(5.0)
    fresh.add_member(5.0, ME)
    ping = sends(fresh.on_timer(6.0, "period"), Ping)[0]
    assert isinstance(ping.msg, Ping) and ping.msg.incarnation == 0
    out = a.on_message(6.01, x, ping.msg)
    assert a.member(x.peer_id) == Member(x, D, 0)  # incarnation 0 proves nothing
    (ack,) = sends(out, Ack)
    assert isinstance(ack.msg, Ack) and ack.msg.updates[0] == Member(x, D, 0)
    fresh.on_message(6.02, ME, ack.msg)
    assert fresh.incarnation == 1
    # any later message from x carries incarnation 1, which undoes the burial
    ping2 = sends(fresh.on_timer(7.0, "period"), Ping)[0]
    assert isinstance(ping2.msg, Ping)
    out = a.on_message(7.01, x, ping2.msg)
    assert MemberAlive(x, 1) in events(out)
    assert a.member(x.peer_id) == Member(x, A, 1)
    assert x.peer_id in {m.contact.peer_id for m in a.alive_members()}


def test_dead_sender_of_non_ping_gets_a_gossip_reply() -> None:
    a = make()
    x = contact(10)
    a.add_member(0, x)
    a.on_message(0, contact(11), Gossip(0, (Member(x, D, 2),)))
    out = a.on_message(1, x, Gossip(1, ()))
    (g,) = sends(out, Gossip)
    assert g.to == x and isinstance(g.msg, Gossip) and g.msg.updates[0] == Member(x, D, 2)
    assert sends(a.on_message(1, contact(12), Gossip(0, ())), Gossip) == []


def test_add_member_ignores_buried_until_tombstone_expires() -> None:
    core = make(tombstone_ttl_s=10.0)
    x = contact(10)
    core.add_member(0, x)
    core.on_message(0, contact(11), Gossip(0, (Member(x, D, 0),)))
    assert core.add_member(1, x) == []
    assert core.member(x.peer_id) == Member(x, D, 0)
    core.on_timer(11.0, "period")
    assert core.member(x.peer_id) is None
    assert events(core.add_member(11.0, x)) == [MemberJoined(x, 0)]


def test_tombstones_are_bounded_oldest_first() -> None:
    core = make(max_tombstones=2)
    for i in range(3):
        core.add_member(0, contact(10 + i))
    for i in range(3):
        core.on_message(i, contact(50), Gossip(0, (Member(contact(10 + i), D, 0),)))
    assert core.tombstone_count == 2
    assert core.member(contact(10).peer_id) is None
    assert core.member(contact(12).peer_id) == Member(contact(12), D, 0)


def test_gossip_is_retransmitted_a_bounded_number_of_times() -> None:
    core = make(n_members=3)
    x = contact(10)
    core.on_message(0, contact(11), Gossip(0, (Member(x, S, 0),)))
    limit = core.retransmit_limit()
    assert limit == 4 * math.ceil(math.log2(core.view_size + 2))
    carried = 0
    now = 1.0
    for _ in range(3 * limit):
        _, ping = tick(core, now)
        assert ping is not None and isinstance(ping.msg, Ping)
        carried += Member(x, S, 0) in ping.msg.updates and ping.to != x
        core.on_message(now, ping.to, Ack(ping.msg.seq, 0))
        now += 1.0
    # pings to x itself carry it as a rumour outside the budget; the rest obey it
    assert 0 < carried <= limit


def test_suspicion_timeout_grows_with_log_of_view_and_shrinks_with_confirmations() -> None:
    small = make(n_members=4)
    big = make(n_members=300)
    assert small.suspicion_timeout(3) == pytest.approx(4.0)
    assert small.suspicion_timeout(0) == pytest.approx(24.0)
    assert big.suspicion_timeout(3) == pytest.approx(4.0 * math.log10(301))
    steps = [big.suspicion_timeout(c) for c in range(6)]
    assert steps[0] == pytest.approx(6 * steps[3])
    assert steps[0] > steps[1] > steps[2] > steps[3] == steps[4] == steps[5]
    # too few members to confirm: the minimum at once
    assert make(n_members=1).suspicion_timeout(0) == pytest.approx(4.0)


def test_independent_accusers_shorten_the_countdown() -> None:
    core = make(n_members=10)
    x = contact(10)
    out = core.on_message(0, contact(11), Gossip(0, (Member(x, S, 0, contact(11).peer_id),)))
    name = f"suspect:{x.peer_id.raw.hex()}"
    deadlines = [timers(out)[name]]
    assert deadlines[0] == pytest.approx(core.suspicion_timeout(0))
    # the same accuser again, relayed by another peer: no change
    out = core.on_message(1, contact(12), Gossip(0, (Member(x, S, 0, contact(11).peer_id),)))
    assert name not in timers(out)
    for i, accuser in enumerate([12, 13, 14]):
        out = core.on_message(
            1, contact(15), Gossip(0, (Member(x, S, 0, contact(accuser).peer_id),))
        )
        deadlines.append(timers(out)[name])
        assert deadlines[-1] == pytest.approx(core.suspicion_timeout(i + 1))
    assert deadlines == sorted(deadlines, reverse=True) and len(set(deadlines)) == 4
    # a fifth accuser cannot push it below the minimum
    out = core.on_message(2, contact(15), Gossip(0, (Member(x, S, 0, contact(16).peer_id),)))
    assert name not in timers(out)
    # the new accuser is passed on with the statement
    _, ping = tick(core, 3.0)
    assert ping is not None and isinstance(ping.msg, Ping)
    relayed = [u for u in ping.msg.updates if u.contact == x]
    assert relayed and relayed[0].accuser is not None


def test_confirmation_past_the_deadline_buries_at_once() -> None:
    core = make(n_members=10)
    x = contact(10)
    core.on_message(0, contact(11), Gossip(0, (Member(x, S, 0),)))  # accuser: the sender
    late = core.suspicion_timeout(3) + 1.0
    for accuser in (12, 13, 14):
        out = core.on_message(late, contact(accuser), Gossip(0, (Member(x, S, 0),)))
    assert events(out) == [MemberDead(x, 0)]


def test_timer_names_garbage_is_ignored() -> None:
    core = make(n_members=2)
    for name in [
        "",
        "ping_timeout:",
        "ping_timeout:x",
        "ping_timeout:²",
        "relay:-1",
        "suspect:zz",
        "suspect:00",
        "nonsense",
    ]:
        assert core.on_timer(1.0, name) == []
