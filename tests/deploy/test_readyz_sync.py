"""``/readyz`` of a late joiner: 503 until it has downloaded the run's state, then 200.

Real ``shoal train`` processes on loopback. The joiner arrives while the swarm is past
round 1, so it must wait for a round boundary and download the (hash-checked) state
before it can train; the probe must not say ready before that.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.training.demo import DemoConfig, node_config, start_node, wait_contact
from shoal.training.run_config import dump_run_config
from tests.deploy.probes import get, shoal, wait_addr
from tests.process_helpers import wait_round

pytestmark = pytest.mark.slow

POLL_S = 0.05


def _poll_until_exit(addr: str, proc: subprocess.Popen[bytes], timeout: float) -> list[Any]:
    """Every /readyz answer (status, body), plus one /healthz while not ready."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            status, body = get(addr, "/readyz", timeout=2)
            if status == 503 and not any(s[0] == "healthz" for s in seen):
                seen.append(("healthz", *get(addr, "/healthz", timeout=2)))
        except OSError:
            time.sleep(POLL_S)  # the node is shutting down at the end of the run
            continue
        seen.append((status, body))
        time.sleep(POLL_S)
    return seen


def test_late_joiner_ready_only_after_state_sync(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=2, rounds=5, inner_steps=8, out=tmp_path, deadline_s=8)
    cfgs = [node_config(demo, 0, [])]
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    cfgs.append(node_config(demo, 1, [boot]))
    procs.append(start_node(cfgs[1]))
    wait_round(cfgs[0], 1, 180)

    late = node_config(DemoConfig(nodes=3, rounds=5, inner_steps=8, out=tmp_path), 2, [boot])
    late.deadline_s = 8
    late.data_dir.mkdir(parents=True)
    (late.data_dir / "run.toml").write_text(dump_run_config(late))
    joiner = shoal(
        "train", "--config", str(late.data_dir / "run.toml"), "--health-listen", "127.0.0.1:0",
        log=late.data_dir / "node.log",
    )  # fmt: skip
    procs.append(joiner)
    addr = wait_addr(late.data_dir, joiner)
    seen = _poll_until_exit(addr, joiner, 300)
    for p in procs:
        assert p.wait(timeout=300) == 0
    result = json.loads(late.result_file.read_text())  # type: ignore[union-attr]

    probes = [s for s in seen if s[0] != "healthz"]
    statuses = [s for s, _ in probes]
    assert 503 in statuses and 200 in statuses, statuses
    first_ok = statuses.index(200)
    # never ready, then ready for good: no 503 once it has synced
    assert set(statuses[:first_ok]) == {503}
    assert set(statuses[first_ok:]) == {200}, statuses[first_ok:]
    stages = {b["stage"] for _, b in probes[:first_ok]}
    assert "syncing" in stages and stages <= {"joining", "syncing"}, stages
    ready_body = probes[first_ok][1]
    assert ready_body["stage"] == "training"
    # It was ready at the round it downloaded, not at round 0 with its own fresh model.
    assert result["first_round"] >= 1
    assert ready_body["round"] == result["first_round"]
    healthz = [s for s in seen if s[0] == "healthz"]
    assert healthz and healthz[0][1] == 200 and healthz[0][2]["status"] == "alive"
    # and it then trained with the swarm on that state
    assert result["rounds"] == 5 and result["history"]
