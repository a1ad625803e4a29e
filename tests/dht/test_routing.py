import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dht.routing import AddResult, RoutingTable
from shoal.identity import PeerId
from shoal.wire.contact import Contact


def contact(i: int) -> Contact:
    return Contact(PeerId(hashlib.sha256(b"peer%d" % i).digest()), f"h{i}:1")


ME = contact(-1)


def test_add_update_self() -> None:
    t = RoutingTable(ME.peer_id.dht_key, k=4)
    assert t.add(ME, 0.0) is AddResult.SELF
    assert t.add(contact(1), 0.0) is AddResult.ADDED
    moved = Contact(contact(1).peer_id, "elsewhere:2")
    assert t.add(moved, 1.0) is AddResult.UPDATED
    assert t.get(moved.peer_id) == moved
    assert len(t) == 1 and contact(1).peer_id in t


def bucket_mates(n: int, k: int) -> tuple[RoutingTable, list[Contact]]:
    """A table and ``n`` contacts that all fall into bucket 255."""
    t = RoutingTable(0, k=k)
    mates = [c for c in (contact(i) for i in range(400)) if c.peer_id.dht_key >> 255][:n]
    return t, mates


def test_full_bucket_keeps_old_contacts_and_caches_new() -> None:
    t, mates = bucket_mates(6, k=3)
    for c in mates[:3]:
        assert t.add(c, 0.0) is AddResult.ADDED
    assert t.add(mates[3], 1.0) is AddResult.CACHED
    assert t.add(mates[4], 2.0) is AddResult.CACHED
    assert [c.peer_id for c in t.contacts()] == [c.peer_id for c in mates[:3]]
    assert t.cache_size == 2
    # LRU ordering: seeing the oldest moves it to the end.
    assert t.seen(mates[0].peer_id, 3.0)
    assert t.head(mates[0].peer_id.dht_key) == (mates[1], 0.0)


def test_failing_contact_evicted_after_max_fails_and_replacement_promoted() -> None:
    t, mates = bucket_mates(5, k=3)
    t.max_fails = 2
    for c in mates[:3]:
        t.add(c, 0.0)
    t.add(mates[3], 1.0)
    t.add(mates[4], 2.0)
    assert t.fail(mates[1].peer_id) == (False, None)
    assert mates[1].peer_id in t
    assert t.fail(mates[1].peer_id) == (True, mates[4])  # most recent replacement
    assert mates[1].peer_id not in t and mates[4].peer_id in t
    assert len(t) == 3 and t.cache_size == 1


def test_success_resets_fail_count() -> None:
    t, mates = bucket_mates(1, k=3)
    t.max_fails = 2
    t.add(mates[0], 0.0)
    t.fail(mates[0].peer_id)
    t.seen(mates[0].peer_id, 1.0)
    assert t.fail(mates[0].peer_id) == (False, None)
    assert mates[0].peer_id in t


def test_remove_promotes_and_empty_bucket_is_dropped() -> None:
    t, mates = bucket_mates(3, k=2)
    for c in mates:
        t.add(c, 0.0)
    assert t.remove(mates[0].peer_id) == mates[2]
    assert t.remove(mates[1].peer_id) is None
    assert t.remove(mates[2].peer_id) is None
    assert len(t) == 0 and t.nonempty_buckets() == []


@given(
    me=st.integers(0, 2**256 - 1),
    members=st.lists(st.integers(0, 2000), max_size=300, unique=True),
    target=st.integers(0, 2**256 - 1),
    n=st.integers(0, 40),
    k=st.integers(1, 20),
)
@settings(max_examples=200, deadline=None)
def test_closest_matches_brute_force(
    me: int, members: list[int], target: int, n: int, k: int
) -> None:
    t = RoutingTable(me, k=k)
    for i in members:
        t.add(contact(i), 0.0)
    got = t.closest(target, n)
    assert got == t.closest_brute(target, n)
    assert len(got) == min(n, len(t))
    if got:
        ex = got[0].peer_id
        assert (
            t.closest(target, n, exclude=ex)
            == [c for c in t.closest_brute(target, n + 1) if c.peer_id != ex][:n]
        )


@given(st.lists(st.tuples(st.sampled_from(["add", "fail", "remove"]), st.integers(0, 300))))
@settings(max_examples=100, deadline=None)
def test_sizes_stay_bounded(ops: list[tuple[str, int]]) -> None:
    k = 3
    t = RoutingTable(ME.peer_id.dht_key, k=k, max_fails=1)
    for op, i in ops:
        c = contact(i)
        if op == "add":
            t.add(c, 0.0)
        elif op == "fail":
            t.fail(c.peer_id)
        else:
            t.remove(c.peer_id)
        assert len(t) == len(t.contacts()) <= 256 * k
        assert t.cache_size <= 256 * k
        for b in t.nonempty_buckets():
            assert sum(1 for x in t.contacts() if t.bucket_index(x.peer_id.dht_key) == b) <= k
