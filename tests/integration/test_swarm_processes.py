"""Real node processes on loopback: discovery, DHT records, SIGKILL and restart."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.runtime.local_swarm import LocalSwarm

N = 8
# SWIM period 1 s, suspicion 4 periods; each dead node is probed by 7 peers. 20 s is a
# generous bound that still fails if detection is broken.
DEAD_WITHIN_S = 20.0
JOIN_WITHIN_S = 30.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    s = LocalSwarm(tmp_path_factory.mktemp("swarm"))
    try:
        s.start(N)
        yield s
    finally:
        s.close()
        assert not s.procs


def _ids(s: LocalSwarm) -> dict[int, str]:
    return {i: s.wait_info(i)["peer_id"] for i in s.procs}


def _wait(pred, timeout: float, step: float = 0.25) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def test_eight_nodes_find_each_other_from_one_bootstrap(swarm: LocalSwarm) -> None:
    ids = _ids(swarm)
    assert len(set(ids.values())) == N
    everyone = set(ids.values())

    def full() -> bool:
        return all(swarm.alive_view(i) == everyone - {ids[i]} for i in ids)

    _wait(full, JOIN_WITHIN_S)
    # the CLI sees the same thing, as JSON
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "peers", "--data-dir", str(swarm.data_dir(5)),
         "--json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert {r["peer_id"] for r in rows if r["state"] == "alive"} == everyone - {ids[5]}


def test_store_and_fetch_100_records(swarm: LocalSwarm) -> None:
    for k in range(100):
        r = swarm.request(k % N, {"cmd": "put", "key": f"rec-{k}", "value": f"value-{k}"})
        assert r["ok"] and r["stored"] >= 3, r
    for k in range(100):
        reader = (k * 3 + 1) % N
        r = swarm.request(reader, {"cmd": "get", "key": f"rec-{k}"})
        assert r["ok"], r
        assert [v["value"] for v in r["values"]] == [f"value-{k}"], (k, r)
    missing = swarm.request(2, {"cmd": "get", "key": "never-stored"})
    assert missing["ok"] and missing["values"] == []


def test_sigkilled_peer_declared_dead_then_taken_back(swarm: LocalSwarm) -> None:
    ids = _ids(swarm)
    victim = 6
    vid = ids[victim]
    others = [i for i in ids if i != victim]
    swarm.kill(victim, signal.SIGKILL)

    def states() -> dict[int, str | None]:
        res: dict[int, str | None] = {}
        for i in others:
            peers = swarm.request(i, {"cmd": "peers"})["peers"]
            res[i] = next((p["state"] for p in peers if p["peer_id"] == vid), None)
        return res

    took = _wait(lambda: all(s in ("dead", None) for s in states().values()), DEAD_WITHIN_S)
    assert took < DEAD_WITHIN_S
    # nobody live was wrongly declared dead meanwhile
    for i in others:
        assert swarm.alive_view(i) >= {ids[j] for j in others if j != i}

    # restart with the same key (same data dir) on a new port
    swarm.start_node(victim)
    info = swarm.wait_info(victim)
    assert info["peer_id"] == vid
    _wait(lambda: all(s == "alive" for s in states().values()), JOIN_WITHIN_S)
    everyone = set(ids.values())
    _wait(lambda: swarm.alive_view(victim) == everyone - {vid}, JOIN_WITHIN_S)


def test_unsafe_key_file_refused_with_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "n"
    d.mkdir()
    key = d / "node.key"
    key.write_bytes(b"\x01" * 32)
    key.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "node", "start", "--data-dir", str(d)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr
