"""The training hook's admission answers: a known-good peer whose cached admission
went stale is admitted at once and re-read in the background (no chain round trip
inside a round); a ban read by that re-read takes effect on the next question; an
unknown peer is read from the chain, and a chain failure does not drop peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from shoal.identity.keys import PeerId
from shoal.ledger.chain import Ledger, LedgerError
from shoal.ledger.feed import FeedStore
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.ledger.run_ledger import ADMISSION_CACHE_S, RunLedger
from shoal.ledger.training_hook import LedgerHook
from shoal.runtime.background import NodeThread
from shoal.runtime.node import NodeConfig

WAIT_S = 10.0
PEER = PeerId(bytes([7]) * 32)


class FakeChain:
    """Answers is_admitted from ``admitted``; blocks while ``gate`` is clear."""

    def __init__(self) -> None:
        self.admitted = True
        self.fail = False
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def is_admitted(self, peer: PeerId) -> bool:
        self.calls += 1
        assert self.gate.wait(WAIT_S)
        if self.fail:
            raise LedgerError("chain unreachable")
        return self.admitted


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[tuple[LedgerHook, FakeChain]]:
    t = NodeThread(NodeConfig(tmp_path / "n", extra_messages=LEDGER_MESSAGES))
    node = t.start()
    chain = FakeChain()
    store = FeedStore(tmp_path / "feed.sqlite")
    h = LedgerHook(RunLedger(node.identity, store, cast(Ledger, chain), "run"), t)
    try:
        yield h, chain
    finally:
        h.close()
        t.stop()


def _age(h: LedgerHook, seconds: float) -> None:
    h.ledger._admitted[PEER] -= seconds  # as if the last chain read were that old


def _wait(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_stale_admission_answers_at_once_and_rereads_in_background(
    hook: tuple[LedgerHook, FakeChain],
) -> None:
    h, chain = hook
    assert h.admits(PEER) and chain.calls == 1  # unknown: read from the chain
    assert h.admits(PEER) and chain.calls == 1  # fresh: cached
    _age(h, ADMISSION_CACHE_S + 1)
    chain.gate.clear()  # the chain now takes "forever" to answer
    chain.admitted = False  # ... and has banned the peer
    t0 = time.monotonic()
    assert h.admits(PEER)  # known good: no wait on the chain
    assert h.admits(PEER)  # one re-read queued, not two
    assert time.monotonic() - t0 < 1.0
    chain.gate.set()
    _wait(lambda: not h._rechecking)
    assert chain.calls == 2
    assert not h.admits(PEER)  # the ban the re-read found applies now (from the chain)
    assert chain.calls == 3


def test_long_unseen_peer_is_read_from_the_chain(hook: tuple[LedgerHook, FakeChain]) -> None:
    h, chain = hook
    assert h.admits(PEER)
    _age(h, 10_000)  # beyond ADMISSION_STALE_S: not trusted from memory
    chain.admitted = False
    assert not h.admits(PEER)
    assert chain.calls == 2


def test_chain_failure_fails_open(hook: tuple[LedgerHook, FakeChain]) -> None:
    h, chain = hook
    chain.fail = True
    assert h.admits(PEER)  # logged; an unreachable chain does not drop honest peers
    assert chain.calls == 1


def test_stale_answer_after_the_rechecker_stopped(hook: tuple[LedgerHook, FakeChain]) -> None:
    h, chain = hook
    assert h.admits(PEER)
    h._rechecker.shutdown(wait=True)  # as at the end of a run
    _age(h, ADMISSION_CACHE_S + 1)
    assert h.admits(PEER)  # still answered from memory; the re-read is skipped
    assert not h._rechecking and chain.calls == 1
