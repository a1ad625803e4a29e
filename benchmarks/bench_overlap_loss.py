"""What overlapping communication costs in model quality, in-process and deterministic.

Four replicas of the demo's char transformer (the nodes' math: int8 + error feedback,
outer Nesterov) train for R rounds of H steps with the outer update:
- "off": synchronous DiLoCo (each round starts from the new global params);
- "delayed": round r's average lands at the close of r+1 and each peer restarts from
  the global params (what ``DiLoCo(overlap=True)`` did first);
- "eager": the same average, landing at the same time, but each peer keeps its own
  progress of r+1 on top of the new global params.
Baseline: one node trained alone for the same number of local steps (same compute
per peer), in the same run. Variants run in parallel processes, one torch thread each.

    python benchmarks/bench_overlap_loss.py [--rounds 16] [--inner-steps 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from shoal.training.local import simulate_diloco_inprocess, train_single_node

BATCH = 16  # what each node trains with in the testbed and the demo


def _variant(mode: str, rounds: int, inner_steps: int, momentum: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.monotonic()
    if mode == "single":
        r = train_single_node(rounds * inner_steps, batch_size=BATCH)
        return {"loss": r.final_loss, "wall_s": time.monotonic() - t0}
    r = simulate_diloco_inprocess(
        4, rounds, inner_steps, batch_size=BATCH, overlap=mode,  # type: ignore[arg-type]
        outer_momentum=momentum,
    )  # fmt: skip
    return {
        "loss": r.final_loss,
        "history": [round(h, 4) for _, h in r.history],
        "wall_s": time.monotonic() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=30)
    ap.add_argument("--momentum", type=float, default=0.9, help="outer Nesterov momentum")
    ap.add_argument("--modes", default="single,off,delayed,eager")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    modes = args.modes.split(",")
    with ProcessPoolExecutor(args.workers) as pool:
        futs = {
            m: pool.submit(_variant, m, args.rounds, args.inner_steps, args.momentum) for m in modes
        }
        out = {m: f.result() for m, f in futs.items()}
    report = {
        "rounds": args.rounds,
        "inner_steps": args.inner_steps,
        "outer": {"lr": 0.7, "momentum": args.momentum, "nesterov": True},
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "results": out,
    }
    if args.json:
        print(json.dumps(report))
        return
    base = out["single"]["loss"] if "single" in out else None
    print(f"{args.rounds} rounds x H={args.inner_steps}, 4 peers, outer m={args.momentum}")
    for m, r in out.items():
        loss = float(r["loss"])
        vs = f" ({(loss / float(base) - 1) * 100:+.1f}% vs one node)" if base else ""
        print(f"  {m:8s} {loss:.4f}{vs}  {float(r['wall_s']):.0f} s")


if __name__ == "__main__":
    main()
