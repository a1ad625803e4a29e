"""Chaos suite: 8 wan hosts (100 Mbit/s, 50 ms RTT, 1% loss on every link, so every
scenario also runs under loss) train one model with real ``shoal train`` processes,
with the ledger on: one dev chain (``shoal chain``) in the switch namespace that every
host reaches, the run created and every node's key admitted before it starts.

After each scenario: (a) every live peer holds the same model; (b) every live peer
holds the same feed heads for every peer's feed, killed peers' included; (c) on-chain
anchors only move forward, and each anchored round's model hash is what its peers
recorded; (d) nothing is left (processes, namespaces, rules). See chaos_ledger.py.

Run: ``sudo .venv/bin/pytest -m chaos tests/testbed``. Skips without root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testbed import applier
from shoal.testbed.swarm import (
    ChaosRun,
    assert_no_rollback,
    hashes_by_round,
    progress_round,
    result,
    split_rounds,
)
from tests.testbed.chaos_ledger import ChaosChain, check_ledger
from tests.testbed.conftest import Factory

# Generous for a loaded 2-core machine, but bounded: 8 trainers + the chain share it.
pytestmark = [pytest.mark.chaos, pytest.mark.testbed, pytest.mark.timeout(1500)]

HOSTS = [f"h{i}" for i in range(8)]
EXIT_WAIT_S = 900  # every trainer's last round, then its bounded ledger settle (30 s)
ROUND_WAIT_S = 400


@pytest.fixture
def chaos(testnet: Factory, tmp_path: Path) -> Iterator[ChaosRun]:
    run = ChaosRun(testnet(8, "wan"), tmp_path)
    yield run
    run.close()
    for h in HOSTS:  # nothing of the run outlives it inside the testbed either
        assert applier.workload_pids(run.net, h) == []


@pytest.fixture
def chain(chaos: ChaosRun, tmp_path: Path) -> Iterator[ChaosChain]:
    """The run's chain, with every host's first data dir admitted."""
    c = ChaosChain.start(chaos.net.name, tmp_path / "chain")
    try:
        c.setup_run([chaos.config(h).data_dir for h in HOSTS])
        yield c
    finally:
        chaos.close()  # the trainers first: they may be waiting on the chain
        c.close()
        assert applier.netns_pids(c.switch_ns) == []


def _report(name: str, summary: dict[str, Any]) -> None:
    print(f"chaos-ledger {name}: {json.dumps(summary)}")  # shown with -s / -rP


def test_sigkill_half_mid_round_then_restart(chaos: ChaosRun, chain: ChaosChain) -> None:
    # a restarted node comes back with a fresh data dir, so a new key: admit those too
    chain.admit([chaos.config(h, life=1).data_dir for h in HOSTS[4:]])
    cfgs = chaos.start_all(HOSTS)
    chaos.wait_round(cfgs["h0"], 2, ROUND_WAIT_S)
    for h in HOSTS[4:]:
        applier.kill_host(chaos.net.name, h)
        assert chaos.procs[h].wait(timeout=10) < 0
    restarted = {h: chaos.start(h, life=1) for h in HOSTS[4:]}
    codes = chaos.wait_exit(HOSTS, EXIT_WAIT_S)
    assert codes == dict.fromkeys(HOSTS, 0), codes
    survivors = [result(cfgs[h]) for h in HOSTS[:4]]
    rejoined = [result(restarted[h]) for h in HOSTS[4:]]
    for r in survivors + rejoined:
        assert r["rounds"] == chaos.rounds
        assert_no_rollback(r)
    assert all(r["first_round"] >= 2 for r in rejoined), [r["first_round"] for r in rejoined]
    by_round = hashes_by_round(survivors + rejoined)
    # once the restarted peers are back in, every round ends with one model everywhere
    back = max(r["history"][0]["round"] for r in rejoined)
    assert all(len(by_round[r]) == 1 for r in range(back, chaos.rounds + 1)), by_round
    assert len({r["final_model_hash"] for r in survivors + rejoined}) == 1
    live = {h: cfgs[h].data_dir for h in HOSTS[:4]} | {h: restarted[h].data_dir for h in HOSTS[4:]}
    results = dict(zip(HOSTS, survivors + rejoined, strict=True))
    dead = {h: cfgs[h].data_dir for h in HOSTS[4:]}  # the SIGKILLed first lives
    _report("sigkill", check_ledger(chain, live, results, dead))


def test_four_four_partition_for_rounds_then_heal(chaos: ChaosRun, chain: ChaosChain) -> None:
    chaos.rounds = 9
    cfgs = chaos.start_all(HOSTS)
    chaos.wait_round(cfgs["h0"], 1, ROUND_WAIT_S)
    cut_at = progress_round(cfgs["h0"])
    applier.partition(chaos.net.name, [HOSTS[:4], HOSTS[4:]])
    # both sides keep training on their own for several rounds (both still reach the
    # chain, as both halves of a real split still see a public chain)
    chaos.wait_round(cfgs["h0"], cut_at + 3, ROUND_WAIT_S)
    chaos.wait_round(cfgs["h7"], cut_at + 3, ROUND_WAIT_S)
    applier.heal(chaos.net.name)
    codes = chaos.wait_exit(HOSTS, EXIT_WAIT_S)
    assert codes == dict.fromkeys(HOSTS, 0), codes
    results = [result(cfgs[h]) for h in HOSTS]
    for r in results:
        assert r["rounds"] == chaos.rounds
        assert_no_rollback(r)
    by_round = hashes_by_round(results)
    # during the cut the sides trained apart (different models); after heal every
    # peer converges on one model
    cut_rounds = range(cut_at + 2, cut_at + 4)
    assert all(len(by_round[r]) >= 2 for r in cut_rounds), by_round
    assert len({r["final_model_hash"] for r in results}) == 1, by_round
    # the last round ends on one model once the vote has run (a peer that averaged it
    # alone adopts the swarm's state in converge(); a split last round failed this in
    # CI, and under load here the cut lasted to round 6, leaving few rounds after heal)
    assert len(hashes_by_round(results, settled=True)[chaos.rounds]) == 1, split_rounds(results)
    summary = check_ledger(
        chain, {h: cfgs[h].data_dir for h in HOSTS}, dict(zip(HOSTS, results, strict=True))
    )
    _report("partition", summary)


def test_slow_host_and_late_joiner(chaos: ChaosRun, chain: ChaosChain) -> None:
    """h7 has a 10x slower link (10 Mbit/s both ways) throughout; h6 joins after
    round 1. Rounds still close, the slow host keeps up, the joiner syncs and joins."""
    # 10 rounds, joiner after round 1: a joiner waits for the round in progress to end
    # before it syncs, and under load a round the slow host lags in runs to its deadline
    # (seen: synced at round 5 of 6). With fast rounds it may sync just as a round
    # closes, miss that round's group and spend ~20 s on leader tries before it
    # averages alone and catches up (seen: 4 rounds of 5 s missed that way, 8 in all).
    chaos.rounds = 10
    # 7 hosts start together: each waits for the other 6 (not for h6, which comes
    # later), so h0 does not train its first rounds alone while the others start up.
    chaos.peers = 7
    applier.shape(chaos.net.name, "h7", rate_mbit=10.0)
    cfgs = chaos.start_all([*HOSTS[:6], "h7"])
    chaos.wait_round(cfgs["h0"], 1, ROUND_WAIT_S)
    cfgs["h6"] = chaos.start("h6")
    codes = chaos.wait_exit(HOSTS, EXIT_WAIT_S)
    assert codes == dict.fromkeys(HOSTS, 0), codes
    results = {h: result(cfgs[h]) for h in HOSTS}
    for r in results.values():
        assert r["rounds"] == chaos.rounds
        assert_no_rollback(r)
    joiner = results["h6"]
    assert joiner["first_round"] >= 1, joiner["first_round"]
    assert joiner["history"], "the joiner synced but never averaged"
    slow = results["h7"]["history"]
    assert len(slow) >= chaos.rounds - 1, slow  # took part, was not left behind
    # The joiner trains with the swarm: it averaged in a group with most of the swarm
    # and got the model most peers hold. (Any peer may finish a round alone under load
    # and catch up by state sync, so not every round needs to hold one hash.)
    held = {
        rnd: [e["model_hash"] for r in results.values() for e in r["history"] if e["round"] == rnd]
        for rnd in range(1, chaos.rounds + 1)
    }
    with_swarm = [
        e
        for e in joiner["history"]
        if e["group_size"] > len(HOSTS) // 2
        and held[e["round"]].count(e["model_hash"]) > len(HOSTS) // 2
    ]
    assert with_swarm, (joiner["history"], held)
    assert len({r["final_model_hash"] for r in results.values()}) == 1
    _report("slow+joiner", check_ledger(chain, {h: cfgs[h].data_dir for h in HOSTS}, results))
