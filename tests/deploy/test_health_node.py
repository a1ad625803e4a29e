"""``shoal node start --health-listen``: real processes, real sockets, SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from shoal.identity import Identity
from tests.deploy.probes import get, shoal, wait_addr, wait_status

pytestmark = pytest.mark.slow

# SWIM: 1 s period, suspicion over a few periods; a dead only peer is noticed well
# within this, and the bound still fails if readiness never drops.
NOT_READY_WITHIN_S = 40.0


def _start(tmp: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    d = tmp / name
    d.mkdir(exist_ok=True)
    return shoal(
        "node", "start", "--data-dir", str(d), "--health-listen", "127.0.0.1:0", *extra,
        log=tmp / f"{name}.log",
    )  # fmt: skip


def _contact(data_dir: Path) -> str:
    return str(json.loads((data_dir / "node.json").read_text())["contact"])


def test_seed_ready_joiner_waits_for_a_peer_and_drops_when_it_dies(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    procs.append(_start(tmp_path, "seed"))
    seed_addr = wait_addr(tmp_path / "seed", procs[0])
    assert wait_status(seed_addr, "/readyz", 200, 30)["stage"] == "joined"
    status, body = get(seed_addr, "/healthz")
    assert status == 200 and body["status"] == "alive"

    # A joiner whose bootstrap peer does not exist is alive but not ready.
    nobody = Identity.generate().peer_id
    procs.append(_start(tmp_path, "lonely", "--bootstrap", f"{nobody}@127.0.0.1:9"))
    lonely = wait_addr(tmp_path / "lonely", procs[1])
    time.sleep(3)  # several SWIM periods: it really cannot join
    assert get(lonely, "/healthz")[0] == 200
    status, body = get(lonely, "/readyz")
    assert (status, body["stage"], body["peers_alive"]) == (503, "joining", 0)

    # A joiner with a real bootstrap becomes ready once it sees the seed alive.
    procs.append(_start(tmp_path, "joiner", "--bootstrap", _contact(tmp_path / "seed")))
    joiner = wait_addr(tmp_path / "joiner", procs[2])
    body = wait_status(joiner, "/readyz", 200, 30)
    assert body["peers_alive"] >= 1
    metrics = get(joiner, "/metrics")[1]["text"]
    assert "shoal_ready 1" in metrics and "shoal_peers_alive 1" in metrics

    # SIGKILL the seed: its probes stop answering at all, and the joiner, now alone,
    # is no longer ready (but still alive).
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(timeout=10)
    with pytest.raises(OSError):
        get(seed_addr, "/healthz", timeout=2)
    body = wait_status(joiner, "/readyz", 503, NOT_READY_WITHIN_S)
    assert body["stage"] == "joining"
    assert get(joiner, "/healthz")[0] == 200

    # SIGTERM: a clean exit that removes the address file.
    procs[2].send_signal(signal.SIGTERM)
    assert procs[2].wait(timeout=30) == 0
    assert not (tmp_path / "joiner" / "health.json").exists()
