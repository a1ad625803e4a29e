"""Where DiLoCo's loss gap to per-step DDP comes from: in-process, same steps per peer.

    python benchmarks/bench_ddp_gap.py [--pretrain 1000] [--steps 1000] [--peers 4]
        [--arms "ddp;single;diloco:H=100;diloco:H=250,olr=2"] [--json]

Every arm starts from the same model: a fresh one, or (``--pretrain K``) one trained
K steps on one node first (the DiLoCo paper's protocol), and then runs ``--steps``
local steps per peer. Arms:

- ``ddp``     the synchronous data-parallel baseline: one model, batch peers x B. That
              is DDP's math (the gradient averaged over the peers' batches every step),
              without the processes; `bench_ddp_vs_diloco.py` runs real DDP over gloo.
- ``single``  one node alone, batch B: what no communication at all gets.
- ``diloco``  `simulate_diloco_inprocess`, the nodes' math (int8 + error feedback),
              H local steps per round.

Options per arm (``name:key=value,...``): ``H``, ``olr`` (outer lr), ``mom`` (outer
Nesterov momentum), ``lr`` (inner AdamW lr), ``sched`` (``constant`` or ``cosine``:
down to lr/10 over the run's local steps), ``bs`` (per-peer batch B), ``codec``,
``seed`` (the batch streams' seed; the start is the same for every seed), ``rfb=1``
(error feedback on the re-encoded average too: the shard owners keep its residual),
``wd`` (AdamW weight decay, 0.1), ``read`` (``iterate``: the loss of the outer
optimizer's readout, what the nodes hand out; ``lookahead``: of the params the peers
train from, what this read before 2026-12-02; the same without Nesterov momentum).
Loss: held-out, ``--eval-batches`` fixed batches of 16. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import torch

from shoal.training.data import stdlib_corpus
from shoal.training.local import (
    pretrain_single_node,
    simulate_diloco_inprocess,
    train_single_node,
)
from shoal.training.model import evaluate

DEFAULTS: dict[str, Any] = {
    "H": 100, "olr": 1.0, "mom": 0.0, "lr": 3e-3, "bs": 16, "codec": "int8", "sched": "constant",
    "seed": 0, "rfb": 0, "read": "iterate", "wd": 0.1,
}  # fmt: skip
PRETRAIN_SEED = 12345  # the pretraining stream differs from every arm's


def parse_options(rest: str, defaults: dict[str, Any], spec: str) -> dict[str, Any]:
    """``key=value,...`` over ``defaults``, each value of its default's type."""
    opts = dict(defaults)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"unknown option {key!r} in {spec!r}")
        opts[key] = type(defaults[key])(value)
    return opts


def parse_arm(spec: str) -> tuple[str, dict[str, Any]]:
    kind, _, rest = spec.partition(":")
    if kind not in ("ddp", "single", "diloco"):
        raise SystemExit(f"unknown arm {kind!r}")
    opts = parse_options(rest, DEFAULTS, spec)
    if opts["read"] not in ("iterate", "lookahead"):
        raise SystemExit(f"read must be 'iterate' or 'lookahead' in {spec!r}")
    return kind, opts


def pretrained(steps: int, eval_batches: int) -> tuple[dict[str, torch.Tensor] | None, float]:
    """The shared starting point: the seed-0 model, trained ``steps`` steps on one node."""
    model = pretrain_single_node(steps, stream_seed=PRETRAIN_SEED)
    loss = evaluate(model, stdlib_corpus(), eval_batches)
    return (model.state_dict() if steps else None), loss


def run_arm(
    kind: str, o: dict[str, Any], steps: int, peers: int, init: Any, eval_batches: int
) -> float:
    corpus = stdlib_corpus()
    if kind in ("ddp", "single"):
        bs = o["bs"] * (peers if kind == "ddp" else 1)
        res = train_single_node(
            steps, corpus=corpus, batch_size=bs, lr=o["lr"], init=init,
            eval_batches=eval_batches, lr_schedule=o["sched"], seed=o["seed"],
            weight_decay=o["wd"],
        )  # fmt: skip
        return res.final_loss
    res = simulate_diloco_inprocess(
        peers, steps // o["H"], o["H"], corpus=corpus, batch_size=o["bs"], inner_lr=o["lr"],
        outer_lr=o["olr"], outer_momentum=o["mom"], outer_nesterov=o["mom"] > 0,
        codec=o["codec"], init=init, eval_batches=eval_batches, lr_schedule=o["sched"],
        seed=o["seed"], result_feedback=bool(o["rfb"]), inner_weight_decay=o["wd"],
    )  # fmt: skip
    assert res.readout_loss is not None
    return res.readout_loss if o["read"] == "iterate" else res.final_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--arms", default="ddp;single;diloco:H=100;diloco:H=250")
    ap.add_argument("--eval-batches", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    arms = [(spec, *parse_arm(spec)) for spec in args.arms.split(";")]
    for spec, kind, opts in arms:
        # steps // H rounds: an H that does not divide the steps would quietly give that
        # arm less compute than DDP (H = 300 of 2000 ran 1800 steps once)
        if kind == "diloco" and args.steps % opts["H"]:
            raise SystemExit(f"{spec}: H={opts['H']} does not divide --steps {args.steps}")
    init, start = pretrained(args.pretrain, args.eval_batches)
    rows = []
    for spec, kind, opts in arms:
        t0 = time.monotonic()
        loss = run_arm(kind, opts, args.steps, args.peers, init, args.eval_batches)
        rows.append({"arm": spec, "loss": round(loss, 4), "wall_s": round(time.monotonic() - t0)})
    ddp = next((r["loss"] for r in rows if r["arm"].startswith("ddp")), None)
    for r in rows:
        r["gap_vs_ddp"] = None if ddp is None else round(r["loss"] / ddp - 1, 4)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "pretrain_steps": args.pretrain, "start_loss": round(start, 4), "steps": args.steps,
        "peers": args.peers, "rows": rows,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"start loss {start:.4f} (pretrain {args.pretrain} steps), {args.steps} steps per peer")
    print("| arm | held-out loss | vs ddp |")
    print("|---|---:|---:|")
    for r in rows:
        gap = "" if r["gap_vs_ddp"] is None else f"{100 * r['gap_vs_ddp']:+.1f}%"
        print(f"| {r['arm']} | {r['loss']:.4f} | {gap} |")


if __name__ == "__main__":
    main()
