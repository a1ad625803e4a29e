"""DiLoCo.converge: after the last round a peer that ended on a model of its own (it
averaged alone, or sat on the other side of a partition) adopts the swarm's state,
and every peer waits for that before it leaves. Three peers in one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import msgpack
import pytest
import torch

import shoal
from shoal.averaging.allreduce import AllReduceResult
from shoal.dht.records import key_for
from shoal.diloco import DiLoCo, RoundLog
from shoal.rounds.events import GroupFormed
from shoal.runtime.background import NodeThread
from shoal.training.diloco_math import model_hash, unflatten_into
from shoal.training.swarm_averager import RoundOutcome
from shoal.wire.contact import Contact


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 1)


def _opt(node: NodeThread) -> DiLoCo:
    m = Tiny()
    return shoal.DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.01), run="conv", node=node,
                        inner_steps=10, compression="none", join_existing=False)  # fmt: skip


def _start_three(tmp_path: Path, nodes: list[NodeThread]) -> None:
    """Nodes a, b, c of run "conv", b and c bootstrapped from a (appended as they start,
    so the caller's ``finally`` stops every one that did)."""
    for name in "abc":
        boot = [str(nodes[0].node.contact)] if nodes and nodes[0].node else []
        nodes.append(shoal.start_node(tmp_path / name, run="conv", target_samples=10**6,
                                      bootstrap=boot))  # fmt: skip


T = TypeVar("T")


def _while_others_finish_round_0(others: Sequence[DiLoCo], call: Callable[[], T]) -> T:
    """Run ``call`` while ``others`` finish round 0 on one new state a second later
    (their group's all-reduce ends after the solo peer's) and publish its head."""

    def finish() -> None:
        time.sleep(1.0)
        for o in others:
            o.global_flat.add_(0.5)
            unflatten_into(o.global_flat, o.params)
            o.round = 1
            o.node_thread.call(o._server.publish(o._snapshot()))

    t = threading.Thread(target=finish)
    t.start()
    try:
        return call()
    finally:
        t.join(30)


@pytest.mark.slow
def test_outvoted_peer_adopts_the_swarm_state_and_all_agree(tmp_path: Path) -> None:
    nodes: list[NodeThread] = []
    try:
        _start_three(tmp_path, nodes)
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


@pytest.mark.slow
def test_after_a_solo_round_the_vote_waits_for_the_round_and_adopts(tmp_path: Path) -> None:
    """A peer that averaged alone (it missed the group) waits for the heads of the peers
    that were in its round and adopts their new state before it starts the next round;
    a plain catch-up at that moment sees only the old heads and would keep its own
    model, so the next group would mix two starting states."""
    nodes: list[NodeThread] = []
    try:
        _start_three(tmp_path, nodes)
        opts = [_opt(n) for n in nodes]
        a, b, c = opts
        for o in opts:  # round 0: everyone holds the same state
            o.node_thread.call(o._server.publish(o._snapshot()))
        # b "averaged round 0 alone": its own round-1 model, in its history
        b.global_flat.add_(1.0)
        b.round = 1
        b.node_thread.call(b._server.publish(b._snapshot()))
        own = model_hash(b._named_params())
        b.history.append(RoundLog(1, own, 1, 10, 0, 0))
        assert b._catch_up() is False  # the others' round-1 heads are not out yet

        assert _while_others_finish_round_0((a, c), lambda: b._catch_up(after_solo=True))
        assert torch.equal(b.global_flat, a.global_flat) and b.round == 1
        assert b.history[-1].model_hash == own  # what b computed stays on record
        assert b.history[-1].adopted_hash == model_hash(a._named_params())
    finally:
        for n in nodes:
            n.stop()


class _Anchors:
    """The RoundLedger hook's surface, recording what a peer anchors."""

    def __init__(self) -> None:
        self.anchored: list[tuple[int, str, list[str]]] = []

    def commit_update(self, round_no: int, delta: bytes, samples: int) -> None:
        pass

    def anchor_round(self, round_no: int, model_hash: str, members: Sequence[Contact]) -> None:
        self.anchored.append((round_no, model_hash, [str(m.peer_id) for m in members]))


def _solo_round(o: DiLoCo, anchors: _Anchors) -> None:
    """Make ``o``'s next all-reduce a group of one (it missed the others' group): its
    own update is the average. The rest of ``_sync`` - outer step, anchor, head vote -
    is the real code."""
    me = o._node.contact
    assert me is not None

    async def finish(round_no: int, delta: torch.Tensor, samples: int) -> RoundOutcome:
        res = AllReduceResult(delta.clone(), float(samples), [me.peer_id], {}, 0, 0)
        return RoundOutcome(res, GroupFormed(round_no, (me,), (samples,), samples, 0, me.peer_id))

    o._averager.finish = finish  # type: ignore[method-assign]
    o.ledger = anchors


@pytest.mark.slow
def test_a_solo_round_is_anchored_only_if_the_vote_keeps_it(tmp_path: Path) -> None:
    """The contract takes one anchor a round, first come, and a solo fallback finishes
    first (no exchange). Outvoted, the solo peer anchors nothing, so the chain holds
    the model the swarm goes on from (the chaos suite saw a last-round solo anchor no
    peer ended on)."""
    nodes: list[NodeThread] = []
    try:
        _start_three(tmp_path, nodes)
        opts = [_opt(n) for n in nodes]
        a, b, c = opts
        for o in opts:
            o.node_thread.call(o._server.publish(o._snapshot()))
        anchors = _Anchors()
        _solo_round(b, anchors)
        b.global_flat.add_(1.0)  # b's inner steps went elsewhere than the others'
        unflatten_into(b.global_flat, b.params)

        entry = _while_others_finish_round_0((a, c), b._sync)
        assert entry.adopted_hash == model_hash(a._named_params()) != entry.model_hash
        assert anchors.anchored == []  # outvoted: a's group anchors round 0
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
def test_a_lone_swarms_solo_round_is_anchored(tmp_path: Path) -> None:
    """With nobody to outvote it, a solo round is the round: anchored, self-credited."""
    node = shoal.start_node(tmp_path / "a", run="conv", target_samples=10**6)
    try:
        o = _opt(node)
        o.node_thread.call(o._server.publish(o._snapshot()))
        anchors = _Anchors()
        _solo_round(o, anchors)
        entry = o._sync()
        assert entry.adopted_hash is None
        assert anchors.anchored == [(0, entry.model_hash, [str(o._node.peer_id)])]
    finally:
        node.stop()
