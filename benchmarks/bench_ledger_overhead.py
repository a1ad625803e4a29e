"""Ledger overhead per round in the demo: sign, append (fsync), replicate, anchor.

    python benchmarks/bench_ledger_overhead.py [--nodes 4] [--rounds 5] [--inner-steps 30]

Runs the real ``shoal demo`` swarm (N node processes + the ``shoal chain`` process)
twice, with the ledger on and off (the baseline), same config. Reports:
  - per node, the time the ledger hook spent inside training (commit before the
    all-reduce; pulling the group's commitments, recording the aggregate and, on the
    anchoring peer, the anchor transaction after it) as a share of that node's
    training wall time: median node and worst node (the anchorer);
  - the same per phase (commit; collect = pull and check the group's commitments;
    record = the aggregate entry), and the anchor transaction time, which runs on a
    worker thread beside training;
  - the swarm wall time of both runs (noisy on a shared machine; for context).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from shoal.training.demo import DemoConfig, run_demo


def one(ledger: bool, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DemoConfig(nodes=args.nodes, rounds=args.rounds, inner_steps=args.inner_steps,
                         out=Path(tmp), ledger=ledger)  # fmt: skip
        res = run_demo(cfg)
        nodes = [json.loads((Path(tmp) / f"node{i}" / "result.json").read_text())
                 for i in range(args.nodes)]  # fmt: skip
    out: dict[str, Any] = {"ledger": ledger, "swarm_wall_s": res["swarm_wall_s"],
                           "node_wall_s": [n["wall_s"] for n in nodes]}  # fmt: skip
    if ledger:
        shares = [n["ledger"]["ledger_s"] / n["wall_s"] for n in nodes]
        out["ledger_s"] = [n["ledger"]["ledger_s"] for n in nodes]
        out["ledger_ms_per_round"] = [round(1000 * s / args.rounds, 1) for s in out["ledger_s"]]
        out["share_pct_median"] = round(100 * statistics.median(shares), 3)
        out["share_pct_max"] = round(100 * max(shares), 3)
        out["anchored_rounds"] = res["anchored_rounds"]
        # Per phase, ms per round, median node; anchor_bg runs beside training.
        out["phase_ms_per_round"] = {
            k: round(1000 * statistics.median(n["ledger"][k] for n in nodes) / args.rounds, 1)
            for k in ("commit_s", "collect_s", "record_s", "anchor_bg_s")
        }
        out["anchor_bg_ms_per_round_anchorer"] = round(
            1000 * max(n["ledger"]["anchor_bg_s"] for n in nodes) / args.rounds, 1
        )
        out["round_s_median"] = round(
            statistics.median(n["wall_s"] for n in nodes) / args.rounds, 2
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner-steps", type=int, default=30)
    args = ap.parse_args()
    runs = [one(True, args), one(False, args)]
    for r in runs:
        print(json.dumps(r), file=sys.stderr)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "args": vars(args), "runs": runs}))  # fmt: skip


if __name__ == "__main__":
    main()
