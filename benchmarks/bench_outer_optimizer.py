"""Sweep DiLoCo's outer optimizer (and a few other levers) against one node, in-process.

Every variant runs `simulate_diloco_inprocess` (N replicas in one process, the nodes'
math, int8 + error feedback unless stated) for ROUNDS x H steps per peer; the baseline
is `train_single_node` for the same number of steps and batch size, in the same run.
Jobs run in a small process pool, one torch thread each (the machine is shared).

    .venv/bin/python benchmarks/bench_outer_optimizer.py --rounds 10 --inner-steps 30
    .venv/bin/python benchmarks/bench_outer_optimizer.py --rounds 20 --inner-steps 50 \\
        --only single,sgd1,sgd2 --json /tmp/outer1000.json

Variants that change H keep the total steps per peer (rounds x H) fixed.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from shoal.training.data import stdlib_corpus
from shoal.training.local import simulate_diloco_inprocess, train_single_node

log = logging.getLogger("bench_outer_optimizer")

MAX_WORKERS = 8  # each job is one thread; more than the cores only adds contention


@dataclass(frozen=True)
class Variant:
    label: str
    kind: str = "diloco"  # or "single"
    kwargs: dict[str, Any] = field(default_factory=dict)
    inner_steps: int | None = None  # None: the run's H; else H here, rounds rescaled
    batch_mult: int = 1  # single only: batch_size x this (the DDP-like upper bound)


SGD = {"outer_momentum": 0.0}
VARIANTS: dict[str, Variant] = {
    "single": Variant("one node (baseline)", "single"),
    "single_bxN": Variant(
        "one node, N x batch (sync data-parallel bound)", "single", batch_mult=-1
    ),
    "paper": Variant("Nesterov lr 0.7 / m 0.9 (paper)", kwargs={"outer_lr": 0.7}),
    "sgd1": Variant("SGD lr 1.0, no momentum (the demo)", kwargs={"outer_lr": 1.0, **SGD}),
    "sgd1.5": Variant("SGD lr 1.5", kwargs={"outer_lr": 1.5, **SGD}),
    "sgd2": Variant("SGD lr 2.0", kwargs={"outer_lr": 2.0, **SGD}),
    "sgd3": Variant("SGD lr 3.0", kwargs={"outer_lr": 3.0, **SGD}),
    "sgd4": Variant("SGD lr 4.0", kwargs={"outer_lr": 4.0, **SGD}),
    "nag1/0.5": Variant("Nesterov lr 1.0 / m 0.5", kwargs={"outer_lr": 1.0, "outer_momentum": 0.5}),
    "nag2/0.3": Variant("Nesterov lr 2.0 / m 0.3", kwargs={"outer_lr": 2.0, "outer_momentum": 0.3}),
    "nag1.5/0.5": Variant(
        "Nesterov lr 1.5 / m 0.5", kwargs={"outer_lr": 1.5, "outer_momentum": 0.5}
    ),
    "rescale1": Variant(
        "SGD lr 1.0, norm-matched average", kwargs={"outer_lr": 1.0, "rescale_outer": True, **SGD}
    ),
    "fp32": Variant("SGD lr 1.0, fp32 (no int8)", kwargs={"outer_lr": 1.0, "codec": "none", **SGD}),
    "contig1": Variant(
        "SGD lr 1.0, contiguous shards (old nodes)",
        kwargs={"outer_lr": 1.0, "shard_mode": "contiguous", **SGD},
    ),
    "contig_paper": Variant(
        "Nesterov 0.7 / 0.9, contiguous shards (old nodes)",
        kwargs={"outer_lr": 0.7, "shard_mode": "contiguous"},
    ),
    "iid1": Variant("SGD lr 1.0, IID shards", kwargs={"outer_lr": 1.0, "shard_mode": "iid", **SGD}),
    "iid2": Variant("SGD lr 2.0, IID shards", kwargs={"outer_lr": 2.0, "shard_mode": "iid", **SGD}),
    "adamavg1": Variant(
        "SGD lr 1.0, AdamW moments averaged",
        kwargs={"outer_lr": 1.0, "average_inner_state": True, **SGD},
    ),
    "h10": Variant("SGD lr 1.0, H=10", kwargs={"outer_lr": 1.0, **SGD}, inner_steps=10),
    "h15": Variant("SGD lr 1.0, H=15", kwargs={"outer_lr": 1.0, **SGD}, inner_steps=15),
    "h10_sgd2": Variant("SGD lr 2.0, H=10", kwargs={"outer_lr": 2.0, **SGD}, inner_steps=10),
}
DEFAULT_SWEEP = (
    "single,single_bxN,paper,sgd1,sgd1.5,sgd2,sgd3,sgd4,nag2/0.3,nag1.5/0.5,"
    "rescale1,fp32,iid1,adamavg1,h10,h15"
)


def run_job(job: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    name, a = job
    torch.set_num_threads(1)  # tiny model: threads only fight the other jobs
    v = VARIANTS[name]
    corpus = stdlib_corpus()
    steps = a["rounds"] * a["inner_steps"]
    t0 = time.process_time()
    if v.kind == "single":
        mult = a["peers"] if v.batch_mult == -1 else v.batch_mult
        r = train_single_node(
            steps, corpus=corpus, batch_size=a["batch_size"] * mult, lr=a["inner_lr"],
            seed=a["seed"],
        )  # fmt: skip
    else:
        h = v.inner_steps or a["inner_steps"]
        if steps % h:
            raise ValueError(f"{name}: {steps} steps per peer not a multiple of H={h}")
        kwargs = {"codec": a["codec"], **v.kwargs}
        r = simulate_diloco_inprocess(
            a["peers"], steps // h, h, corpus=corpus, batch_size=a["batch_size"],
            inner_lr=a["inner_lr"], seed=a["seed"], **kwargs,
        )  # fmt: skip
    return {
        "variant": name,
        "label": v.label,
        "seed": a["seed"],
        "final_loss": r.final_loss,
        "history": r.history,
        "cpu_s": round(time.process_time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--inner-lr", type=float, default=3e-3)
    ap.add_argument("--codec", default="int8")
    ap.add_argument("--seeds", default="0", help="comma-separated; the median is reported")
    ap.add_argument("--only", default=DEFAULT_SWEEP, help="comma-separated variant names")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default="", help="write all results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if "single" not in names:
        names.insert(0, "single")  # the baseline is always measured in the same run
    steps = args.rounds * args.inner_steps
    bad = [n for n in names if steps % (VARIANTS[n].inner_steps or args.inner_steps)]
    if bad:  # checked up front: one failing job would take the whole pool down
        raise SystemExit(f"{bad}: {steps} steps per peer are not a multiple of their H")
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {
        "peers": args.peers, "rounds": args.rounds, "inner_steps": args.inner_steps,
        "batch_size": args.batch_size, "inner_lr": args.inner_lr, "codec": args.codec,
    }  # fmt: skip
    jobs = [(n, {**common, "seed": s}) for s in seeds for n in names]
    workers = max(1, min(MAX_WORKERS, args.workers))
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for res in pool.imap_unordered(run_job, jobs):
            log.info("%-12s seed %d: %.4f (%.0f CPU s)", res["variant"], res["seed"],
                     res["final_loss"], res["cpu_s"])  # fmt: skip
            results.append(res)
    base = statistics.median(r["final_loss"] for r in results if r["variant"] == "single")
    print(
        f"\n{args.peers} peers, {steps} steps per peer ({args.rounds} x H={args.inner_steps}), "
        f"batch {args.batch_size}, inner AdamW lr {args.inner_lr}, codec {args.codec}, "
        f"seeds {seeds}; {platform.machine()}, {time.monotonic() - t0:.0f} s wall"
    )
    print("\n| variant | held-out loss (median over seeds) | vs one node | per seed |")
    print("|---|---:|---:|---|")
    for n in names:
        losses = [r["final_loss"] for r in results if r["variant"] == n]
        med = statistics.median(losses)
        per_seed = " / ".join(f"{x:.3f}" for x in losses)
        print(f"| {VARIANTS[n].label} | {med:.3f} | {100 * (med / base - 1):+.1f}% | {per_seed} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
