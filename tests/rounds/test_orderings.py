"""Random event orderings: latencies, DHT delays, start skew, crashes, sizes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.rounds import GroupFormed, RoundClosed, RoundConfig
from tests.rounds.driver import World
from tests.rounds.test_core import assert_consistent


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.integers(2, 20),
    group_size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    lat_hi=st.floats(0.001, 0.4),
    dht_delay=st.floats(0.001, 0.4),
    skew=st.floats(0.0, 1.5),
    reachable=st.booleans(),
    crash=st.integers(-1, 19),
)
def test_any_ordering_gives_consistent_bounded_groups(
    n: int,
    group_size: int,
    seed: int,
    lat_hi: float,
    dht_delay: float,
    skew: float,
    reachable: bool,
    crash: int,
) -> None:
    config = RoundConfig(
        target_samples=n * 300 if reachable else 10**9,
        deadline_s=12.0,
        group_size=group_size,
        join_window_s=3.0,
        poll_interval_s=2.0,
        min_poll_interval_s=0.5,
        publish_interval_s=1.0,
        group_timeout_s=2.0,
    )
    w = World(n, config, seed=seed, latency=(0.0005, lat_hi), dht_delay=dht_delay)
    for i in range(n):
        w.start(i, at=w.rng.random() * skew)
    if 0 <= crash < n:
        w.run_until(1.0 + w.rng.random() * 8)
        w.kill(crash)
    w.run_until(60.0)
    # the data plane notices members that died after the group formed
    dead = {w.contacts[d].peer_id for d in w.dead}
    for i in w.live():
        g = w.final_group(i)
        if g is not None and dead & {m.peer_id for m in g.members}:
            w.apply(i, w.cores[i].report_failed(w.now, 0, dead))
    w.run_until(90.0)
    final = assert_consistent(w, group_size)
    for i in w.live():
        closes = [e for e in w.of_type(i, RoundClosed) if isinstance(e, RoundClosed)]
        assert len(closes) == 1
        c = closes[0]
        assert c.reason in ("target", "deadline", "peer_closed")
        if c.reason == "target":
            assert c.estimated_samples >= config.target_samples
        # never later than the deadline, the last poll and a little latency
        assert w.cores[i].closed_at is not None
        assert w.cores[i].closed_at <= skew + 12.0 + 2.0 + 1e-6
        g = final[i]
        assert isinstance(g, GroupFormed)
        assert g.total_samples == sum(g.member_samples)
        assert g.member_samples[g.members.index(w.contacts[i])] == c.samples
