"""Whole swarms of SwimCores under the in-test driver (virtual time, fixed latency)."""

from __future__ import annotations

import math

from swim_driver import SwimDriver

from shoal.identity.keys import PeerId
from shoal.membership import (
    MemberAlive,
    MemberDead,
    MemberState,
    MemberSuspect,
    SwimConfig,
)

A, S, D = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def detection_bound(cfg: SwimConfig, view: int) -> float:
    """Latest time after a crash by which every holder has buried the crashed member,
    without counting on gossip (see core.py): the holder probes it within 2V periods,
    suspects it a period later, and buries it at most one lone-accuser suspicion
    timeout (the longest, Lifeguard's ``suspicion_max_mult`` times the minimum) after
    that. One more period covers the random phase of the first tick and latency."""
    period = cfg.protocol_period_s
    shortest = cfg.suspicion_mult * max(1.0, math.log10(view + 1)) * period
    suspicion = cfg.suspicion_max_mult * shortest
    return (2 * view + 2) * period + suspicion


def converge(d: SwimDriver, limit: float) -> float:
    n = len(d.live())
    t = d.now
    while t < limit:
        t += 1.0
        d.run_until(t)
        if all(d.core(p).view_size == n - 1 for p in d.live()):
            return t
    raise AssertionError(f"no full membership by t={limit}")


def test_everyone_learns_everyone_through_the_wire() -> None:
    d = SwimDriver(60, seed=11, wire=True)
    d.boot_all(seeds_per_node=2)
    converge(d, 60.0)
    for p in d.live():
        core = d.core(p)
        assert {m.contact.peer_id for m in core.alive_members()} == set(d.live()) - {p}
        core.check_invariants()
    assert not d.events_of(MemberSuspect) and not d.events_of(MemberDead)


def test_crashed_tenth_is_buried_everywhere_and_nobody_else() -> None:
    n = 100
    d = SwimDriver(n, seed=5)
    d.boot_all()
    converge(d, 80.0)
    crash_at = d.now
    victims = d.rng.sample(d.live(), n // 10)
    for v in victims:
        d.crash(v)
    survivors = d.live()
    bound = detection_bound(d.config, n - 1)
    d.run_until(crash_at + bound)
    victim_set = set(victims)
    latest = 0.0
    for v in victims:
        for p in survivors:
            # buried, or buried long enough ago that the tombstone expired
            assert d.state_of(p, v) in (D, None), (p, v)
            (t, _, _) = next(e for e in d.events_of(MemberDead, v) if e[1] == p)
            latest = max(latest, t - crash_at)
    assert latest <= bound
    # with gossip, burial is far quicker than the gossip-free bound (~207 s here)
    assert latest < 0.25 * bound
    # no loss: no live node was ever suspected, let alone buried
    assert all(e[2].contact.peer_id in victim_set for e in d.events_of(MemberSuspect))
    assert all(e[2].contact.peer_id in victim_set for e in d.events_of(MemberDead))
    for p in survivors:
        assert d.core(p).view_size == len(survivors) - 1
        d.core(p).check_invariants()


def test_crash_detected_with_unreachable_reports() -> None:
    d = SwimDriver(30, seed=8, unreachable_on_crash=True)
    d.boot_all()
    converge(d, 60.0)
    victim = d.live()[3]
    crash_at = d.now
    d.crash(victim)
    d.run_until(crash_at + detection_bound(d.config, 29))
    buried_by = {e[1] for e in d.events_of(MemberDead, victim)}
    assert buried_by == set(d.live())
    assert all(e[2].contact.peer_id == victim for e in d.events_of(MemberDead))


def test_restarted_node_with_same_key_is_taken_back() -> None:
    n = 50
    d = SwimDriver(n, seed=21)
    d.boot_all()
    converge(d, 60.0)
    x = d.live()[7]
    d.crash(x)
    deadline = d.now + detection_bound(d.config, n - 1)
    while not all(d.state_of(p, x) is D for p in d.live()):
        assert d.now < deadline, "the crash was not detected in time"
        d.run_until(d.now + 1.0)
    # restart: a fresh core, same PeerId, incarnation 0, knowing only 2 peers
    restart_at = d.now
    fresh = d.boot(x, d.rng.sample([d.by_id[p] for p in d.live() if p != x], 2))
    assert fresh.incarnation == 0
    d.run_until(restart_at + 40.0)
    assert fresh.incarnation >= 1
    for p in d.live():
        if p == x:
            continue
        m = d.core(p).member(x)
        assert m is not None and m.state is A and m.incarnation == fresh.incarnation, p
        assert any(e[1] == p and e[0] >= restart_at for e in d.events_of(MemberAlive, x))
    # and it learned the whole swarm back
    assert fresh.view_size == n - 1
    assert not [e for e in d.events_of(MemberDead) if e[0] > restart_at]


def test_partitioned_node_refutes_suspicion() -> None:
    n = 50
    d = SwimDriver(n, seed=3)
    d.boot_all()
    converge(d, 60.0)
    x = d.live()[0]
    start = d.now
    # cut x off both ways for 3 periods, well under even the shortest suspicion timeout
    # (6.8 s), leaving time for the refutation to spread
    d.drop_rules.append(lambda src, dst: x in (src, dst))
    d.run_until(start + 3.0)
    d.drop_rules.clear()
    d.run_until(start + 40.0)
    suspected = d.events_of(MemberSuspect, x)
    assert suspected, "the partition should have made someone suspect x"
    assert d.core(x).incarnation >= 1
    assert not d.events_of(MemberDead), "a refuted suspicion must not end in death"
    for p in d.live():
        if p != x:
            m = d.core(p).member(x)
            assert m is not None and m.state is A and m.incarnation == d.core(x).incarnation
        # x's own suspicions of others (its probes failed too) were refuted as well
        assert all(m.state is A for m in d.core(p).members()), p


def test_bounded_views_stay_bounded_and_still_detect_crashes() -> None:
    n, bound_members = 200, 16
    cfg = SwimConfig(max_members=bound_members)
    d = SwimDriver(n, seed=13, config=cfg)
    # the runtime feeds each node the contacts its DHT found: here 16 random ones
    d.boot_all(seeds_per_node=bound_members, introducer=None)
    t = 0.0
    while t < 30.0:
        t += 1.0
        d.run_until(t)
        assert max(d.core(p).view_size for p in d.live()) <= bound_members
    victims = d.rng.sample(d.live(), n // 10)
    holders: dict[PeerId, list[PeerId]] = {
        v: [p for p in d.live() if p not in victims and d.core(p).member(v) is not None]
        for v in victims
    }
    assert sum(len(h) for h in holders.values()) > len(victims) * bound_members // 2
    crash_at = d.now
    for v in victims:
        d.crash(v)
    victim_set = set(victims)
    bound = detection_bound(cfg, bound_members)
    while t < crash_at + bound:
        t += 1.0
        d.run_until(t)
        for p in d.live():
            core = d.core(p)
            assert core.view_size <= bound_members
            assert core.tombstone_count <= cfg.max_tombstones
            assert core.gossip_backlog <= bound_members + cfg.max_tombstones + 1
    for v, hs in holders.items():
        for p in hs:
            assert any(e[1] == p for e in d.events_of(MemberDead, v)), (p, v)
    assert all(e[2].contact.peer_id in victim_set for e in d.events_of(MemberSuspect))
    assert all(e[2].contact.peer_id in victim_set for e in d.events_of(MemberDead))
    for p in d.live():
        d.core(p).check_invariants()


def _trace(seed: int) -> list[tuple[float, PeerId, str]]:
    d = SwimDriver(30, seed=seed)
    d.record_actions = True
    d.boot_all()
    d.run_until(20.0)
    for v in d.rng.sample(d.live(), 3):
        d.crash(v)
    d.run_until(40.0)
    return d.trace


def test_same_seed_same_actions() -> None:
    first = _trace(99)
    assert len(first) > 1000
    assert first == _trace(99)
    assert first != _trace(100)
