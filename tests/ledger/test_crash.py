"""A real SIGKILL during appends loses no acknowledged entry and leaves the feed readable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from shoal.ledger.feed import FeedStore, check_feed

from .helpers import ident

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(db: Path, acks_before_kill: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.crash_writer", str(db)],
        cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < acks_before_kill:
            line = proc.stdout.readline()
            assert line, f"writer died early with {proc.poll()}"
            acked = int(line)
            assert time.monotonic() < deadline
        # Busy appending right now: the kill lands inside some append.
        os.kill(proc.pid, signal.SIGKILL)
        # Lines already written before the kill are acknowledged too.
        for line in proc.stdout:
            acked = max(acked, int(line))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_sigkill_mid_append_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "feed.sqlite"
    rng = random.Random(7)
    me = ident(42).peer_id
    for _ in range(4):
        acked = _run_and_kill(db, rng.randint(5, 40))
        with FeedStore(db) as store:
            entries = store.entries(me)
            check_feed(entries)
            assert entries, "the feed is empty after a crash"
            assert entries[-1].seq >= acked, f"acknowledged seq {acked} was lost"
