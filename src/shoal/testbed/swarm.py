"""Real ``shoal train`` processes inside testbed hosts (the chaos suite, benchmarks).

Each peer is started with ``shoal testnet exec hN -- python -m shoal.cli.main train``,
so its PID is the trainer's own and ``shoal testnet kill`` / ``down`` end it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.testbed.state import TestnetState
from shoal.training.run_config import RunConfig, dump_run_config

P2P_PORT = 7000
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


@dataclass
class ChaosRun:
    net: TestnetState
    out: Path
    rounds: int = 6
    inner_steps: int = 6
    deadline_s: float = 20.0
    peers: int = 8
    # the chaos suite's tiny model; benchmarks pass {} for the demo's model
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
    )
    batch_size: int = 8
    block_size: int = 32
    overlap: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    boot: str = ""

    def config(self, host: str, life: int = 0) -> RunConfig:
        i = int(host[1:])
        addr = self.net.host(host).addr
        d = self.out / f"{host}-{life}"
        return RunConfig(
            name="chaos", data_dir=d, rounds=self.rounds, inner_steps=self.inner_steps,
            expected_peers=self.peers, deadline_s=self.deadline_s, compression="int8",
            model_kwargs=self.model_kwargs, batch_size=self.batch_size,
            block_size=self.block_size, overlap=self.overlap, rank=i, world=len(self.net.hosts),
            listen=f"{addr}:{P2P_PORT}", bootstrap=[self.boot] if self.boot else [],
            progress_file=d / "progress.jsonl", result_file=d / "result.json",
        )  # fmt: skip

    def start(self, host: str, life: int = 0) -> RunConfig:
        cfg = self.config(host, life)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.data_dir / "run.toml"
        path.write_text(dump_run_config(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 8 trainers share the cores
        with open(cfg.data_dir / "node.log", "ab") as logf:
            self.procs[host] = subprocess.Popen(
                [*SHOAL, "testnet", "exec", host, "--name", self.net.name, "--",
                 sys.executable, "-m", "shoal.cli.main", "train", "--config", str(path)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        return cfg

    def start_all(self, hosts: list[str]) -> dict[str, RunConfig]:
        cfgs = {hosts[0]: self.start(hosts[0])}
        self.boot = self.wait_contact(cfgs[hosts[0]])
        for h in hosts[1:]:
            cfgs[h] = self.start(h)
        return cfgs

    def wait_contact(self, cfg: RunConfig, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return str(json.loads((cfg.data_dir / "node.json").read_text())["contact"])
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.1)
        raise TimeoutError(f"no contact from {cfg.data_dir}")

    def wait_round(self, cfg: RunConfig, rnd: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if progress_round(cfg) >= rnd:
                return
            time.sleep(0.2)
        raise AssertionError(f"{cfg.data_dir} never reached round {rnd}")

    def wait_exit(self, hosts: list[str], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for h in hosts:
            codes[h] = self.procs[h].wait(timeout=max(1.0, deadline - time.monotonic()))
        return codes

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()  # by its own PID, via the Popen handle
            p.wait(timeout=30)


def progress_round(cfg: RunConfig) -> int:
    path = cfg.progress_file
    if path is None or not path.exists():
        return -1
    lines = path.read_text().strip().splitlines()
    try:
        return int(json.loads(lines[-1])["round"]) if lines else -1
    except (json.JSONDecodeError, KeyError):
        return -1


def result(cfg: RunConfig) -> dict[str, Any]:
    assert cfg.result_file is not None
    out: dict[str, Any] = json.loads(cfg.result_file.read_text())
    return out


def assert_no_rollback(res: dict[str, Any]) -> None:
    """Acknowledged rounds only move forward: never repeated, never back. (A peer that
    fell behind may skip rounds by downloading the swarm's newer state.)"""
    rounds = [h["round"] for h in res["history"]]
    assert all(b > a for a, b in itertools.pairwise(rounds)), rounds


def hashes_by_round(results: list[dict[str, Any]], settled: bool = False) -> dict[int, set[str]]:
    """Round -> the model hashes the peers computed for it. ``settled``: the hashes
    they went on from instead, after the head vote (a peer that averaged alone or sat
    across a partition adopts the swarm's state; RoundLog.adopted_hash)."""
    out: dict[int, set[str]] = {}
    for r in results:
        for h in r["history"]:
            got = (h.get("adopted_hash") if settled else None) or h["model_hash"]
            out.setdefault(h["round"], set()).add(got)
    return out


def split_rounds(results: list[dict[str, Any]]) -> dict[int, list[tuple[str, int]]]:
    """Rounds in which the peers computed more than one model, each with every peer's
    (hash prefix, group size): a peer that averaged alone shows as group size 1."""
    split = {r for r, hs in hashes_by_round(results).items() if len(hs) > 1}
    return {
        rnd: [(h["model_hash"][:8], h["group_size"]) for r in results for h in r["history"]
              if h["round"] == rnd]
        for rnd in sorted(split)
    }  # fmt: skip
