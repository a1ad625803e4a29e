"""Fixtures for live testbed tests: root and kernel features, or a skip that says why;
every testnet a test creates is torn down afterwards, even when the test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.testbed import applier, kernel
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


@pytest.fixture
def testnet(live: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Factory]:
    """``testnet(hosts, profile)`` builds a testnet with a name unique to this test."""
    monkeypatch.setenv("SHOAL_TESTNET_STATE_DIR", str(tmp_path / "state"))
    names: list[str] = []

    def make(hosts: int = 2, profile: str | LinkProfile = "wan") -> TestnetState:
        name = f"t{os.getpid() % 10000}{len(names)}"
        names.append(name)
        prof = get_profile(profile) if isinstance(profile, str) else profile
        return applier.up(name, hosts, prof)

    yield make
    for name in names:
        applier.down(name)
        leftover = [ns for ns in applier.list_netns() if ns.startswith(f"shoal-{name}-")]
        assert not leftover, leftover


def run_in(st: TestnetState, host: str, *cmd: str, timeout: float = 60) -> str:
    """Run a command in HOST through the CLI (``shoal testnet exec``); its stdout."""
    p = subprocess.run(
        [*SHOAL, "testnet", "exec", host, "--name", st.name, "--", *cmd],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ},
    )  # fmt: skip
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout
