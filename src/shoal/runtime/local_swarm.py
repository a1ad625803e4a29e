"""Start a swarm of real node processes on loopback (the demo and the tests use it).

Each node is a separate ``python -m shoal.cli.main node start`` process with its own
data directory. Processes are ended only by their own PID, and ``close`` always
reaps them, so nothing outlives the swarm.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shoal.runtime import control
from shoal.runtime.node import INFO_FILE

log = logging.getLogger(__name__)


class LocalSwarm:
    def __init__(self, root: Path, log_level: str = "INFO") -> None:
        self.root = Path(root)
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.bootstrap: str | None = None

    def data_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def start_node(self, i: int, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
        d = self.data_dir(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / INFO_FILE).unlink(missing_ok=True)
        args = [
            sys.executable, "-m", "shoal.cli.main", "node", "start",
            "--listen", "127.0.0.1:0", "--data-dir", str(d), "--log-level", self.log_level,
        ]  # fmt: skip
        if self.bootstrap is not None:
            args += ["--bootstrap", self.bootstrap]
        args += extra_args or []
        logf = open(d / "node.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        logf.close()
        self.procs[i] = proc
        return proc

    def wait_info(self, i: int, timeout: float = 30.0) -> dict[str, Any]:
        path = self.data_dir(i) / INFO_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"node {i} exited with {proc.returncode}; see {path.parent}/node.log"
                )
            if path.exists():
                try:
                    info: dict[str, Any] = json.loads(path.read_text())
                    return info
                except json.JSONDecodeError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"node {i} did not start within {timeout}s")

    def start(self, n: int) -> None:
        self.start_node(0)
        self.bootstrap = self.wait_info(0)["contact"]
        for i in range(1, n):
            self.start_node(i)
        for i in range(1, n):
            self.wait_info(i)

    def request(self, i: int, req: dict[str, Any], timeout: float = 70.0) -> dict[str, Any]:
        return control.request(self.data_dir(i), req, timeout)

    def alive_view(self, i: int) -> set[str]:
        peers = self.request(i, {"cmd": "peers"})["peers"]
        return {p["peer_id"] for p in peers if p["state"] == "alive"}

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(i)
        os.kill(proc.pid, sig)
        proc.wait(timeout=10)

    def close(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # by its own PID, via the Popen handle
                proc.wait()

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
