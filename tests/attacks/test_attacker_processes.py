"""Attackers as real peer processes, pushing forged updates through the real all-reduce.

Six processes on loopback (shoal.attacks.swarm_peer): four honest, one scaling its
update x100, one claiming the wrong model version. Once with the median at the shard
owners and once with the plain mean, side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.attacks.robustness import RunConfig, run

pytestmark = pytest.mark.slow

PEERS = 6
ROUNDS = 10
ATTACKERS = {4: ["--attack", "scale"], 5: ["--attack", "wrong_version"]}


def _swarm(d: Path, aggregator: str) -> list[dict[str, Any]]:
    d.mkdir()
    procs = []
    try:
        for i in range(PEERS):
            args = [
                sys.executable, "-m", "shoal.attacks.swarm_peer", "--dir", str(d),
                "--index", str(i), "--peers", str(PEERS), "--attackers", "2",
                "--rounds", str(ROUNDS), "--aggregator", aggregator, *ATTACKERS.get(i, []),
            ]  # fmt: skip
            log = open(d / f"peer{i}.log", "wb")  # noqa: SIM115 - handed to the child
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for i, p in enumerate(procs):
            rc = p.wait(timeout=240)
            assert rc == 0, (d / f"peer{i}.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # by its own PID, via the Popen handle
                p.wait()
    return [json.loads((d / f"peer{i}.json").read_text()) for i in range(PEERS)]


def test_attacker_processes_median_vs_mean(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    clean = run(RunConfig(peers=PEERS, rounds=ROUNDS), "mean").final_loss
    robust = _swarm(tmp_path / "median", "median")
    plain = _swarm(tmp_path / "mean", "mean")
    for results in (robust, plain):
        assert len({r["model_hash"] for r in results}) == 1  # one model at every peer
        wrong = results[5]["peer_id"]
        for r in results[:5]:
            assert "model version" in r["excluded"].get(wrong, ""), r["excluded"]
    robust_loss = robust[0]["final_loss"]
    mean_loss = plain[0]["final_loss"]
    assert robust_loss <= 1.05 * clean, (robust_loss, clean)
    assert mean_loss >= 1.5 * clean, (mean_loss, clean)
