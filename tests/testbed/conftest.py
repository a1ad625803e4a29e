"""Fixtures for live testbed tests: root and kernel features, or a skip that says why;
every testnet a test creates is torn down afterwards, even when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.testbed import applier, kernel, plan
from shoal.testbed.profiles import LinkProfile, get_profile
from shoal.testbed.state import TestnetState

SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, nftables)"
    feats = kernel.probe()
    missing = kernel.missing_required(feats)
    if missing:
        return "kernel/tools lack: " + ", ".join(f"{f.name} ({f.detail})" for f in missing)
    if kernel.delay_method(feats) is None:
        return "no netem and no NFQUEUE (iptables NFQUEUE + NetfilterQueue package)"
    return None


_REASON: list[str | None] = []


def live_reason() -> str | None:
    if not _REASON:
        _REASON.append(_unavailable())
    return _REASON[0]


@pytest.fixture
def live() -> None:
    reason = live_reason()
    if reason is not None:
        pytest.skip(reason)


Factory = Callable[..., TestnetState]


def leftover_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions ``marker`` (a test's tmp dir:
    every trainer, chain and relay a test starts names a path under it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue  # exited while we looked
        if marker.encode() in cmd and not zombie:
            out.append(int(entry))
    return out


def assert_nothing_left(st: TestnetState, marker: str) -> None:
    """After ``down``: no namespace, no delay holder, no process of the test, and no
    testbed rule in the root namespace (the testbed never writes one there)."""
    leftover = [ns for ns in applier.list_netns() if ns.startswith(f"shoal-{st.name}-")]
    assert not leftover, leftover
    delayers = [h.delayer_pid for h in st.hosts if h.delayer_pid]
    assert not [p for p in delayers if os.path.exists(f"/proc/{p}") and applier._is_delayer(p)]
    assert leftover_processes(marker) == []
    tables = applier.run(["nft", "list", "tables"])
    assert plan.NFT_TABLE not in tables, tables
    ipt = st.iptables or "iptables-legacy"
    if shutil.which(ipt):
        assert "NFQUEUE" not in applier.run([ipt, "-w", "-S", "INPUT"])


@pytest.fixture
def testnet(live: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Factory]:
    """``testnet(hosts, profile)`` builds a testnet with a name unique to this test."""
    monkeypatch.setenv("SHOAL_TESTNET_STATE_DIR", str(tmp_path / "state"))
    names: list[str] = []
    nets: list[TestnetState] = []

    def make(hosts: int = 2, profile: str | LinkProfile = "wan") -> TestnetState:
        name = f"t{os.getpid() % 10000}{len(names)}"
        names.append(name)
        prof = get_profile(profile) if isinstance(profile, str) else profile
        st = applier.up(name, hosts, prof)
        nets.append(st)
        return st

    yield make
    for name in names:
        applier.down(name)
    for st in nets:
        assert_nothing_left(st, str(tmp_path))


def run_in(st: TestnetState, host: str, *cmd: str, timeout: float = 60) -> str:
    """Run a command in HOST through the CLI (``shoal testnet exec``); its stdout."""
    p = subprocess.run(
        [*SHOAL, "testnet", "exec", host, "--name", st.name, "--", *cmd],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ},
    )  # fmt: skip
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout
