"""End-of-run settle between real nodes (TCP + AEAD on loopback): a peer's last
aggregate reaches peers outside its group, a peer that caught up by download is
waited for only briefly, and a peer that never finishes the last round makes
``settle`` give up at its bound, naming that peer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.identity.keys import PeerId
from shoal.ledger import gossip as gossip_mod
from shoal.ledger import training_hook
from shoal.ledger.feed import FeedStore
from shoal.ledger.messages import LEDGER_MESSAGES, FeedHead
from shoal.ledger.run_ledger import RunLedger
from shoal.ledger.training_hook import LedgerHook
from shoal.runtime.background import NodeThread
from shoal.runtime.node import Node, NodeConfig

from .helpers import digest

JOIN_WAIT_S = 30.0
FINAL = 2  # the run's last round index


async def _alive(node: Node) -> int:
    return sum(p["state"] == "alive" for p in node.peers())


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[list[LedgerHook]]:
    threads: list[NodeThread] = []
    out: list[LedgerHook] = []
    try:
        first = NodeThread(NodeConfig(tmp_path / "n0", extra_messages=LEDGER_MESSAGES))
        node0 = first.start()
        assert node0.contact is not None
        threads.append(first)
        for i in (1, 2):
            t = NodeThread(NodeConfig(tmp_path / f"n{i}", bootstrap=[node0.contact],
                                      extra_messages=LEDGER_MESSAGES))  # fmt: skip
            t.start()
            threads.append(t)
        deadline = time.monotonic() + JOIN_WAIT_S
        while any(t.call(_alive(t.node)) < 2 for t in threads if t.node is not None):
            assert time.monotonic() < deadline, "the three nodes never saw each other"
            time.sleep(0.1)
        for i, t in enumerate(threads):
            assert t.node is not None
            store = FeedStore(tmp_path / f"feed{i}.sqlite")
            out.append(LedgerHook(RunLedger(t.node.identity, store, None, "run"), t))
        yield out
    finally:
        for t in threads:
            t.stop()
        for h in out:
            h.ledger.store.close()


def _round(hook: LedgerHook, r: int, *, aggregate: bool = True) -> None:
    c = hook.ledger.commit_update(r, digest(r + 1), 8)
    if aggregate:
        hook.ledger.record_round(r, digest(100 + r), [c])


def _settle_all(hooks: list[LedgerHook], timeout_s: float) -> list[bool]:
    results: list[bool] = [False] * len(hooks)

    def run(i: int) -> None:
        results[i] = hooks[i].settle(FINAL, timeout_s)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(hooks))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def test_settle_spreads_every_last_aggregate(hooks: list[LedgerHook]) -> None:
    for h in hooks:
        for r in range(FINAL + 1):
            _round(h, r)  # each peer averaged alone: nobody has heard the others' feeds
    for h in hooks:  # the peers learn of each other's ledger only from this gossip
        assert len(h.ledger.store.heads()) == 1
    assert _settle_all(hooks, 30.0) == [True, True, True]
    heads = [h.feed_heads() for h in hooks]
    assert heads[0] == heads[1] == heads[2]
    assert len(heads[0]) == 3  # every peer's feed, at the same (seq, hash) everywhere
    for h in hooks:
        assert h.settled is not None and h.settled["converged"] is True
        assert h.stats()["feed_heads"] == heads[0]


def test_settle_waits_out_a_peer_that_caught_up_by_download(hooks: list[LedgerHook]) -> None:
    a, b, c = hooks
    for h in (a, c):
        for r in range(FINAL + 1):
            _round(h, r)
    _round(b, 0)  # then b downloaded the last round's state: no aggregate for it
    t0 = time.monotonic()
    assert _settle_all(hooks, 30.0) == [True, True, True]
    # a and c accept b as finished only after it re-announced the same heads for a while
    assert time.monotonic() - t0 >= training_hook.SETTLE_QUIET_S
    assert a.feed_heads() == b.feed_heads() == c.feed_heads()


def test_settle_gives_up_on_a_peer_that_never_finishes(hooks: list[LedgerHook]) -> None:
    a, b, c = hooks
    for h in (a, c):
        for r in range(FINAL + 1):
            _round(h, r)
    _round(b, 0)
    _round(b, FINAL, aggregate=False)  # b is still inside the last round
    for h in hooks:  # b is known as a ledger peer: it has gossiped its heads to us
        h.thread.call_soon(h.gossip.announce, h._peers())
    t0 = time.monotonic()
    done = _settle_all([a, c], 5.0)
    assert done == [False, False]
    assert time.monotonic() - t0 < 20.0  # bounded
    assert a.settled is not None and a.settled["waited_for"] == [b.ledger.peer_id.short()]
    # what could replicate did: a and c hold b's commitment for the last round
    assert a.ledger.commitment_of(b.ledger.peer_id, FINAL) is not None


def test_heard_map_is_bounded(hooks: list[LedgerHook], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossip_mod, "MAX_HEARD_PEERS", 4)
    g = hooks[0].gossip
    g.heard.clear()
    peers = [PeerId(bytes([i]) * 32) for i in range(1, 8)]
    for p in peers:
        g._remember(p, frozenset({FeedHead(p, 0, digest(1))}))
    assert list(g.heard) == peers[-4:]  # the oldest are forgotten first
    since = g.heard[peers[3]].since
    g._remember(peers[3], frozenset({FeedHead(peers[3], 0, digest(1))}))
    assert list(g.heard)[-1] == peers[3] and len(g.heard) == 4  # now the newest
    assert g.heard[peers[3]].since == since  # same heads: the streak goes on
    g._remember(peers[3], frozenset())
    assert g.heard[peers[3]].since > since  # new heads: a new streak
