"""Fixtures and waits shared by the tests that start real node processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shoal.training.demo import last_progress


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end is killed by its own PID."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()  # by its own PID, via the Popen handle
        p.wait(timeout=30)


def wait_round(cfg: Any, rnd: int, timeout: float) -> None:
    """Wait until the node of RunConfig ``cfg`` reports round ``rnd`` in its progress file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_progress(cfg.progress_file).get("round", -1) >= rnd:
            return
        time.sleep(0.2)
    raise AssertionError(f"{cfg.data_dir} never reached round {rnd}")
