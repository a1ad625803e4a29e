"""SparseLoCo against the nodes' DiLoCo at the same bytes, in-process (a study, not a codec).

    python benchmarks/study_sparseloco.py [--pretrain 3000] [--steps 2000]
        [--arms "H=40,k=64;H=80,k=128;H=40,k=64,alpha=2"] [--json]

SparseLoCo (Sarfi et al., 2025) keeps, on each peer, an error-feedback accumulator
e <- beta * e + pseudo-gradient, sends the k largest |values| of every 4096-value chunk
of it (2-bit values: sign and one of two magnitudes per chunk), subtracts what it sent,
and moves the global params by alpha times the mean of what the peers sent; there is
no outer momentum (the accumulator stands in for it). Every peer sends its sparse
update to the 3 others (an all-gather), so a round costs each peer
3 * chunks * (k * (12 index + 2 value bits) + 32 scale bits); the nodes' int4z at
H = 250 costs 1.5 * params * 3.33 bits a round (reduce-scatter + all-gather) for 8
rounds. ``rel_bytes`` is the ratio of the two totals.

Same start, batch streams, AdamW and held-out split as ``bench_ddp_gap.py`` (4 peers,
batch 16, one torch thread). Options per arm: ``H``, ``k`` (values kept per chunk),
``beta``, ``alpha``, ``q`` (1: 2-bit values, 0: fp32 values), ``wd``, ``seed``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from bench_ddp_gap import parse_options, pretrained
from shoal.training.data import stdlib_corpus
from shoal.training.diloco_math import (
    OuterOptimizer,
    flatten_params,
    pseudo_gradient,
    unflatten_into,
)
from shoal.training.local import _inner_optimizer, _peer_stream
from shoal.training.model import GPT, GPTConfig, evaluate

CHUNK = 4096
INT4Z_BITS = 3.33  # int4z's bits per value on a 250-step update (docs/BENCHMARKS.md)
DEFAULTS: dict[str, Any] = {
    "H": 40, "k": 64, "beta": 0.95, "alpha": 1.0, "q": 1, "wd": 0.1, "seed": 0,
}  # fmt: skip


def two_bit(values: torch.Tensor) -> torch.Tensor:
    """Sign, and per row the mean |value| of its lower or upper half by magnitude."""
    mag = values.abs()
    low = mag <= mag.median(dim=1, keepdim=True).values
    low_mean = (mag * low).sum(1, keepdim=True) / low.sum(1, keepdim=True).clamp(min=1)
    high_mean = (mag * ~low).sum(1, keepdim=True) / (~low).sum(1, keepdim=True).clamp(min=1)
    return values.sign() * torch.where(low, low_mean, high_mean)


def chunk_top_k(e: torch.Tensor, k: int, quantise: bool) -> torch.Tensor:
    """The dense tensor of what a peer sends: each chunk's k largest |values|."""
    n = e.numel()
    rows = torch.cat([e, e.new_zeros(-n % CHUNK)]).view(-1, CHUNK)
    idx = rows.abs().topk(k, dim=1).indices
    vals = rows.gather(1, idx)
    out = torch.zeros_like(rows).scatter_(1, idx, two_bit(vals) if quantise else vals)
    return out.view(-1)[:n]


def run_arm(
    o: dict[str, Any], steps: int, peers: int, init: Any, eval_batches: int
) -> dict[str, Any]:
    corpus, cfg = stdlib_corpus(), GPTConfig()
    models = [GPT(cfg, seed=0) for _ in range(peers)]
    if init is not None:  # --pretrain 0: the seed's fresh model
        for m in models:
            m.load_state_dict(init)
    global_flat = flatten_params(models[0].parameters())
    n = global_flat.numel()
    outer = OuterOptimizer(lr=o["alpha"], momentum=0.0, nesterov=False)
    opts = [_inner_optimizer(m, 3e-3, o["wd"]) for m in models]
    streams = [_peer_stream(corpus, 16, cfg.block_size, o["seed"], r, peers, "striped")
               for r in range(peers)]  # fmt: skip
    acc = [torch.zeros(n) for _ in range(peers)]
    rounds = steps // o["H"]
    for _ in range(rounds):
        sent = []
        for i, m in enumerate(models):
            unflatten_into(global_flat, m.parameters())
            for _ in range(o["H"]):
                x, y = next(streams[i])
                loss = m(x, y)
                opts[i].zero_grad(set_to_none=True)
                loss.backward()
                opts[i].step()
            acc[i].mul_(o["beta"]).add_(
                pseudo_gradient(global_flat, flatten_params(m.parameters()))
            )
            c = chunk_top_k(acc[i], o["k"], bool(o["q"]))
            acc[i].sub_(c)
            sent.append(c)
        outer.step(global_flat, torch.stack(sent).mean(0))
    unflatten_into(global_flat, models[0].parameters())
    chunks = -(-n // CHUNK)
    bits = rounds * 3 * chunks * (o["k"] * (12 + (2 if o["q"] else 32)) + 32)
    return {
        "loss": round(evaluate(models[0], corpus, eval_batches), 4),
        "rel_bytes": round(bits / (8 * 1.5 * n * INT4Z_BITS), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pretrain", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--arms", default="H=40,k=64;H=80,k=128")
    ap.add_argument("--eval-batches", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    init, start = pretrained(args.pretrain, args.eval_batches)
    rows = []
    for spec in args.arms.split(";"):
        o = parse_options(spec, DEFAULTS, spec)
        if args.steps % o["H"]:
            raise SystemExit(f"{spec}: H={o['H']} does not divide --steps {args.steps}")
        t0 = time.monotonic()
        row = run_arm(o, args.steps, args.peers, init, args.eval_batches)
        rows.append({"arm": spec, **row, "wall_s": round(time.monotonic() - t0)})
        if not args.json:
            print(f"| {spec} | {row['loss']:.4f} | {row['rel_bytes']:.2f}x |", flush=True)
    if args.json:
        print(json.dumps({"start_loss": round(start, 4), "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
