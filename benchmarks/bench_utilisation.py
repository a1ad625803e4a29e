"""Compute utilisation of DiLoCo training over the namespace WAN (root only).

Eight testbed hosts on the wan profile (100 Mbit/s, 50 ms RTT, 1% loss) each run a
real ``shoal train`` process with the demo's model. Per peer, utilisation =
1 - (seconds inside ``DiLoCo.sync``: waiting for the round to close, grouping, the
all-reduce, the head vote) / (wall seconds of the training loop). Baseline in the same
run: the same swarm on the lan profile (1 Gbit/s, no delay, no loss). The wan swarm
runs twice: as is, and with ``[run] overlap = true`` (round r's average runs while round
r+1 computes; the outer step lands one round late).

Caveat: eight trainers share this machine's cores, so an inner step is several times
slower than on a dedicated machine, which flatters utilisation; the table gives the
seconds so the communication cost can be read off directly.

    sudo .venv/bin/python benchmarks/bench_utilisation.py [--rounds 4] [--inner-steps 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from shoal.testbed import applier
from shoal.testbed.profiles import get_profile
from shoal.testbed.swarm import ChaosRun, result

NAME = "butil"
HOSTS = [f"h{i}" for i in range(8)]


def measure(
    profile: str, rounds: int, inner_steps: int, out: Path, overlap: bool = False
) -> dict[str, Any]:
    net = applier.up(NAME, len(HOSTS), get_profile(profile))
    run = ChaosRun(net, out / f"{profile}-{overlap}", rounds=rounds, inner_steps=inner_steps,
                   deadline_s=120.0, model_kwargs={}, batch_size=16, block_size=64,
                   overlap=overlap)  # fmt: skip
    try:
        cfgs = run.start_all(HOSTS)
        codes = run.wait_exit(HOSTS, 1800)
        if any(codes.values()):
            raise RuntimeError(f"trainers failed: {codes}; see {out}/{profile}")
        results = [result(cfgs[h]) for h in HOSTS]
    finally:
        run.close()
        applier.down(NAME)
    util = [1 - r["sync_s"] / r["wall_s"] for r in results]
    return {
        "utilisation_median": round(statistics.median(util), 4),
        "utilisation_min": round(min(util), 4),
        "sync_s_median": round(statistics.median(r["sync_s"] for r in results), 2),
        "wall_s_median": round(statistics.median(r["wall_s"] for r in results), 2),
        "rounds": rounds,
        "inner_steps": inner_steps,
        "final_hashes": len({r["final_model_hash"] for r in results}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-util-") as tmp:
        res = {
            "machine": f"{platform.node()} {platform.machine()}",
            "wan": measure("wan", args.rounds, args.inner_steps, Path(tmp)),
            "wan, overlap": measure("wan", args.rounds, args.inner_steps, Path(tmp), True),
            "lan (baseline)": measure("lan", args.rounds, args.inner_steps, Path(tmp)),
        }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
