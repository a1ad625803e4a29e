"""Feed gossip between two real nodes (TCP + AEAD on loopback): replication of a
peer's feed, and an equivocation noticed and handed over as a proof."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from shoal.ledger.entry import GENESIS_PREV, Kind, sign_entry
from shoal.ledger.equivocation import EquivocationProof
from shoal.ledger.feed import FeedStore
from shoal.ledger.gossip import FeedGossip
from shoal.ledger.messages import LEDGER_MESSAGES
from shoal.ledger.payloads import JoinedRun, UpdateCommitment, encode_payload
from shoal.runtime.background import NodeThread
from shoal.runtime.node import Node, NodeConfig

from .helpers import ident

WAIT_S = 20.0


def test_two_nodes_replicate_and_report_equivocation(tmp_path: Path) -> None:
    a = NodeThread(NodeConfig(tmp_path / "a", extra_messages=LEDGER_MESSAGES))
    node_a = a.start()
    assert node_a.contact is not None
    b = NodeThread(NodeConfig(tmp_path / "b", bootstrap=[node_a.contact],
                              extra_messages=LEDGER_MESSAGES))  # fmt: skip
    node_b = b.start()
    store_a, store_b = FeedStore(tmp_path / "a.sqlite"), FeedStore(tmp_path / "b.sqlite")
    proofs: list[EquivocationProof] = []
    got_proof = threading.Event()

    def on_proof(p: EquivocationProof) -> None:
        proofs.append(p)
        got_proof.set()

    try:

        async def attach(
            node: Node, store: FeedStore, cb: Callable[[EquivocationProof], None] | None
        ) -> FeedGossip:
            return FeedGossip(node, store, cb)

        gossip_a = a.call(attach(node_a, store_a, None))
        b.call(attach(node_b, store_b, on_proof))
        # node A's own feed, and a liar's entry that A and B hold in two versions.
        me = node_a.identity
        for r in range(3):
            store_a.append(me, UpdateCommitment("run", r, bytes([r]) * 32, 8))
        liar = ident(66)
        twin_a = sign_entry(
            liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("a"))
        )
        twin_b = sign_entry(
            liar, 0, GENESIS_PREV, Kind.JOINED_RUN, 1, encode_payload(JoinedRun("b"))
        )
        store_a.ingest(twin_a)
        store_b.ingest(twin_b)
        assert node_b.contact is not None
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            a.call_soon(gossip_a.announce, [node_b.contact])
            if len(store_b.entries(me.peer_id)) == 3 and got_proof.is_set():
                break
            time.sleep(0.2)
        assert store_b.entries(me.peer_id) == store_a.entries(me.peer_id)
        assert got_proof.is_set(), "B did not notice the equivocation"
        proofs[0].check()
        assert {proofs[0].a.hash, proofs[0].b.hash} == {twin_a.hash, twin_b.hash}
    finally:
        a.stop()
        b.stop()
        store_a.close()
        store_b.close()
