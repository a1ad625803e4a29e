"""The local swarm demo: N ``shoal train`` processes on loopback train one model.

The orchestrator only starts processes and reads files; the nodes find each other
through the first one (bootstrap), form groups via the DHT and average peer to peer.
At the end it compares the swarm's model with one node trained alone for the same
number of local steps as each peer, and the bytes sent with what per-step DDP (ring
all-reduce of fp32 gradients) would have sent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.training.checkpoint import load_checkpoint
from shoal.training.local import train_single_node
from shoal.training.model import GPT, GPTConfig, evaluate
from shoal.training.run_config import RunConfig, dump_run_config
from shoal.training.runner import load_corpus

log = logging.getLogger(__name__)

# The whole demo must finish; a node still running after this is killed (by its PID).
DEMO_TIMEOUT_S = 900.0


@dataclass
class DemoConfig:
    nodes: int = 4
    rounds: int = 10
    inner_steps: int = 30
    batch_size: int = 16
    out: Path = Path("shoal-demo")
    compression: str = "int8"
    deadline_s: float = 60.0
    # Plain averaging (outer SGD, lr 1, no momentum): in runs this short, measured
    # better than the paper's Nesterov 0.7/0.9, whose momentum needs many rounds to
    # pay off, and than outer lr 1.5-4 (worse or diverged). With striped data shards
    # the 4-peer swarm beats one node at equal steps (docs/BENCHMARKS.md, "DiLoCo
    # outer optimizer in short runs"). H=10 measured better still but needs 3x rounds.
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    inner_lr: float = RunConfig.inner_lr  # every node's AdamW lr
    inner_weight_decay: float = RunConfig.inner_weight_decay  # ...and its weight decay
    ledger: bool = True  # signed feeds + a dev chain; `shoal verify` checks the result
    progress_interval_s: float = 1.0  # round progress publish/poll period (RunConfig)
    model_init: Path | None = None  # a checkpoint every node (and the baseline) starts from
    seed: int = 0  # every node's RunConfig.seed: the initial model and the batch streams


Progress = Callable[[int, dict[str, Any]], None]


def node_config(cfg: DemoConfig, i: int, bootstrap: list[str]) -> RunConfig:
    d = cfg.out / f"node{i}"
    return RunConfig(
        name="demo", data_dir=d, rounds=cfg.rounds, inner_steps=cfg.inner_steps,
        expected_peers=cfg.nodes, deadline_s=cfg.deadline_s, compression=cfg.compression,
        batch_size=cfg.batch_size, rank=i, world=cfg.nodes, bootstrap=bootstrap,
        outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum, inner_lr=cfg.inner_lr,
        inner_weight_decay=cfg.inner_weight_decay, progress_interval_s=cfg.progress_interval_s,
        model_init=cfg.model_init,
        progress_file=d / "progress.jsonl", result_file=d / "result.json", seed=cfg.seed,
    )  # fmt: skip


def start_node(cfg: RunConfig) -> subprocess.Popen[bytes]:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    for f in (cfg.progress_file, cfg.result_file, cfg.data_dir / "node.json"):
        if f is not None:
            f.unlink(missing_ok=True)
    path = cfg.data_dir / "run.toml"
    path.write_text(dump_run_config(cfg))
    logf = open(cfg.data_dir / "node.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # N processes share the cores
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "train", "--config", str(path)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    logf.close()
    return proc


def wait_contact(data_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}; see {data_dir}/node.log")
        try:
            return str(json.loads((data_dir / "node.json").read_text())["contact"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            time.sleep(0.1)
    raise TimeoutError(f"node in {data_dir} did not start")


def last_progress(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    lines = path.read_text().strip().splitlines()
    try:
        return dict(json.loads(lines[-1])) if lines else {}
    except json.JSONDecodeError:
        return {}


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    chain = None
    if cfg.ledger:
        from shoal.ledger.demo_setup import setup_demo_ledger

        dirs = [node_config(cfg, i, []).data_dir for i in range(cfg.nodes)]
        chain = setup_demo_ledger(cfg.out, dirs, "demo")
    configs = [node_config(cfg, 0, [])]
    procs = [start_node(configs[0])]
    t0 = time.monotonic()
    try:
        boot = wait_contact(configs[0].data_dir, procs[0])
        for i in range(1, cfg.nodes):
            configs.append(node_config(cfg, i, [boot]))
            procs.append(start_node(configs[i]))
        while any(p.poll() is None for p in procs):
            if time.monotonic() - t0 > max(DEMO_TIMEOUT_S, 2 * cfg.rounds * cfg.deadline_s):
                raise TimeoutError("demo did not finish in time")
            for i, c in enumerate(configs):
                if progress is not None:
                    progress(i, last_progress(c.progress_file))
            time.sleep(0.5)
        for i, c in enumerate(configs):
            if progress is not None:
                progress(i, last_progress(c.progress_file))
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"nodes {failed} failed; see {cfg.out}/node*/node.log")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if chain is not None:
            chain.stop()
    swarm_s = time.monotonic() - t0
    results = [json.loads(c.result_file.read_text()) for c in configs if c.result_file]
    summary = summarize(cfg, configs[0], results, swarm_s)
    if chain is not None:
        summary.update(ledger_summary(cfg.out, results))
    return summary


def ledger_summary(out: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Copy the final checkpoint to OUT/checkpoints (what `shoal verify` is pointed at)
    and report the ledger's share of each node's training time."""
    src = Path(results[0]["checkpoint"])
    dst = out / "checkpoints" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shares = sorted(
        r["ledger"]["ledger_s"] / max(1e-9, float(r["wall_s"])) for r in results if r["ledger"]
    )
    anchored = sorted({n for r in results if r["ledger"] for n in r["ledger"]["anchored_rounds"]})
    return {
        "ledger_overhead_pct_median": round(100 * shares[len(shares) // 2], 3) if shares else None,
        "ledger_overhead_pct_max": round(100 * shares[-1], 3) if shares else None,
        "anchored_rounds": anchored,
        "verify_checkpoint": str(dst),
    }


def summarize(
    cfg: DemoConfig, c0: RunConfig, results: list[dict[str, Any]], swarm_s: float
) -> dict[str, Any]:
    by_round: dict[int, set[str]] = {}
    for r in results:
        for h in r["history"]:
            by_round.setdefault(h["round"], set()).add(h["model_hash"])
    hashes_equal = (
        all(len(v) == 1 for v in by_round.values())
        and len({r["final_model_hash"] for r in results}) == 1
        and len({r["model_hash"] for r in results}) == 1
    )
    corpus = load_corpus(c0)
    # the run's model: the outer optimizer's readout (the training state itself when
    # the outer step has no Nesterov momentum, as in the demo's default)
    ckpt = load_checkpoint(results[0]["model"])
    model = GPT(GPTConfig())
    model.load_state_dict({k: v for k, v in ckpt.params.items()}, strict=False)
    swarm_loss = evaluate(model, corpus)
    steps = max(r["local_steps"] for r in results)
    init = c0.build_model().state_dict() if c0.model_init is not None else None
    single = train_single_node(
        steps,
        corpus=corpus,
        batch_size=cfg.batch_size,
        lr=c0.inner_lr,
        seed=c0.seed,
        init=init,
        weight_decay=c0.inner_weight_decay,
    )
    numel = int(results[0]["numel"])
    n = len(results)
    # Per-step DDP: a ring all-reduce of fp32 gradients sends 2(n-1)/n of them per peer.
    ddp_bytes = int(steps * n * 2 * (n - 1) / n * 4 * numel)
    bytes_sent = sum(int(r["bytes_sent"]) for r in results)
    # of which the all-reduce streams (the rest: DHT, SWIM, rounds, state sync)
    averaging = sum(int(h.get("bytes_sent", 0)) for r in results for h in r["history"])
    return {
        "swarm_loss": round(swarm_loss, 4),
        "single_node_loss": round(single.final_loss, 4),
        "initial_loss": round(single.initial_loss, 4),
        "bytes_sent": bytes_sent,
        "averaging_bytes_sent": averaging,
        "ddp_equivalent_bytes": ddp_bytes,
        "communication_ratio": round(ddp_bytes / max(1, bytes_sent), 1),
        "rounds": max(r["rounds"] for r in results),
        "peers": n,
        "local_steps_per_peer": steps,
        "model_hashes_equal": hashes_equal,
        "final_model_hash": results[0]["final_model_hash"],
        "params": numel,
        "swarm_wall_s": round(swarm_s, 1),
        "checkpoint": results[0]["checkpoint"],
        "model": results[0]["model"],
        "out": str(cfg.out),
    }
