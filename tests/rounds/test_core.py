from __future__ import annotations

import logging
import random

import pytest

from shoal.effects import Action, Emit, Send, SetTimer
from shoal.rounds import (
    DhtGetRequest,
    GroupFallback,
    GroupFormed,
    Phase,
    RoundClosed,
    RoundConfig,
    RoundCore,
    RoundDone,
    RoundGroup,
    RoundJoin,
)
from shoal.rounds.core import GET_RETRY_AFTER_POLLS
from shoal.rounds.progress import Progress
from tests.rounds.driver import World, identity


def cfg(**kw: object) -> RoundConfig:
    base: dict[str, object] = {
        "target_samples": 2000,
        "deadline_s": 60.0,
        "group_size": 4,
        "join_window_s": 2.0,
        "poll_interval_s": 3.0,
        "min_poll_interval_s": 0.5,
        "publish_interval_s": 1.0,
        "group_timeout_s": 2.0,
    }
    base.update(kw)
    return RoundConfig(**base)  # type: ignore[arg-type]


def closed(w: World, i: int) -> RoundClosed:
    evs = [e for e in w.of_type(i, RoundClosed) if isinstance(e, RoundClosed)]
    assert len(evs) == 1, f"peer {i} closed {len(evs)} times"
    return evs[0]


def assert_consistent(w: World, group_size: int) -> dict[int, GroupFormed]:
    """Every live peer has a group; each member of a group holds that same group."""
    final: dict[int, GroupFormed] = {}
    for i in w.live():
        g = w.final_group(i)
        assert g is not None, f"peer {i} formed no group"
        final[i] = g
    for i, g in final.items():
        assert len(g.members) <= group_size
        assert w.contacts[i] in g.members
        for m in g.members:
            j = w.index[m.peer_id]
            assert j in final, f"member {j} of peer {i}'s group is dead"
            assert final[j].members == g.members, f"peers {i} and {j} disagree"
            assert final[j].member_samples == g.member_samples
            assert final[j].attempt == g.attempt
    return final


def test_round_closes_on_target_samples() -> None:
    w = World(8, cfg(target_samples=2000))
    w.start_all()
    w.run_until(20.0)
    for i in range(8):
        c = closed(w, i)
        # 8 peers x 100 samples/s reach 2000 at t = 2.5 s; polls and the join window
        # add a few seconds, never the 60 s deadline.
        assert c.reason in ("target", "peer_closed")
        assert 2.5 <= w.cores[i].closed_at <= 8.0  # type: ignore[operator]
    assert any(closed(w, i).reason == "target" for i in range(8))
    final = assert_consistent(w, 4)
    sizes = sorted(len(g.members) for g in final.values())
    assert sizes == [4] * 8
    totals = {g.total_samples for g in final.values()}
    assert all(t > 0 for t in totals)


def test_round_closes_at_deadline_with_dead_and_slow_peers() -> None:
    rates = [100.0] * 6
    rates[5] = 1.0  # slow: contributes what it has
    w = World(6, cfg(target_samples=10**9, deadline_s=20.0, group_size=8), rates=rates)
    w.start_all()
    w.run_until(5.0)
    w.kill(0)  # announced progress, then died
    w.run_until(40.0)
    for i in w.live():
        c = closed(w, i)
        assert c.reason in ("deadline", "peer_closed")
        assert 20.0 <= w.cores[i].closed_at <= 20.0 + 2.0 + 0.2  # type: ignore[operator]
    final = assert_consistent(w, 8)
    g = final[1]
    assert w.contacts[0] not in g.members
    assert len(g.members) == 5
    slow = g.member_samples[g.members.index(w.contacts[5])]
    assert 15 <= slow <= 21  # ~1 sample/s for 20 s: joins with what it has


def test_all_members_receive_identical_groups_at_scale() -> None:
    w = World(40, cfg(target_samples=8000, group_size=6))
    w.start_all()
    w.run_until(30.0)
    final = assert_consistent(w, 6)
    leaders = {g.leader for g in final.values()}
    assert len(leaders) == 7  # ceil(40 / 6) groups, all formed by their leader
    assert all(not w.of_type(i, GroupFallback) for i in range(40))


def _formed_world(n: int = 8) -> World:
    w = World(n, cfg(target_samples=1000, group_size=n))
    w.start_all()
    w.run_until(15.0)
    assert_consistent(w, n)
    return w


def test_report_failed_reforms_without_the_dead_member() -> None:
    w = _formed_world()
    g = w.final_group(1)
    assert g is not None
    leader = w.index[g.leader]
    victim = next(w.index[m.peer_id] for m in g.members if w.index[m.peer_id] != leader)
    w.kill(victim)
    for i in w.live():
        w.apply(i, w.cores[i].report_failed(w.now, 0, [w.contacts[victim].peer_id]))
    w.run_until(w.now + 1.0)
    final = assert_consistent(w, 8)
    for fg in final.values():
        assert fg.attempt == 1
        assert w.contacts[victim] not in fg.members
        assert len(fg.members) == 7
        assert fg.leader == g.leader


def test_report_failed_with_the_leader_gone_reforms_under_the_next_smallest() -> None:
    w = _formed_world()
    g = w.final_group(1)
    assert g is not None
    leader = w.index[g.leader]
    w.kill(leader)
    new_leader = min((m.peer_id for m in g.members if m.peer_id != g.leader), key=lambda p: p.raw)
    # the next-smallest member and two others notice; the rest learn from its round.group
    noticing = [
        w.index[new_leader],
        *[i for i in w.live() if w.contacts[i].peer_id != new_leader][:2],
    ]
    for i in noticing:
        w.apply(i, w.cores[i].report_failed(w.now, 0, [g.leader]))
    w.run_until(w.now + 1.0)
    final = assert_consistent(w, 8)
    for fg in final.values():
        assert fg.attempt == 1 and fg.leader == new_leader
        assert w.contacts[leader] not in fg.members


def test_dead_leader_before_grouping_moves_members_to_the_next_leader() -> None:
    n = 6
    w = World(n, cfg(target_samples=10**9, deadline_s=10.0, group_size=n))
    leader = min(range(n), key=lambda i: w.contacts[i].peer_id.raw)
    w.start_all()
    w.run_until(4.0)
    w.kill(leader)  # its progress is in the DHT, so everyone picks it as leader
    w.run_until(40.0)
    final = assert_consistent(w, n)
    for fg in final.values():
        assert len(fg.members) == n - 1
        assert w.contacts[leader] not in fg.members
        assert fg.leader == min((w.contacts[i].peer_id for i in w.live()), key=lambda p: p.raw)


def test_peer_with_no_answering_leader_falls_back_to_a_solo_group() -> None:
    n = 4
    w = World(n, cfg(target_samples=10**9, deadline_s=10.0, group_size=n, max_leader_tries=1))
    order = sorted(range(n), key=lambda i: w.contacts[i].peer_id.raw)
    w.drop = lambda src, dst, msg: dst == order[0] and isinstance(msg, RoundJoin)
    w.start_all()
    w.run_until(40.0)
    for i in order[1:]:
        fb = w.of_type(i, GroupFallback)
        assert len(fb) == 1
        g = w.final_group(i)
        assert g is not None and g.members == (w.contacts[i],)
    g0 = w.final_group(order[0])
    assert g0 is not None and g0.members == (w.contacts[order[0]],)


def test_lost_group_message_is_resent_on_rejoin() -> None:
    n = 4
    w = World(n, cfg(target_samples=800, group_size=n))
    order = sorted(range(n), key=lambda i: w.contacts[i].peer_id.raw)
    dropped: list[int] = []

    def drop(src: int, dst: int, msg: object) -> bool:
        if isinstance(msg, RoundGroup) and dst == order[1] and not dropped:
            dropped.append(dst)
            return True
        return False

    w.drop = drop
    w.start_all()
    w.run_until(30.0)
    assert dropped
    # order[1] timed out, asked order[0] again and got the group re-sent
    final = assert_consistent(w, n)
    assert all(
        len(g.members) == n and g.leader == w.contacts[order[0]].peer_id for g in final.values()
    )
    assert not any(w.of_type(i, GroupFallback) for i in range(n))


def test_a_join_after_the_group_formed_is_told_so_and_falls_back_at_once() -> None:
    n = 4
    w = World(n, cfg(target_samples=800, group_size=n))
    order = sorted(range(n), key=lambda i: w.contacts[i].peer_id.raw)
    late = order[3]
    formed: list[float] = []
    joins: list[tuple[float, int]] = []

    def on_event(i: int, ev: object) -> None:
        if i == order[0] and isinstance(ev, GroupFormed) and not formed:
            formed.append(w.now)

    def drop(src: int, dst: int, msg: object) -> bool:
        if src == late and isinstance(msg, RoundJoin):
            joins.append((w.now, dst))
            return not formed  # the late peer's joins are lost until the group formed
        return False

    w.on_event, w.drop = on_event, drop
    w.start_all()
    w.run_until(40.0)
    assert formed
    g0 = w.final_group(order[0])
    assert g0 is not None and w.contacts[late] not in g0.members and len(g0.members) == n - 1
    fb = [e for e in w.of_type(late, GroupFallback) if isinstance(e, GroupFallback)]
    assert len(fb) == 1 and "formed without us" in fb[0].reason
    # it asked its first leader twice (the first join lost) and no other leader
    assert [dst for _, dst in joins] == [order[0], order[0]]
    fell = next(t for t, ev in w.events[late] if isinstance(ev, GroupFallback))
    assert fell - joins[-1][0] < 0.2  # one round trip after the join that got through
    assert w.cores[order[0]].rejections["group already formed"] == 1
    assert w.cores[late].rejections["group formed without us"] == 1
    assert_consistent(w, n)


def test_determinism_by_seed() -> None:
    def run(seed: int) -> list[str]:
        w = World(12, cfg(target_samples=3000), seed=seed)
        w.start_all()
        w.run_until(30.0)
        return w.log

    assert run(3) == run(3)
    assert run(3) != run(4)


# -- stale, replayed and foreign messages ----------------------------------------


def _solo(round_no: int = 2, version: int = 5) -> tuple[RoundCore, list[object]]:
    me = identity(0)
    core = RoundCore(
        __import__("shoal.wire.contact", fromlist=["Contact"]).Contact(me.peer_id, "h:1"),
        "run-a",
        cfg(),
        random.Random(1),
    )
    acts = core.start_round(0.0, round_no, version)
    return core, list(acts)


def test_messages_for_other_runs_rounds_and_versions_are_rejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shoal.wire.contact import Contact

    core, _ = _solo()
    other = Contact(identity(1).peer_id, "h:2")
    cases = [
        (RoundJoin("run-b", 2, 5, 10, 0), "wrong run"),
        (RoundJoin("run-a", 1, 5, 10, 0), "stale round"),
        (RoundJoin("run-a", 9, 5, 10, 0), "future round"),
        (RoundJoin("run-a", 2, 4, 10, 0), "wrong model version"),
        (RoundGroup("run-a", 1, 5, (core.me, other), (1, 1), 2, 0), "stale round"),
    ]
    with caplog.at_level(logging.INFO, logger="shoal.rounds.core"):
        for msg, reason in cases:
            before = core.rejections[reason]
            assert core.on_message(1.0, other, msg) == []
            assert core.rejections[reason] == before + 1
            assert reason in caplog.text
    assert core.phase is Phase.TRAINING  # none of them closed the round


def test_replayed_and_stale_group_messages_are_ignored() -> None:
    from shoal.wire.contact import Contact

    ids = sorted((identity(i) for i in range(3)), key=lambda x: x.peer_id.raw)
    leader = Contact(ids[0].peer_id, "h:0")
    me = Contact(ids[1].peer_id, "h:1")
    third = Contact(ids[2].peer_id, "h:2")
    core = RoundCore(me, "run-a", cfg(), random.Random(1))
    core.start_round(0.0, 0, 0)
    key = core.progress_key(0, 0)
    assert key
    core.on_dht_records(
        1.0, "poll:0:1:0", [(leader.peer_id, Progress(5, 0, False, leader.addr).encode())]
    )
    acts = core.on_message(1.5, leader, RoundJoin("run-a", 0, 0, 5, 0))  # leader closed
    assert any(isinstance(a, Send) and a.to == leader for a in acts)
    assert core.phase is Phase.WAITING
    g0 = RoundGroup("run-a", 0, 0, (leader, me, third), (5, 0, 3), 8, 0)
    acts = core.on_message(3.0, leader, g0)
    assert next(a.event for a in acts if isinstance(a, Emit)).members == g0.members
    assert core.on_message(3.1, leader, g0) == []  # replay: no second GroupFormed
    assert core.rejections["duplicate"] == 1
    g1 = RoundGroup("run-a", 0, 0, (leader, me), (5, 0), 5, 1)
    assert core.on_message(4.0, third, g1) == []
    assert core.rejections["sender not in the group"] == 1
    coup = RoundGroup("run-a", 0, 0, (me, third), (0, 3), 3, 1)
    assert core.on_message(4.0, third, coup) == []  # a member may not depose a live leader
    assert core.rejections["not our leader"] == 1
    acts = core.on_message(4.0, leader, g1)
    assert core.attempt == 1 and core.members == (leader, me)
    assert core.on_message(4.5, leader, g0) == []  # old attempt replayed
    assert core.rejections["stale attempt"] == 1
    assert core.members == (leader, me)
    done = core.complete_round(5.0, 0)
    assert [a.event for a in done if isinstance(a, Emit)] == [RoundDone(0, 2, 5, 1)]
    assert core.on_message(5.5, leader, g1) == []
    assert core.rejections["round already done"] == 1


def test_dht_replies_for_old_rounds_and_bad_values_are_ignored() -> None:
    core, _ = _solo(round_no=3)
    other = identity(1).peer_id
    assert core.on_dht_records(1.0, "poll:2:1:0", [(other, b"x")]) == []
    assert core.rejections["stale dht reply"] == 1
    assert core.on_dht_records(1.0, "nonsense", []) == []
    assert core.rejections["bad tag"] == 1
    core.on_dht_records(1.0, "poll:3:99:0", [(other, b"\xc1")])
    assert core.rejections["bad progress"] == 1
    core.on_dht_records(1.0, "poll:3:99:0", [(other, Progress(10**6, 4, True, "h:9").encode())])
    assert core.rejections["progress for another model version"] == 1
    assert core.estimated_samples() == 0


def test_commands_validate_their_arguments() -> None:
    core, _ = _solo()
    with pytest.raises(ValueError):
        core.start_round(1.0, 2, 5)
    core.report_progress(1.0, 10)
    with pytest.raises(ValueError):
        core.report_progress(1.5, 5)
    with pytest.raises(ValueError):
        core.complete_round(2.0, 2)
    with pytest.raises(ValueError):
        RoundConfig(target_samples=1, deadline_s=-1, group_size=2, join_window_s=1)
    with pytest.raises(ValueError):
        RoundConfig(target_samples=1, deadline_s=1, group_size=300, join_window_s=1)


def test_sharded_progress_closes_on_an_estimate_and_groups_within_shards() -> None:
    from shoal.rounds import shard_of

    config = cfg(target_samples=12000, group_size=8, progress_shards=4, estimate_shards=1)
    w = World(60, config)
    w.start_all()
    w.run_until(40.0)
    final = assert_consistent(w, 8)
    seed = w.cores[0]._seed
    for i, g in final.items():
        c = closed(w, i)
        assert c.reason in ("target", "peer_closed")
        # 60 peers x 100/s reach 12000 at t = 2 s; an estimate from half the shards
        # closes within a few seconds of that, far from the deadline.
        assert w.cores[i].closed_at is not None and w.cores[i].closed_at < 10.0
        shards = {shard_of(m.peer_id, 0, 4, seed) for m in g.members}
        assert shards == {w.cores[i].shard}
    keys = {w.cores[i].progress_key(0, w.cores[i].shard) for i in range(60)}
    assert len(keys) == 4


def _gets(acts: list[Action]) -> list[DhtGetRequest]:
    return [a.event for a in acts if isinstance(a, Emit) and isinstance(a.event, DhtGetRequest)]


def test_a_slow_get_is_not_asked_again_and_its_answer_counts_for_the_next_poll() -> None:
    """A get slower than the poll interval (it waited out a dead holder's RPC timeout):
    the next poll does not ask the DHT again, and the slow answer completes it."""
    core, _ = _solo(round_no=0, version=0)
    other = identity(1).peer_id
    first = _gets(core.on_timer(1.0, "poll"))
    assert len(first) == 1
    assert _gets(core.on_timer(4.0, "poll")) == []  # still out: not asked again
    # The slow answer, below the target, completes the current poll: a next poll is
    # scheduled (the adaptive one, sooner than the poll interval fallback).
    low = Progress(500, 0, False, "h:2").encode()
    out = core.on_dht_records(5.1, first[0].tag, [(other, low)])
    assert [a for a in out if isinstance(a, SetTimer) and a.name == "poll"]
    assert core.phase is Phase.TRAINING and core.estimated_samples() == 500
    # Answered, so the next poll asks again; at the target, its answer closes.
    again = _gets(core.on_timer(6.0, "poll"))
    assert len(again) == 1
    high = Progress(2500, 0, False, "h:2").encode()
    out = core.on_dht_records(6.2, again[0].tag, [(other, high)])
    ev = [a.event for a in out if isinstance(a, Emit) and isinstance(a.event, RoundClosed)]
    assert [(e.reason, e.estimated_samples) for e in ev] == [("target", 2500)]


def test_a_get_unanswered_for_several_poll_intervals_is_asked_again() -> None:
    core, _ = _solo(round_no=0, version=0)
    first = _gets(core.on_timer(1.0, "poll"))
    interval = core.config.poll_interval_s
    t = 1.0 + interval
    while t < 1.0 + GET_RETRY_AFTER_POLLS * interval:
        assert _gets(core.on_timer(t, "poll")) == []
        t += interval
    retry = _gets(core.on_timer(t, "poll"))
    assert len(retry) == 1 and retry[0].tag != first[0].tag


def test_a_poll_reply_during_the_final_read_is_merged_but_the_final_read_closes() -> None:
    core, _ = _solo(round_no=0, version=0)
    other = identity(1).peer_id
    first = _gets(core.on_timer(1.0, "poll"))
    final = _gets(core.on_timer(60.0, "deadline"))  # the final read asks anew
    assert core.phase is Phase.CLOSING and len(final) == 1 and final[0].tag != first[0].tag
    high = Progress(2500, 0, False, "h:2").encode()
    out = core.on_dht_records(60.5, first[0].tag, [(other, high)])
    # merged (the final read will see it), but the close waits for the final read
    assert core.estimated_samples() == 2500 and core.phase is Phase.CLOSING
    assert not [a for a in out if isinstance(a, Emit)]
    out = core.on_dht_records(60.6, final[0].tag, [])
    ev = [a.event for a in out if isinstance(a, Emit) and isinstance(a.event, RoundClosed)]
    assert [e.reason for e in ev] == ["deadline"]
