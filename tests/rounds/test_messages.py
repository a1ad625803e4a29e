from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.rounds import ROUND_MESSAGES, RoundGroup, RoundJoin
from shoal.rounds.progress import Progress
from shoal.wire.codec import PROTOCOL_VERSION, Codec, DecodeError, MalformedMessage
from shoal.wire.contact import Contact
from tests.rounds.driver import identity

CODEC = Codec(ROUND_MESSAGES)
CONTACTS = sorted(
    (Contact(identity(i).peer_id, f"10.0.0.{i}:1") for i in range(20)),
    key=lambda c: c.peer_id.raw,
)

u63 = st.integers(0, 2**63 - 1)


@settings(max_examples=100, deadline=None)
@given(run=st.text(max_size=40), r=u63, v=u63, s=u63, a=st.integers(0, 1024))
def test_join_roundtrip(run: str, r: int, v: int, s: int, a: int) -> None:
    msg = RoundJoin(run, r, v, s, a)
    assert CODEC.decode(CODEC.encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 20),
    samples=st.lists(st.integers(0, 2**40), min_size=20, max_size=20),
    a=st.integers(0, 1024),
)
def test_group_roundtrip(k: int, samples: list[int], a: int) -> None:
    members = tuple(CONTACTS[:k])
    ms = tuple(samples[:k])
    msg = RoundGroup("run", 3, 4, members, ms, sum(ms), a)
    assert CODEC.decode(CODEC.encode(msg)) == msg


def _env(tag: str, fields: Any) -> bytes:
    data: bytes = msgpack.packb([PROTOCOL_VERSION, tag, fields], use_bin_type=True)
    return data


leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
leaf = leaf | st.text(max_size=8)
leaf = leaf | st.binary(max_size=40)
anything = st.recursive(leaf, lambda c: st.lists(c, max_size=8), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(tag=st.sampled_from(["round.join", "round.group", "round.close"]), fields=anything)
def test_garbage_fields_raise_decode_error_only(tag: str, fields: Any) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(_env(tag, fields))


def _group_fields(**over: Any) -> list[Any]:
    members = [c.to_fields() for c in CONTACTS[:3]]
    f: dict[str, Any] = {
        "run": "run",
        "round": 1,
        "version": 1,
        "members": members,
        "samples": [1, 2, 3],
        "total": 6,
        "attempt": 0,
    }
    f.update(over)
    return list(f.values())


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"members": []}, "at least one member"),
        ({"members": [c.to_fields() for c in reversed(CONTACTS[:3])]}, "sorted"),
        ({"members": [CONTACTS[0].to_fields()] * 3}, "sorted"),
        ({"samples": [1, 2]}, "one entry per member"),
        ({"total": 7}, "not the sum"),
        ({"samples": [1, -2, 3]}, "member_samples[1]"),
        ({"attempt": 5000}, "attempt"),
        ({"round": "1"}, "round.group.round"),
        ({"run": "x" * 300}, "round.group.run"),
    ],
)
def test_group_validation_names_the_problem(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(MalformedMessage, match=needle.replace("[", r"\[").replace("]", r"\]")):
        CODEC.decode(_env("round.group", _group_fields(**over)))


def test_join_validation() -> None:
    with pytest.raises(MalformedMessage, match="expected 5 fields"):
        CODEC.decode(_env("round.join", ["run", 1, 1, 1]))
    with pytest.raises(MalformedMessage, match=r"round\.join\.samples"):
        CODEC.decode(_env("round.join", ["run", 1, 1, True, 0]))


def test_progress_value_roundtrip_and_validation() -> None:
    p = Progress(10, 3, True, "h:1")
    assert Progress.decode(p.encode()) == p
    for bad in (b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb([1, 2, 1, "a"])):
        with pytest.raises(MalformedMessage):
            Progress.decode(bad)
    with pytest.raises(MalformedMessage, match="exceeds"):
        Progress.decode(b"\x00" * 600)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_progress_garbage_raises_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Progress.decode(data)
