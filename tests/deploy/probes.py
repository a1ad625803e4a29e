"""Talking to a node's probe endpoints from tests: plain sockets, bounded waits."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoal.runtime.health import read_health_addr


def get(addr: str, path: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``path``; (status, JSON body). Raises OSError when nothing listens."""
    host, _, port = addr.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def wait_addr(data_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        addr = read_health_addr(data_dir)
        if addr is not None:
            return addr
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode} before serving probes")
        time.sleep(0.05)
    raise AssertionError(f"no health.json in {data_dir} after {timeout}s")


def wait_status(addr: str, path: str, want: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = get(addr, path)
        except OSError as exc:
            last = exc
        else:
            if status == want:
                return body
            last = (status, body)
        time.sleep(0.1)
    raise AssertionError(f"{path} never returned {want} within {timeout}s; last: {last}")


def shoal(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``shoal ARGS`` as a child process logging to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        )
