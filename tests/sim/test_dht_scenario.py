"""The simulator drives the real cores deterministically."""

import io
import json
import subprocess
import sys

from shoal.sim.dht_scenario import DhtScenario, ScenarioConfig


def small(seed: int, **kw: float) -> ScenarioConfig:
    return ScenarioConfig(nodes=60, seed=seed, lookups=40, joins_per_s=50.0, settle_s=10.0, **kw)  # type: ignore[arg-type]


def test_same_seed_same_trace_different_seed_different() -> None:
    a = DhtScenario(small(7)).run()
    b = DhtScenario(small(7)).run()
    c = DhtScenario(small(8)).run()
    assert a["trace_sha256"] == b["trace_sha256"]
    assert a["messages_delivered"] == b["messages_delivered"]
    assert a["trace_sha256"] != c["trace_sha256"]


def test_trace_file_replays_byte_for_byte() -> None:
    f1, f2 = io.StringIO(), io.StringIO()
    DhtScenario(small(3), trace_file=f1).run()
    DhtScenario(small(3), trace_file=f2).run()
    assert f1.getvalue() == f2.getvalue()
    assert f1.getvalue().count("\n") > 1000


def test_scenario_measures_lookups_and_convergence() -> None:
    r = DhtScenario(small(5)).run()
    assert r["nodes"] == 60
    assert r["lookup_success"] >= 0.95
    assert 1 <= r["median_hops"] <= r["log2_n"]
    assert r["crashed"] == 6
    assert r["membership_converged"] is True
    assert r["false_dead_declarations"] == 0


def test_loss_and_crash_still_converge() -> None:
    r = DhtScenario(small(9, loss=0.05)).run()
    assert r["membership_converged"] is True
    assert r["lookup_success_after_crash"] >= 0.9


def test_cli_prints_required_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "sim", "dht", "--nodes", "40", "--seed", "2",
         "--lookups", "20", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    r = json.loads(out.stdout)
    required = (
        "nodes", "lookups", "lookup_success", "median_hops", "p99_hops",
        "membership_convergence_rounds", "trace_sha256", "wall_s", "peak_rss_mib",
    )  # fmt: skip
    for key in required:
        assert key in r, key
    assert r["nodes"] == 40


def test_cli_rejects_bad_arguments() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "sim", "dht", "--nodes", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "at least 2" in out.stderr
