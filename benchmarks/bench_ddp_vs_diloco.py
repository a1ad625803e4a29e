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
        [--compression int8|int4|int4z|none] [--progress-interval-s 1] [--pretrain K]

``--inner-lr`` sets the AdamW lr of the swarm's nodes and of the one node alone,
``--ddp-lr`` the baseline's (both 3e-3 by default): each arm may run at its own best lr.
``--inner-wd`` and ``--ddp-wd`` do the same for AdamW's weight decay (both 0.1).

``--pretrain K``: every arm (DDP, the swarm, one node alone) starts from the demo model
trained K steps on one node, as the DiLoCo paper starts from a pretrained model.

The swarm's model is the run's readout (`DiLoCo.save_model`: with Nesterov, the outer
iterate rather than the look-ahead params the peers train from); ``shoal_state_loss`` is
the look-ahead state's loss, read the same way.

Loss: every arm's final model on the same ``--eval-batches`` held-out batches of 16
(default 200: evenly spaced windows that cover the whole 230 KB held-out split), and,
for comparison with earlier runs, on the demo's 8 (``*_loss_8``). Eight batches are
~8k predicted bytes: too few to resolve a 2% gap between two trainings.
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

from shoal.training.checkpoint import Checkpoint, save_checkpoint
from shoal.training.data import stdlib_corpus
from shoal.training.demo import DemoConfig, run_demo
from shoal.training.local import pretrain_single_node, train_single_node
from shoal.training.model import GPT, GPTConfig, evaluate, num_params
from shoal.training.run_config import load_init_params

BATCH = 16
LR = 3e-3
WD = 0.1  # AdamW weight decay, every arm by default (RunConfig.inner_weight_decay)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(
    rank: int, world: int, port: int, steps: int, out: str, init: str | None, seed: int,
    lr: float, wd: float,
) -> None:  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    corpus = stdlib_corpus()
    model = GPT(GPTConfig(), seed=seed)  # the nodes build RunConfig.seed's model
    if init is not None:
        load_init_params(model, Path(init))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=lr, weight_decay=wd)
    batches = corpus.batches("train", BATCH, model.cfg.block_size, seed=seed, shard=(rank, world))
    t0 = time.monotonic()
    for _ in range(steps):
        x, y = next(batches)
        loss = ddp(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    wall = time.monotonic() - t0
    if rank == 0:
        named = {k: p.detach() for k, p in model.named_parameters()}
        save_checkpoint(Path(out) / "ddp.safetensors", Checkpoint(named, 0, None, {}))
        (Path(out) / "ddp.json").write_text(json.dumps({"wall_s": wall}))
    dist.destroy_process_group()


def held_out(checkpoint: Path, batches: int) -> float:
    """Held-out loss of a checkpoint's model on ``batches`` fixed batches of 16."""
    model = GPT(GPTConfig(), seed=0)
    load_init_params(model, checkpoint)
    return evaluate(model, stdlib_corpus(), batches)


def run_ddp(
    world: int, steps: int, eval_batches: int, init: Path | None = None, seed: int = 0,
    lr: float = LR, wd: float = WD,
) -> dict[str, float]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        init_s = None if init is None else str(init)
        args = (world, _free_port(), steps, tmp, init_s, seed, lr, wd)
        mp.spawn(_ddp_worker, args=args, nprocs=world, join=True)
        result: dict[str, float] = json.loads((Path(tmp) / "ddp.json").read_text())
        final = Path(tmp) / "ddp.safetensors"
        result["loss"] = held_out(final, eval_batches)
        result["loss_8"] = held_out(final, 8)
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=30)
    ap.add_argument("--outer-lr", type=float, default=DemoConfig.outer_lr)
    ap.add_argument("--outer-momentum", type=float, default=DemoConfig.outer_momentum)
    ap.add_argument("--deadline-s", type=float, default=DemoConfig.deadline_s)
    ap.add_argument("--compression", default=DemoConfig.compression)
    ap.add_argument("--progress-interval-s", type=float, default=DemoConfig.progress_interval_s)
    ap.add_argument(
        "--pretrain", type=int, default=0,
        help="start every arm from the demo model trained this many steps on one node",
    )  # fmt: skip
    ap.add_argument(
        "--inner-lr", type=float, default=LR, help="AdamW lr of the swarm's nodes and one node"
    )
    ap.add_argument("--ddp-lr", type=float, default=LR, help="AdamW lr of the DDP baseline")
    ap.add_argument(
        "--inner-wd", type=float, default=WD, help="AdamW weight decay of the nodes and one node"
    )
    ap.add_argument("--ddp-wd", type=float, default=WD, help="AdamW weight decay of DDP")
    ap.add_argument("--eval-batches", type=int, default=200)
    ap.add_argument(
        "--seed", type=int, default=0,
        help="batch streams of every arm (DDP ranks, swarm nodes, one node); the start is fixed",
    )  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    steps = args.rounds * args.inner_steps
    numel = num_params(GPT(GPTConfig()))
    n = args.peers
    with tempfile.TemporaryDirectory() as tmp:
        init = None
        start_loss = None
        start_state: dict[str, torch.Tensor] | None = None
        if args.pretrain:
            model = pretrain_single_node(args.pretrain)
            start_loss = round(evaluate(model, stdlib_corpus(), args.eval_batches), 4)
            start_state = model.state_dict()
            init = Path(tmp) / "pretrained.safetensors"
            named = {k: p.detach() for k, p in model.named_parameters()}
            save_checkpoint(
                init, Checkpoint(named, 0, None, {"pretrain_steps": str(args.pretrain)})
            )
        ddp = run_ddp(n, steps, args.eval_batches, init, args.seed, args.ddp_lr, args.ddp_wd)
        cfg = DemoConfig(
            nodes=n, rounds=args.rounds, inner_steps=args.inner_steps, out=Path(tmp) / "demo",
            outer_lr=args.outer_lr, outer_momentum=args.outer_momentum, ledger=False,
            deadline_s=args.deadline_s, compression=args.compression,
            progress_interval_s=args.progress_interval_s, model_init=init, seed=args.seed,
            inner_lr=args.inner_lr, inner_weight_decay=args.inner_wd,
        )  # fmt: skip
        shoal = run_demo(cfg)
        node0 = json.loads((cfg.out / "node0" / "result.json").read_text())
        # the run's model (the outer iterate); the look-ahead state beside it
        swarm_loss = held_out(Path(node0["model"]), args.eval_batches)
        state_loss = held_out(Path(node0["checkpoint"]), args.eval_batches)
        results = [json.loads((cfg.out / f"node{i}" / "result.json").read_text()) for i in range(n)]
        local_steps = [r["local_steps"] for r in results]
        by_kind: dict[str, int] = {}  # where the swarm's bytes went (transport counters)
        for r in results:
            for kind, sent in r["bytes_sent_by_kind"].items():
                by_kind[kind] = by_kind.get(kind, 0) + sent
        single = train_single_node(
            steps, batch_size=BATCH, lr=args.inner_lr, init=start_state, weight_decay=args.inner_wd,
            eval_batches=args.eval_batches,
            seed=args.seed,
        ).final_loss  # fmt: skip
    ddp_bytes = int(steps * n * 2 * (n - 1) / n * 4 * numel)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "peers": n,
        "local_steps_per_peer": steps,
        "params": numel,
        "eval_batches": args.eval_batches,
        "ddp_loss": round(ddp["loss"], 4),
        "ddp_loss_8": round(ddp["loss_8"], 4),
        "ddp_bytes": ddp_bytes,
        "shoal_loss": round(swarm_loss, 4),
        "shoal_loss_8": shoal["swarm_loss"],
        "shoal_state_loss": round(state_loss, 4),
        "shoal_local_steps": local_steps,
        "shoal_bytes": shoal["bytes_sent"],
        "shoal_averaging_bytes": shoal["averaging_bytes_sent"],
        "shoal_bytes_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "pretrain_steps": args.pretrain,
        "seed": args.seed,
        "start_loss": start_loss,
        "compression": args.compression,
        "progress_interval_s": args.progress_interval_s,
        "single_node_loss": round(single, 4),
        "single_node_loss_8": shoal["single_node_loss"],
        "communication_ratio": round(ddp_bytes / shoal["bytes_sent"], 1),
        "loss_gap_vs_ddp": round(swarm_loss / ddp["loss"] - 1, 4),
        "loss_gap_vs_ddp_8": round(shoal["swarm_loss"] / ddp["loss_8"] - 1, 4),
        "model_hashes_equal": shoal["model_hashes_equal"],
        "outer_lr": args.outer_lr,
        "outer_momentum": args.outer_momentum,
        "inner_lr": args.inner_lr,
        "ddp_lr": args.ddp_lr,
        "inner_wd": args.inner_wd,
        "ddp_wd": args.ddp_wd,
        "shoal_wall_s": shoal["swarm_wall_s"],
        "ddp_wall_s": round(ddp["wall_s"], 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print("| run | held-out loss | bytes sent (all peers) |")
    print("|---|---:|---:|")
    print(f"| DDP, gloo, every step | {result['ddp_loss']} | {ddp_bytes:,} |")
    print(f"| shoal DiLoCo, {args.compression}, H={args.inner_steps} | {result['shoal_loss']} | "
          f"{result['shoal_bytes']:,} |")  # fmt: skip
    print(f"| one node alone (same steps) | {result['single_node_loss']} | 0 |")
    print(
        f"\ncommunication ratio {result['communication_ratio']}x, "
        f"loss gap {100 * result['loss_gap_vs_ddp']:+.1f}%"
    )


if __name__ == "__main__":
    main()
