"""moshpit_groups: a deterministic, balanced partition that reshuffles every round."""

from __future__ import annotations

import random

import pytest

from shoal.averaging import group_of, moshpit_groups
from shoal.identity.keys import PeerId


def peers(n: int, seed: int = 0) -> list[PeerId]:
    rng = random.Random(seed)
    return [PeerId(rng.randbytes(32)) for _ in range(n)]


@pytest.mark.parametrize("n,size", [(1, 4), (4, 4), (5, 4), (17, 4), (100, 8), (10, 1), (3, 10)])
def test_partition_every_peer_once_within_size(n: int, size: int) -> None:
    ps = peers(n)
    groups = moshpit_groups(ps, round_no=3, group_size=size, seed=b"run-1")
    flat = [p for g in groups for p in g]
    assert sorted(flat) == sorted(ps)  # every peer exactly once
    assert all(1 <= len(g) <= size for g in groups)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1  # balanced: no lone straggler
    assert len(groups) == -(-n // size)
    assert all(g == sorted(g) for g in groups)  # the order all_reduce expects


def test_deterministic_regardless_of_input_order() -> None:
    ps = peers(30)
    shuffled = list(ps)
    random.Random(1).shuffle(shuffled)
    a = moshpit_groups(ps, 5, 4, b"seed")
    assert a == moshpit_groups(shuffled, 5, 4, b"seed")
    assert a == moshpit_groups(ps + ps[:3], 5, 4, b"seed")  # duplicates count once
    assert a != moshpit_groups(ps, 5, 4, b"other seed")


def test_membership_changes_across_rounds_and_mixes() -> None:
    ps = peers(64)
    rounds = [moshpit_groups(ps, r, 8, b"seed") for r in range(4)]
    as_sets = [{frozenset(g) for g in gs} for gs in rounds]
    assert all(as_sets[i] != as_sets[i + 1] for i in range(3))
    # Information spreads: after 3 rounds a peer's update reached (almost) everyone.
    reached = {ps[0]}
    for gs in rounds[:3]:
        reached |= {p for g in gs if reached & set(g) for p in g}
    assert len(reached) > 48
    me = ps[0]
    assert me in rounds[0][group_of(rounds[0], me)]


def test_edge_cases() -> None:
    assert moshpit_groups([], 0, 4, b"") == []
    with pytest.raises(ValueError):
        moshpit_groups(peers(3), 0, 0, b"")
    with pytest.raises(ValueError):
        moshpit_groups(peers(3), -1, 2, b"")
    with pytest.raises(ValueError):
        group_of([[p] for p in peers(2)], peers(1, seed=9)[0])
