"""The simulator's speedups change how fast a run goes, never what happens in it."""

from __future__ import annotations

import gc
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dht.records import RecordStore, SignedRecord, StaleRecord
from shoal.dht.routing import CLOSEST_CACHE_ENTRIES, RoutingTable
from shoal.identity import Identity, PeerId
from shoal.sim import engine
from shoal.sim.engine import simulation_gc
from shoal.sim.rounds_scenario import RoundsScenario, RoundsScenarioConfig
from shoal.wire.contact import Contact

KEY = bytes(32)
OTHER = bytes([1]) * 32


def _ids(n: int) -> list[Identity]:
    return [Identity.from_seed(bytes([i + 1]) * 32) for i in range(n)]


def _rec(ident: Identity, key: bytes, seq: int, expires: float) -> SignedRecord:
    return SignedRecord.create(ident, key, f"v{seq}".encode(), seq, expires)


def _expected(store: RecordStore, key: bytes, now: float) -> list[SignedRecord]:
    """What ``get`` returned before it kept an ordered copy: sort the held dict."""
    held = store._by_key.get(key, {})
    return [held[p] for p in sorted(held) if held[p].expires_at > now]


def test_store_get_follows_every_change_to_a_key() -> None:
    ids = _ids(4)
    store = RecordStore(max_keys=4, max_per_key=3)
    for i, ident in enumerate(ids[:3]):
        store.put(_rec(ident, KEY, 1, 100.0 + i), 0.0)
    first = store.get(KEY, 0.0)
    assert first == _expected(store, KEY, 0.0)
    assert [r.publisher.raw for r in first] == sorted(r.publisher.raw for r in first)
    first.clear()  # a caller changing its list must not change the store's copy
    assert len(store.get(KEY, 0.0)) == 3
    # a replacement (higher seq) shows at once, in the publisher's place
    store.put(_rec(ids[1], KEY, 2, 150.0), 1.0)
    assert store.get(KEY, 1.0) == _expected(store, KEY, 1.0)
    assert any(r.seq == 2 for r in store.get(KEY, 1.0))
    # a stale put is refused and changes nothing
    with pytest.raises(StaleRecord):
        store.put(_rec(ids[1], KEY, 1, 150.0), 1.0)
    assert store.get(KEY, 1.0) == _expected(store, KEY, 1.0)
    # a fourth publisher evicts the soonest-expiring one (max_per_key = 3)
    store.put(_rec(ids[3], KEY, 1, 200.0), 2.0)
    got = store.get(KEY, 2.0)
    assert got == _expected(store, KEY, 2.0)
    assert ids[0].peer_id not in {r.publisher for r in got}
    # expiry is applied on read, and purge drops the key's records
    assert store.get(KEY, 160.0) == _expected(store, KEY, 160.0)
    assert {r.publisher for r in store.get(KEY, 160.0)} == {ids[3].peer_id}
    store.purge(300.0)
    assert store.get(KEY, 300.0) == []
    assert store.get(OTHER, 0.0) == []


def _contact(i: int, port: int = 1) -> Contact:
    return Contact(PeerId(hashlib.sha256(b"peer%d" % i).digest()), f"h{i}:{port}")


# More targets than the cache holds, so entries are also pushed out.
_TARGETS = [int.from_bytes(hashlib.sha256(b"t%d" % i).digest(), "big") for i in range(12)]
assert len(_TARGETS) > CLOSEST_CACHE_ENTRIES


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "move", "fail", "remove", "seen", "ask"]),
            st.integers(0, 60),
            st.integers(0, len(_TARGETS) - 1),
            st.integers(1, 25),
        ),
        max_size=120,
    )
)
@settings(max_examples=150, deadline=None)
def test_cached_closest_matches_brute_force_through_every_change(
    ops: list[tuple[str, int, int, int]],
) -> None:
    """Cached answers must follow adds, evictions, removals, promotions and new
    addresses; recency updates (``seen``, re-adds) leave them valid."""
    t = RoutingTable(_contact(-1).peer_id.dht_key, k=3, max_fails=2)
    for op, i, ti, n in ops:
        c = _contact(i)
        if op == "add":
            t.add(c, 0.0)
        elif op == "move":
            t.add(_contact(i, port=2), 0.0)  # same peer, new address
        elif op == "fail":
            t.fail(c.peer_id)
        elif op == "remove":
            t.remove(c.peer_id)
        elif op == "seen":
            t.seen(c.peer_id, 1.0)
        target = _TARGETS[ti]
        got = t.closest(target, n)
        assert got == t.closest_brute(target, n)
        assert [x.addr for x in got] == [x.addr for x in t.closest_brute(target, n)]
        ex = c.peer_id
        assert (
            t.closest(target, n, exclude=ex)
            == [x for x in t.closest_brute(target, n + 1) if x.peer_id != ex][:n]
        )
        got.clear()  # a caller's list is its own
        assert len(t.closest(target, n)) == min(n, len(t))


def test_simulation_gc_restores_the_collector_even_when_the_block_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), simulation_gc() as freeze:
        assert gc.get_threshold()[0] == engine.GC_YOUNG_THRESHOLD
        freeze()
        assert gc.get_freeze_count() > 0
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_gc_tuning_does_not_change_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RoundsScenarioConfig(nodes=24, rounds=1, seed=5)
    tuned = RoundsScenario(cfg).run()

    def plain_run(self: RoundsScenario) -> dict[str, object]:
        return self._run()  # no simulation_gc, no signature memo

    monkeypatch.setattr(RoundsScenario, "run", plain_run)
    plain = RoundsScenario(cfg).run()
    assert tuned["rounds_completed"] == 1
    assert tuned["trace_sha256"] == plain["trace_sha256"]
    assert tuned["control_bytes_per_peer_per_round"] == plain["control_bytes_per_peer_per_round"]
