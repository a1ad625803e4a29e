"""SecAgg among real processes: `shoal train` nodes with secure_aggregation on, a
peer SIGKILLed between its shares and its masked input, hostile peer processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shoal.secagg.group_driver import DEFAULT_CLIP, frac_bits_for
from shoal.training.demo import DemoConfig, node_config, start_node, wait_contact
from tests.process_helpers import wait_round
from tests.secagg.net_helpers import inputs, weighted_mean

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
K = 20000


def _peer(d: Path, i: int, n: int, *extra: str) -> subprocess.Popen[bytes]:
    logf = open(d / f"peer{i}.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tests.secagg.net_peer", "--dir", str(d), "--index", str(i),
            "--peers", str(n), "--numel", str(K), *extra]  # fmt: skip
    p = subprocess.Popen(args, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env=env)
    logf.close()
    return p


def _wait_for(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        for p in procs:
            assert p.poll() is None or p.returncode == 0, "a peer process failed"
        time.sleep(0.1)


def _result(d: Path, i: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((d / f"peer{i}.json").read_text())
    return out


def _check_mean(d: Path, n: int, honest: list[int], total_n: int) -> list[dict[str, Any]]:
    """Every honest peer holds the same average, equal to the weighted mean of the
    honest peers' inputs within the fixed-point tolerance."""
    xs = inputs(total_n, K)
    ws = [10.0 + i for i in range(total_n)]
    results = [_result(d, i) for i in honest]
    assert all("error" not in r for r in results), results
    avgs = [torch.load(d / f"peer{i}.avg.pt") for i in honest]
    assert all(torch.equal(avgs[0], a) for a in avgs[1:])
    exp = weighted_mean([xs[i] for i in honest], [ws[i] for i in honest])
    omega = sum(ws[i] for i in honest) / sum(ws)
    tol = n * 2.0 ** -(frac_bits_for(n, DEFAULT_CLIP) + 1) / omega + 1e-7
    assert float((avgs[0].double() - exp).abs().max()) <= tol
    assert results[0]["total_weight"] == sum(ws[i] for i in honest)
    return results


def test_peer_sigkilled_between_shares_and_masked_input_is_recovered(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    n = 4  # threshold 3: one dropout is recoverable
    procs.extend(_peer(tmp_path, i, n, "--pause-at", "2") for i in range(n))
    deadline = time.monotonic() + 120
    paused = None
    while paused is None:
        assert time.monotonic() < deadline, "no peer reached the pause"
        found = list(tmp_path.glob("peer*.paused"))
        paused = int(found[0].name[4:-7]) if found else None
        time.sleep(0.1)
    os.kill(procs[paused].pid, signal.SIGKILL)  # by its own PID
    procs[paused].wait(timeout=10)
    others = [i for i in range(n) if i != paused]
    for i in others:
        assert procs[i].wait(timeout=120) == 0, (tmp_path / f"peer{i}.log").read_text()[-2000:]
    results = _check_mean(tmp_path, n, others, n)
    killed = _result_peer_id(tmp_path, paused)
    for r in results:
        assert killed not in r["contributors"] and killed in r["excluded"]
        assert len(r["contributors"]) == 3


def _result_peer_id(d: Path, i: int) -> str:
    text = (d / f"peer{i}.contact").read_text().split()[0]
    return text.split("@", 1)[0]


def test_hostile_peer_processes_are_left_out_with_reasons(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """5 processes, threshold 3: the peers at group positions 3 and 4 forge their advert
    signature and send more bytes than they announced; the other three finish."""
    n = 5
    extra = ["--hostile", "3=forged_signature", "--hostile", "4=more_bytes"]
    procs.extend(_peer(tmp_path, i, n, *extra) for i in range(n))
    for i, p in enumerate(procs):
        assert p.wait(timeout=180) == 0, (tmp_path / f"peer{i}.log").read_text()[-2000:]
    pos = {i: _result(tmp_path, i)["position"] for i in range(n)}
    honest = [i for i in range(n) if pos[i] < 3]
    results = _check_mean(tmp_path, n, honest, n)
    by_pos = {pos[i]: _result_peer_id(tmp_path, i) for i in range(n)}
    collector = next(r for r in results if r["position"] == 0)
    why = collector["excluded"]  # the detailed reasons; members get the status text
    assert "signature does not verify" in why[by_pos[3]]
    assert "masked stream broke off" in why[by_pos[4]]
    for r in (r for r in results if r["position"] != 0):
        assert "refused" in r["excluded"][by_pos[3]]
        assert "broke off" in r["excluded"][by_pos[4]]


def test_shoal_train_nodes_with_secure_aggregation_end_rounds_identical(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=3, rounds=3, inner_steps=8, out=tmp_path, deadline_s=20)
    cfgs = [node_config(demo, 0, [])]
    cfgs[0].secure_aggregation = True
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    for i in range(1, 3):
        cfgs.append(node_config(demo, i, [boot]))
        cfgs[i].secure_aggregation = True
        procs.append(start_node(cfgs[i]))
    for c, p in zip(cfgs, procs, strict=True):
        assert p.wait(timeout=400) == 0, (c.data_dir / "node.log").read_text()[-3000:]
    results = [json.loads(c.result_file.read_text()) for c in cfgs]  # type: ignore[union-attr]
    assert all(r["rounds"] == 3 for r in results)
    by_round: dict[int, set[str]] = {}
    for r in results:
        for h in r["history"]:
            by_round.setdefault(h["round"], set()).add(h["model_hash"])
    assert all(len(v) == 1 for v in by_round.values()), by_round
    assert len({r["final_model_hash"] for r in results}) == 1
    logs = [(c.data_dir / "node.log").read_text() for c in cfgs]
    # every round went through SecAgg: its collector logs the sum it unmasked
    assert sum(log.count("summed 3 of 3 masked inputs") for log in logs) == 3
    assert "secure_aggregation = true" in (cfgs[0].data_dir / "run.toml").read_text()


def test_shoal_train_with_secagg_survives_a_sigkilled_node(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    demo = DemoConfig(nodes=4, rounds=5, inner_steps=8, out=tmp_path, deadline_s=8)
    cfgs = [node_config(demo, 0, [])]
    cfgs[0].secure_aggregation = True
    procs.append(start_node(cfgs[0]))
    boot = wait_contact(cfgs[0].data_dir, procs[0])
    for i in range(1, 4):
        cfgs.append(node_config(demo, i, [boot]))
        cfgs[i].secure_aggregation = True
        procs.append(start_node(cfgs[i]))
    wait_round(cfgs[3], 2, 240)
    os.kill(procs[3].pid, signal.SIGKILL)  # by its own PID
    procs[3].wait(timeout=10)
    for c, p in zip(cfgs[:3], procs[:3], strict=True):
        assert p.wait(timeout=400) == 0, (c.data_dir / "node.log").read_text()[-3000:]
    results = [json.loads(c.result_file.read_text()) for c in cfgs[:3]]  # type: ignore[union-attr]
    assert all(r["rounds"] == 5 for r in results)
    by_round: dict[int, set[str]] = {}
    for r in results:
        for h in r["history"]:
            by_round.setdefault(h["round"], set()).add(h["model_hash"])
    assert all(len(by_round[r]) == 1 for r in range(1, 6)), by_round
    last = next(h for h in results[0]["history"] if h["round"] == 5)
    assert last["group_size"] == 3  # later rounds formed without the dead node
