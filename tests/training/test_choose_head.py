"""Every peer that reads the same heads must pick the same state, in any order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.training.state_sync import choose_head

hashes = st.lists(st.sampled_from(["aa", "bb", "cc", "dd"]), min_size=1, max_size=12)


@given(hashes, st.randoms())
def test_same_heads_in_any_order_give_the_same_choice(hs: list[str], rnd: object) -> None:
    shuffled = list(hs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose_head(hs) == choose_head(shuffled)


@given(hashes)
def test_choice_has_the_most_votes(hs: list[str]) -> None:
    best = choose_head(hs)
    assert all(hs.count(best) >= hs.count(h) for h in hs)


def test_ties_go_to_the_lowest_hash() -> None:
    assert choose_head(["dd", "bb", "cc", "aa"]) == "aa"  # everyone averaged alone
    assert choose_head(["bb", "bb", "aa", "aa"]) == "aa"  # a 4:4-style split
    assert choose_head(["cc", "bb", "cc"]) == "cc"


def test_no_heads_is_an_error() -> None:
    with pytest.raises(ValueError, match="no heads"):
        choose_head([])
