"""Overlapped DiLoCo (``[run] overlap = true``): round r's average runs while round
r+1 computes and its outer step lands one round late.

- real ``shoal train`` processes on loopback: every round ends bit-identical on every
  peer, and all rounds complete; with the ledger on, every round is committed,
  recorded and anchored, and ``shoal verify`` accepts the final checkpoint;
- two peers in one process, one four times slower: the fast one never blocks on the
  round close (it keeps computing and contributes more steps), and both stay identical;
- a background average that fails is raised from ``step()``, not trained past forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import shoal
from shoal.diloco import DiLoCo
from shoal.ledger.demo_setup import setup_demo_ledger
from shoal.ledger.entry import Kind
from shoal.ledger.feed import FeedStore
from shoal.ledger.payloads import RoundAggregate, UpdateCommitment, payload_of
from shoal.ledger.training_hook import FEED_PATH
from shoal.runtime.background import NodeThread
from shoal.training.demo import DemoConfig, ledger_summary, node_config, start_node, wait_contact
from shoal.training.run_config import RunConfig
from shoal.training.swarm_averager import RoundOutcome
from tests.tiny_models import Regression

pytestmark = pytest.mark.slow


def _run_swarm(
    demo: DemoConfig, procs: list[subprocess.Popen[bytes]], timeout: float = 300
) -> tuple[list[RunConfig], list[dict[str, Any]]]:
    cfgs = [node_config(demo, 0, [])]
    cfgs[0].overlap = True
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    for i in range(1, demo.nodes):
        cfgs.append(node_config(demo, i, [boot]))
        cfgs[i].overlap = True
        procs.append(start_node(cfgs[i]))
    assert [p.wait(timeout=timeout) for p in procs] == [0] * demo.nodes
    return cfgs, [json.loads(c.result_file.read_text()) for c in cfgs if c.result_file]


def _hashes_by_round(results: list[dict[str, Any]]) -> dict[int, set[str]]:
    by_round: dict[int, set[str]] = {}
    for r in results:
        for h in r["history"]:
            by_round.setdefault(h["round"], set()).add(h["model_hash"])
    return by_round


def test_overlapped_rounds_stay_identical(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=3, rounds=4, inner_steps=8, out=tmp_path, deadline_s=20)
    _, results = _run_swarm(demo, procs)
    for r in results:
        assert r["rounds"] == 4
        assert [h["round"] for h in r["history"]] == [1, 2, 3, 4]
        assert sum(h["steps"] for h in r["history"]) == r["local_steps"]
        assert r["sync_breakdown"]["flush_s"] > 0  # the last round's wait is counted
    by_round = _hashes_by_round(results)
    assert all(len(v) == 1 for v in by_round.values()), by_round
    assert len({r["final_model_hash"] for r in results}) == 1
    # the swarm learned: the averaged model moved away from the initial one each round
    assert len({next(iter(v)) for v in by_round.values()}) == 4


def test_overlap_with_ledger_commits_anchors_and_verifies(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=2, rounds=3, inner_steps=4, batch_size=4, out=tmp_path)
    dirs = [node_config(demo, i, []).data_dir for i in range(demo.nodes)]
    chain = setup_demo_ledger(tmp_path, dirs, "demo")
    try:
        cfgs, results = _run_swarm(demo, procs)
    finally:
        chain.stop()
    assert all(len(v) == 1 for v in _hashes_by_round(results).values())
    anchored = {n for r in results if r["ledger"] for n in r["ledger"]["anchored_rounds"]}
    assert anchored == {0, 1, 2}
    peer_ids = {r["peer_id"] for r in results}
    for cfg, res in zip(cfgs, results, strict=True):
        with FeedStore(cfg.data_dir / FEED_PATH) as store:
            me = next(a for a in store.authors() if str(a) == res["peer_id"])
            own = {e.seq: payload_of(e) for e in store.entries(me)}
            commits = {p.round: seq for seq, p in own.items() if isinstance(p, UpdateCommitment)}
            aggs = {p.round: (seq, p) for seq, p in own.items() if isinstance(p, RoundAggregate)}
            assert sorted(commits) == sorted(aggs) == [0, 1, 2]
            for rnd, (seq, agg) in aggs.items():
                # committed before the aggregate that used it; every member's counted
                assert commits[rnd] < seq
                assert {str(c.author) for c in agg.contributors} == peer_ids
                for c in agg.contributors:
                    e = store.get(c.author, c.seq)
                    assert e is not None and e.kind == Kind.UPDATE_COMMITMENT
                    p = payload_of(e)
                    assert isinstance(p, UpdateCommitment) and p.round == rnd
                # the aggregate names the model the round produced (one round late)
                assert agg.model_hash.hex() == res["history"][rnd]["model_hash"]
    summary = ledger_summary(tmp_path, results)
    ok = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "verify", summary["verify_checkpoint"],
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "VERIFIED" in ok.stdout and "2 signed update commitments match" in ok.stdout


def _make(node: NodeThread, model: Regression, inner_steps: int) -> DiLoCo:
    return DiLoCo(model, torch.optim.SGD(model.parameters(), lr=0.01), run="ovl", node=node,
                  inner_steps=inner_steps, compression="none", join_existing=False,
                  overlap=True)  # fmt: skip


def _train_rounds(
    opt: DiLoCo, model: Regression, rounds: int, step_s: float, errors: list[BaseException]
) -> None:
    """The runner's loop: train until ``rounds`` are applied; ``step_s`` paces a step."""
    try:
        g = torch.Generator().manual_seed(int(step_s * 1000))
        w = torch.arange(8, dtype=torch.float32).reshape(8, 1)
        deadline = time.monotonic() + 120
        while opt.round < rounds:
            assert time.monotonic() < deadline, "rounds did not complete"
            x = torch.randn(16, 8, generator=g)
            loss = model(x, x @ w)
            opt.zero_grad()
            loss.backward()
            time.sleep(step_s)  # stands in for a heavier model's step
            opt.step(samples=16)
            if opt.pending_round == rounds - 1:
                opt.flush()
    except BaseException as exc:
        errors.append(exc)


def test_fast_peer_keeps_computing_instead_of_waiting(tmp_path: Path) -> None:
    steps = 10
    target = 2 * steps * 16
    a = shoal.start_node(tmp_path / "a", run="ovl", target_samples=target, deadline_s=20)
    try:
        assert a.node is not None
        boot = str(a.node.contact)
        b = shoal.start_node(
            tmp_path / "b", run="ovl", target_samples=target, deadline_s=20, bootstrap=[boot]
        )
        try:
            ma, mb = Regression(), Regression()
            fast, slow = _make(a, ma, steps), _make(b, mb, steps)
            errors: list[BaseException] = []
            ts = [
                threading.Thread(target=_train_rounds, args=(fast, ma, 3, 0.01, errors)),
                threading.Thread(target=_train_rounds, args=(slow, mb, 3, 0.04, errors)),
            ]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join(150)
            wall = time.monotonic() - t0
            assert not errors, errors
        finally:
            b.stop()
    finally:
        a.stop()
    assert [h.round for h in fast.history] == [1, 2, 3]
    assert [h.model_hash for h in fast.history] == [h.model_hash for h in slow.history]
    assert all(h.group_size == 2 for h in fast.history)
    assert torch.equal(fast.global_flat, slow.global_flat)
    # the fast peer went past its inner_steps instead of stopping to wait
    assert fast.local_steps > slow.local_steps
    assert max(h.steps for h in fast.history) > steps
    # ...and was never blocked, apart from the last round's flush
    assert fast.timings["wait_pending_s"] < 0.1
    assert fast.sync_s - fast.timings["flush_s"] < 0.1 * wall


def test_failed_background_average_is_raised_from_step(tmp_path: Path) -> None:
    node = shoal.start_node(tmp_path / "n", run="ovl", target_samples=4 * 16, deadline_s=5)
    try:
        model = Regression()
        opt = _make(node, model, 4)

        async def broken(round_no: int, delta: torch.Tensor, samples: int) -> RoundOutcome:
            raise RuntimeError("all-reduce exploded")

        opt._averager.finish = broken  # type: ignore[method-assign]
        errors: list[BaseException] = []
        _train_rounds(opt, model, 2, 0.01, errors)
    finally:
        node.stop()
    assert len(errors) == 1 and "all-reduce exploded" in str(errors[0]), errors
    assert opt.round == 0  # nothing was applied from the failed round
