"""Overlapped DiLoCo (``[run] overlap = true``): round r's average runs while round
r+1 computes and its outer step lands one round late. Real ``shoal train`` processes
on loopback: every round ends bit-identical on every peer, and all rounds complete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shoal.training.demo import DemoConfig, node_config, start_node, wait_contact

pytestmark = pytest.mark.slow


def test_overlapped_rounds_stay_identical(tmp_path: Path) -> None:
    demo = DemoConfig(nodes=3, rounds=4, inner_steps=8, out=tmp_path, deadline_s=20)
    cfgs = [node_config(demo, 0, [])]
    cfgs[0].overlap = True
    procs: list[subprocess.Popen[bytes]] = [start_node(cfgs[0])]
    try:
        boot = wait_contact(cfgs[0].data_dir, procs[0])
        for i in range(1, 3):
            cfgs.append(node_config(demo, i, [boot]))
            cfgs[i].overlap = True
            procs.append(start_node(cfgs[i]))
        assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # by its own PID, via the Popen handle
            p.wait(timeout=30)
    results = [json.loads(c.result_file.read_text()) for c in cfgs if c.result_file]
    by_round: dict[int, set[str]] = {}
    for r in results:
        assert r["rounds"] == 4
        assert [h["round"] for h in r["history"]] == [1, 2, 3, 4]
        for h in r["history"]:
            by_round.setdefault(h["round"], set()).add(h["model_hash"])
    assert all(len(v) == 1 for v in by_round.values()), by_round
    assert len({r["final_model_hash"] for r in results}) == 1
    # the swarm learned: the averaged model moved away from the initial one each round
    assert len({next(iter(v)) for v in by_round.values()}) == 4
