"""Real `shoal train` processes on loopback: identical models, SIGKILL, late joiner."""

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.testbed.swarm import hashes_by_round, split_rounds
from shoal.training.demo import (
    DemoConfig,
    node_config,
    run_demo,
    start_node,
    wait_contact,
)
from shoal.training.local import simulate_diloco_inprocess
from shoal.training.run_config import RunConfig
from tests.process_helpers import wait_round

pytestmark = pytest.mark.slow


def _results(cfgs: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(c.result_file.read_text()) for c in cfgs]


def _wait_exit(ps: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for p in ps:
        assert p.wait(timeout=timeout) == 0


def test_four_nodes_identical_model_every_round(tmp_path: Path) -> None:
    res = run_demo(DemoConfig(nodes=4, rounds=3, inner_steps=8, out=tmp_path, deadline_s=30))
    assert res["peers"] == 4 and res["rounds"] == 3
    assert res["model_hashes_equal"] is True
    assert res["swarm_loss"] < res["initial_loss"]
    assert 0 < res["bytes_sent"] < res["ddp_equivalent_bytes"]


def test_swarm_computes_the_inprocess_reference(tmp_path: Path) -> None:
    """The in-process DiLoCo (which the loss studies in docs/BENCHMARKS.md use) is the
    nodes' math: same shards, int4 codec, error feedback, the owners' re-encode on the
    chunk grid, the Nesterov step and its readout. Only the fp32 summation order differs, so the
    losses agree closely when every peer did the same steps in every round. The nodes
    send int4z: int4 entropy-coded on the wire, which must train int4's model."""
    demo = DemoConfig(
        nodes=4, rounds=3, inner_steps=30, out=tmp_path, deadline_s=30, ledger=False,
        compression="int4z", outer_lr=0.7, outer_momentum=0.9,
    )  # fmt: skip
    res = run_demo(demo)
    assert res["model_hashes_equal"] is True
    for r in _results([node_config(demo, i, []) for i in range(4)]):
        assert [(h["group_size"], h["steps"]) for h in r["history"]] == [(4, 30)] * 3, r
    # One intra-op thread, as each node runs (demo.py: OMP_NUM_THREADS=1). With two the
    # matmuls round differently, AdamW turns that into +-lr on near-zero gradients, and
    # 4 peers x 1 round of 30 steps already differed by 6e-4 in loss (fp32, no codec).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = simulate_diloco_inprocess(
            4, 3, 30, batch_size=demo.batch_size, inner_lr=RunConfig.inner_lr, outer_lr=0.7,
            outer_momentum=0.9, outer_nesterov=True, codec="int4", eval_batches=8,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    # the demo reads the run's model: the outer iterate, not the look-ahead params
    assert ref.readout_loss is not None and abs(ref.readout_loss - ref.final_loss) > 1e-3
    assert abs(res["swarm_loss"] - ref.readout_loss) < 5e-4, (res["swarm_loss"], ref.readout_loss)
    assert ref.final_loss < ref.initial_loss


def test_sigkill_mid_round_does_not_stop_the_round(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=4, rounds=5, inner_steps=8, out=tmp_path, deadline_s=8)
    cfgs = [node_config(demo, 0, [])]
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    for i in range(1, 4):
        cfgs.append(node_config(demo, i, [boot]))
        procs.append(start_node(cfgs[i]))
    wait_round(cfgs[3], 2, 180)
    procs[3].send_signal(signal.SIGKILL)
    procs[3].wait(timeout=10)
    _wait_exit(procs[:3], 300)
    results = _results(cfgs[:3])
    assert all(r["rounds"] == 5 for r in results)
    by_round = hashes_by_round(results)
    assert all(len(by_round[r]) == 1 for r in range(1, 6)), by_round
    # after the kill the survivors averaged in groups without the dead peer
    last = next(h for h in results[0]["history"] if h["round"] == 5)
    assert last["group_size"] == 3


def test_late_joiner_syncs_then_takes_part(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    # 10 rounds: on a loaded machine the joiner's start (imports, corpus) took ~15 s,
    # longer than 4 rounds of this tiny model, and it arrived after the run had ended
    demo = DemoConfig(nodes=3, rounds=10, inner_steps=8, out=tmp_path, deadline_s=8)
    cfgs = [node_config(demo, 0, [])]
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    for i in range(1, 3):
        cfgs.append(node_config(demo, i, [boot]))
        procs.append(start_node(cfgs[i]))
    wait_round(cfgs[0], 2, 180)
    late = node_config(DemoConfig(nodes=4, rounds=10, inner_steps=8, out=tmp_path), 3, [boot])
    late.deadline_s = 8
    procs.append(start_node(late))
    _wait_exit(procs, 300)
    results = _results([*cfgs, late])
    joiner = results[3]
    assert joiner["first_round"] >= 2, joiner  # downloaded the state, did not start at 0
    assert joiner["history"], "the joiner never took part in a round"
    # Every round the joiner was in ends on one model everywhere once the head vote
    # has run: a peer that missed a group under load averages alone, then adopts the
    # swarm's state (RoundLog.adopted_hash) before its next round (the likely cause
    # of one CI failure: two hashes in round 7).
    settled = hashes_by_round(results, settled=True)
    for h in joiner["history"]:
        assert len(settled[h["round"]]) == 1, (h["round"], split_rounds(results))
    # ... and such a round stays the exception, not how this swarm runs
    assert len(split_rounds(results)) <= 2, split_rounds(results)
    assert any(h["group_size"] == 4 for h in joiner["history"])
