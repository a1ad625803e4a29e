"""Precedence between membership statements, checked against the table in the brief."""

from __future__ import annotations

import itertools

import pytest

from shoal.identity.keys import PeerId
from shoal.membership.state import MAX_INCARNATION, Member, MemberState, supersedes
from shoal.wire.codec import MalformedMessage
from shoal.wire.contact import Contact

A, S, D = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def expected(new: MemberState, j: int, old: MemberState, i: int) -> bool:
    """The brief's rules, written independently of the implementation."""
    if new is A:
        return j > i  # alive(j) overrides alive/suspect/dead at i < j
    if new is S:
        return (old is A and i <= j) or (old is S and i < j)
    return (old in (A, S) and i <= j) or (old is D and i < j)


@pytest.mark.parametrize(
    ("new", "j", "old", "i"),
    list(itertools.product(MemberState, range(3), MemberState, range(3))),
)
def test_supersedes_matches_table(new: MemberState, j: int, old: MemberState, i: int) -> None:
    assert supersedes(new, j, old, i) is expected(new, j, old, i)


def test_precedence_examples() -> None:
    # the cases that matter for rejoin and refutation, spelled out
    assert supersedes(A, 1, D, 0)  # a restarted node's refutation undoes its burial
    assert not supersedes(A, 0, D, 0)  # but not at the incarnation it was buried at
    assert not supersedes(S, 5, D, 0)  # dead yields only to alive
    assert supersedes(S, 0, A, 0)
    assert not supersedes(A, 0, S, 0)  # a suspect must refute with a higher incarnation
    assert supersedes(D, 0, S, 0)


def test_no_statement_supersedes_itself_or_its_superseder() -> None:
    states = list(itertools.product(MemberState, range(4)))
    for (s1, i1), (s2, i2) in itertools.product(states, states):
        assert not (supersedes(s1, i1, s2, i2) and supersedes(s2, i2, s1, i1))


def test_member_fields_round_trip_and_validation() -> None:
    c = Contact(PeerId(bytes(range(32))), "10.0.0.1:7000")
    m = Member(c, S, MAX_INCARNATION)
    assert Member.from_fields(m.to_fields()) == m
    with pytest.raises(MalformedMessage):
        Member.from_fields([c.to_fields(), 3, 0])  # unknown state
    with pytest.raises(MalformedMessage):
        Member.from_fields([c.to_fields(), 0, MAX_INCARNATION + 1])
    with pytest.raises(MalformedMessage):
        Member.from_fields([c.to_fields(), 0, -1])
    with pytest.raises(MalformedMessage):
        Member.from_fields([c.to_fields(), True, 0])
    with pytest.raises(MalformedMessage):
        Member.from_fields([c.to_fields(), 0])
