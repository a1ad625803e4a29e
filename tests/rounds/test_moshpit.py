from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.rounds import moshpit_groups, shard_of
from tests.rounds.driver import identity

IDS = [identity(i).peer_id for i in range(300)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    round_no=st.integers(0, 50),
    group_size=st.integers(1, 40),
    seed=st.binary(max_size=8),
)
def test_partition_is_balanced_and_bounded(
    n: int, round_no: int, group_size: int, seed: bytes
) -> None:
    peers = IDS[:n]
    groups = moshpit_groups(peers, round_no, group_size, seed)
    flat = [p for g in groups for p in g]
    assert sorted(p.raw for p in flat) == sorted(p.raw for p in peers)  # each exactly once
    assert len(groups) == math.ceil(n / group_size)
    if groups:
        sizes = [len(g) for g in groups]
        assert max(sizes) <= group_size
        assert max(sizes) - min(sizes) <= 1
    for g in groups:
        assert [p.raw for p in g] == sorted(p.raw for p in g)


def test_input_order_and_duplicates_do_not_matter() -> None:
    peers = IDS[:50]
    a = moshpit_groups(peers, 3, 8, b"s")
    b = moshpit_groups(list(reversed(peers)) + peers[:10], 3, 8, b"s")
    assert a == b


def test_groups_reshuffle_between_rounds_and_seeds() -> None:
    peers = IDS[:64]
    r0 = moshpit_groups(peers, 0, 8, b"s")
    assert r0 != moshpit_groups(peers, 1, 8, b"s")
    assert r0 != moshpit_groups(peers, 2, 8, b"s")
    assert r0 != moshpit_groups(peers, 0, 8, b"t")


def test_two_rounds_mix_a_full_grid_like_moshpit() -> None:
    """n = M*M: after a row round and a column round, every pair of rows met."""
    m = 8
    peers = IDS[: m * m]
    rows = moshpit_groups(peers, 0, m, b"s")
    cols = moshpit_groups(peers, 1, m, b"s")
    row_of = {p: i for i, g in enumerate(rows) for p in g}
    for g in cols:
        assert sorted(row_of[p] for p in g) == list(range(m))


def test_shards_are_spread_and_reshuffled() -> None:
    counts = [0] * 8
    for p in IDS:
        counts[shard_of(p, 0, 8, b"s")] += 1
    assert min(counts) > 15
    moved = sum(shard_of(p, 0, 8, b"s") != shard_of(p, 1, 8, b"s") for p in IDS)
    assert moved > 150
    assert all(shard_of(p, 5, 1, b"s") == 0 for p in IDS)
