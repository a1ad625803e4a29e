"""A peer the chain has not admitted is refused from the admitted peers' groups:
real node processes, a `shoal chain` process, two admitted peers and one outsider."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shoal.identity import Identity
from shoal.ledger.demo_setup import setup_demo_ledger
from shoal.training.demo import DemoConfig, node_config, start_node, wait_contact

# The outsider may wait out all-reduce timeouts; the whole swarm gets this long.
SWARM_TIMEOUT_S = 300.0


@pytest.mark.slow
def test_unadmitted_peer_is_left_out_of_admitted_groups(tmp_path: Path) -> None:
    cfg = DemoConfig(nodes=3, rounds=2, inner_steps=4, batch_size=4, out=tmp_path,
                     deadline_s=15.0)  # fmt: skip
    dirs = [node_config(cfg, i, []).data_dir for i in range(3)]
    chain = setup_demo_ledger(tmp_path, dirs[:2], "demo")  # node2 is never admitted
    procs: list[subprocess.Popen[bytes]] = []
    try:
        c0 = node_config(cfg, 0, [])
        procs.append(start_node(c0))
        boot = wait_contact(c0.data_dir, procs[0])
        for i in (1, 2):
            procs.append(start_node(node_config(cfg, i, [boot])))
        deadline = time.monotonic() + SWARM_TIMEOUT_S
        while any(p.poll() is None for p in procs[:2]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [p.returncode for p in procs[:2]] == [0, 0], "admitted nodes did not finish"
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        chain.stop()
    results = [json.loads((d / "result.json").read_text()) for d in dirs[:2]]
    # from its key: node.json is gone once the outsider has exited cleanly
    outsider = Identity.load_or_create(dirs[2] / "node.key").peer_id
    outsider_id = str(outsider)
    for r in results:
        assert all(h["group_size"] == 2 for h in r["history"]), r["history"]
    logs = "".join((d / "node.log").read_text() for d in dirs[:2])
    assert "not admitted on-chain" in logs
    # head votes count admitted publishers only: no admitted peer takes the outsider's
    # state (state sync, catch-up and converge all read heads through the admission check)
    assert "ignoring heads of peers not admitted on-chain" in logs
    synced = [line for line in logs.splitlines() if "synced state of round" in line]
    assert not [line for line in synced if outsider.short() in line], synced
    anchored = sorted({n for r in results for n in r["ledger"]["anchored_rounds"]})
    assert anchored == [0, 1]
    assert outsider_id.startswith("sh1")
