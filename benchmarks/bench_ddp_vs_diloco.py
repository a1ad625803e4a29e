"""Communication and loss: shoal DiLoCo against real torch DDP (gloo), same task.

Both train the demo's character-level transformer on the stdlib corpus with 4 peer
processes on loopback, each peer doing the same number of local AdamW steps on its
own data shard with the same batch size (same compute per peer):

- DDP: ``DistributedDataParallel`` over a gloo group, gradients all-reduced every
  step. Bytes are what gloo's ring all-reduce sends for fp32 gradients:
  2 (n-1)/n * 4 * params per peer per step (gloo does not count bytes itself).
- shoal: ``shoal demo`` (real node processes, authenticated transport, int8
  pseudo-gradients every H steps); bytes are the transports' own counters, control
  traffic (DHT, SWIM, rounds) included.

    python benchmarks/bench_ddp_vs_diloco.py [--peers 4] [--rounds 10] [--inner-steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from shoal.training.data import stdlib_corpus
from shoal.training.demo import DemoConfig, run_demo
from shoal.training.model import GPT, GPTConfig, evaluate, num_params

BATCH = 16
LR = 3e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    corpus = stdlib_corpus()
    model = GPT(GPTConfig(), seed=0)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=LR, weight_decay=0.1)
    batches = corpus.batches("train", BATCH, model.cfg.block_size, seed=0, shard=(rank, world))
    t0 = time.monotonic()
    for _ in range(steps):
        x, y = next(batches)
        loss = ddp(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.monotonic() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"loss": evaluate(model, corpus), "wall_s": wall}))
    dist.destroy_process_group()


def run_ddp(world: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        mp.spawn(_ddp_worker, args=(world, _free_port(), steps, out), nprocs=world, join=True)
        result: dict[str, float] = json.loads(Path(out).read_text())
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=30)
    ap.add_argument("--outer-lr", type=float, default=DemoConfig.outer_lr)
    ap.add_argument("--outer-momentum", type=float, default=DemoConfig.outer_momentum)
    ap.add_argument("--deadline-s", type=float, default=DemoConfig.deadline_s)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    steps = args.rounds * args.inner_steps
    numel = num_params(GPT(GPTConfig()))
    n = args.peers
    ddp = run_ddp(n, steps)
    ddp_bytes = int(steps * n * 2 * (n - 1) / n * 4 * numel)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DemoConfig(
            nodes=n, rounds=args.rounds, inner_steps=args.inner_steps, out=Path(tmp),
            outer_lr=args.outer_lr, outer_momentum=args.outer_momentum, ledger=False,
            deadline_s=args.deadline_s,
        )  # fmt: skip
        shoal = run_demo(cfg)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "peers": n,
        "local_steps_per_peer": steps,
        "params": numel,
        "ddp_loss": round(ddp["loss"], 4),
        "ddp_bytes": ddp_bytes,
        "shoal_loss": shoal["swarm_loss"],
        "shoal_bytes": shoal["bytes_sent"],
        "single_node_loss": shoal["single_node_loss"],
        "communication_ratio": round(ddp_bytes / shoal["bytes_sent"], 1),
        "loss_gap_vs_ddp": round(shoal["swarm_loss"] / ddp["loss"] - 1, 4),
        "model_hashes_equal": shoal["model_hashes_equal"],
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "shoal_wall_s": shoal["swarm_wall_s"],
        "ddp_wall_s": round(ddp["wall_s"], 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print("| run | held-out loss | bytes sent (all peers) |")
    print("|---|---:|---:|")
    print(f"| DDP, gloo, every step | {result['ddp_loss']} | {ddp_bytes:,} |")
    print(f"| shoal DiLoCo, int8, H={args.inner_steps} | {result['shoal_loss']} | "
          f"{result['shoal_bytes']:,} |")  # fmt: skip
    print(f"| one node alone (same steps) | {result['single_node_loss']} | 0 |")
    print(
        f"\ncommunication ratio {result['communication_ratio']}x, "
        f"loss gap {100 * result['loss_gap_vs_ddp']:+.1f}%"
    )


if __name__ == "__main__":
    main()
