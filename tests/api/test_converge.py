"""DiLoCo.converge: after the last round a peer that ended on a model of its own (it
averaged alone, or sat on the other side of a partition) adopts the swarm's state,
and every peer waits for that before it leaves. Three peers in one process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import pytest
import torch

import shoal
from shoal.dht.records import key_for
from shoal.diloco import DiLoCo
from shoal.runtime.background import NodeThread


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 1)


def _opt(node: NodeThread) -> DiLoCo:
    m = Tiny()
    return shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.01), run="conv", node=node,
                        inner_steps=10, compression="none", join_existing=False)  # fmt: skip


@pytest.mark.slow
def test_outvoted_peer_adopts_the_swarm_state_and_all_agree(tmp_path: Path) -> None:
    nodes: list[NodeThread] = []
    try:
        for name in "abc":
            boot = [str(nodes[0].node.contact)] if nodes and nodes[0].node else []
            nodes.append(shoal.start_node(tmp_path / name, run="conv", target_samples=10**6,
                                          bootstrap=boot))  # fmt: skip
        opts = [_opt(n) for n in nodes]
        a, b, c = opts
        # b ends "its last round" on a model of its own; a and c agree
        b.global_flat.add_(1.0)
        for o in opts:
            o.node_thread.call(o._server.publish(o._snapshot()))
        assert b._server.snapshot is not None and a._server.snapshot is not None
        assert b._server.snapshot.state_hash != a._server.snapshot.state_hash

        agreed: dict[int, bool] = {}
        ts = [
            threading.Thread(target=lambda i=i: agreed.__setitem__(i, opts[i].converge(60.0)))
            for i in range(3)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        assert agreed == {0: True, 1: True, 2: True}
        assert torch.equal(b.global_flat, a.global_flat)
        assert torch.equal(c.global_flat, a.global_flat)
        assert b._server.snapshot.state_hash == a._server.snapshot.state_hash
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
def test_converge_gives_up_when_a_live_peer_never_agrees(tmp_path: Path) -> None:
    a = shoal.start_node(tmp_path / "a", run="conv", target_samples=10**6)
    try:
        assert a.node is not None
        b = shoal.start_node(tmp_path / "b", run="conv", target_samples=10**6,
                             bootstrap=[str(a.node.contact)])  # fmt: skip
        try:
            assert b.node is not None
            oa = _opt(a)
            oa.node_thread.call(oa._server.publish(oa._snapshot()))
            # a live peer that publishes another head and never moves (it loses the
            # vote, so a keeps its own state and waits for it)
            b.call(b.node.put(key_for("conv/head"), msgpack.packb([0, "f" * 64]), ttl_s=60))
            before = oa.global_flat.clone()
            t0 = time.monotonic()
            assert oa.converge(3.0) is False
            assert 3.0 <= time.monotonic() - t0 < 30.0
            assert torch.equal(oa.global_flat, before)
        finally:
            b.stop()
    finally:
        a.stop()
