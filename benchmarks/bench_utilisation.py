"""Compute utilisation of DiLoCo training over the namespace WAN (root only).

Eight testbed hosts on the wan profile (100 Mbit/s, 50 ms RTT, 1% loss) each run a
real ``shoal train`` process with the demo's model. Per peer:

- utilisation = compute seconds / wall seconds of the training loop, where compute =
  wall - seconds inside ``DiLoCo.sync``/``flush`` (waiting for the round to close,
  grouping, the all-reduce, the head vote, encoding, the outer step: every blocking
  wait counts as idle);
- steady utilisation: the same without the final flush (the last round's average, which
  has no next round to hide behind) in either term; it is what a longer run tends to;
- local steps and steps/s, so a higher utilisation cannot come from doing fewer steps.

Swarms, one after another in the same run: wan; wan with ``[run] overlap = true``
(round r's average runs while round r+1 computes; the outer step lands one round late);
and the lan profile (1 Gbit/s, no delay, no loss) without overlap as the baseline.

Caveat: eight trainers share this machine's cores, so an inner step is several times
slower than on a dedicated machine, which flatters utilisation; the table gives the
seconds so the communication cost can be read off directly.

    sudo .venv/bin/python benchmarks/bench_utilisation.py [--rounds 4] [--inner-steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.testbed import applier
from shoal.testbed.profiles import get_profile
from shoal.testbed.swarm import ChaosRun, result

NAME = "butil"
HOSTS = [f"h{i}" for i in range(8)]
SWARMS = {"wan": ("wan", False), "wan-overlap": ("wan", True), "lan": ("lan", False)}
RUN_TIMEOUT_S = 1800


def _stats(values: list[float], digits: int = 4) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def summarise(
    results: list[dict[str, Any]], rounds: int, inner_steps: int, losses: list[float]
) -> dict[str, Any]:
    """Per-peer figures of one swarm (``results``: each trainer's result.json)."""
    wall = [float(r["wall_s"]) for r in results]
    sync = [float(r["sync_s"]) for r in results]
    flush = [float(r["sync_breakdown"]["flush_s"]) for r in results]
    compute = [w - s for w, s in zip(wall, sync, strict=True)]
    steps = [int(r["local_steps"]) for r in results]
    cpu = [float(r["cpu_s"]) for r in results]
    phases = sorted(results[0]["sync_breakdown"])
    return {
        "utilisation": _stats([c / w for c, w in zip(compute, wall, strict=True)]),
        "utilisation_steady": _stats(
            [c / (w - f) for c, w, f in zip(compute, wall, flush, strict=True)]
        ),
        "wall_s": _stats(wall, 2),
        "sync_s": _stats(sync, 2),
        "flush_s": _stats(flush, 2),
        "sync_by_phase_median_s": {
            k: round(statistics.median(float(r["sync_breakdown"][k]) for r in results), 3)
            for k in phases
        },
        "local_steps": _stats([float(s) for s in steps], 1),
        "swarm_steps": sum(steps),
        "nominal_swarm_steps": len(results) * rounds * inner_steps,
        "steps_per_s": _stats([s / w for s, w in zip(steps, wall, strict=True)], 3),
        "steps_per_compute_s": _stats([s / c for s, c in zip(steps, compute, strict=True)], 3),
        "swarm_steps_per_s": round(sum(steps) / statistics.median(wall), 2),
        # CPU seconds of each trainer (all its threads) during the loop: how much of a
        # core it got, and what a step cost, whatever else the machine was running
        "cores_per_peer": _stats([c / w for c, w in zip(cpu, wall, strict=True)], 3),
        "steps_per_cpu_s": _stats([s / c for s, c in zip(steps, cpu, strict=True)], 3),
        # where a round's time goes after its close (median over peers and rounds)
        "round_phases_median_s": _phase_medians([h for r in results for h in r["history"][:-1]]),
        "last_round_phases_median_s": _phase_medians([r["history"][-1] for r in results]),
        "rounds_completed": sorted({int(r["rounds"]) for r in results}),
        "final_hashes": len({r["final_model_hash"] for r in results}),
        # median of each peer's last logged training loss: a sanity check, not an eval
        "final_loss_median": round(statistics.median(losses), 4) if losses else None,
        "peers": [
            {k: r[k] for k in ("local_steps", "wall_s", "cpu_s", "sync_s", "sync_breakdown")}
            | {"steps_by_round": [h.get("steps") for h in r["history"]]}
            | {"phases_by_round": [h.get("phases") for h in r["history"]]}
            for r in results
        ],
    }


def measure(
    profile: str, overlap: bool, rounds: int, inner_steps: int, out: Path
) -> dict[str, Any]:
    net = applier.up(NAME, len(HOSTS), get_profile(profile))
    run_dir = out / f"{profile}-{'overlap' if overlap else 'sync'}"
    run = ChaosRun(net, run_dir, rounds=rounds, inner_steps=inner_steps,
                   deadline_s=120.0, model_kwargs={}, batch_size=16, block_size=64,
                   overlap=overlap)  # fmt: skip
    load_before = os.getloadavg()[0]
    try:
        cfgs = run.start_all(HOSTS)
        codes = run.wait_exit(HOSTS, RUN_TIMEOUT_S)
        if any(codes.values()):
            raise RuntimeError(f"trainers failed: {codes}; see {run_dir}")
        results = [result(cfgs[h]) for h in HOSTS]
    finally:
        run.close()
        applier.down(NAME)
    out_stats = summarise(
        results, rounds, inner_steps, _last_losses(cfgs[h].progress_file for h in HOSTS)
    )
    # the machine's 1-minute load around this swarm: other work on the same cores
    # slows inner steps, which shows in steps/s and flatters utilisation
    out_stats["loadavg_1m_before_after"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    return out_stats


def _phase_medians(history: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for h in history for k in h.get("phases", {})})
    return {
        k: round(statistics.median(h["phases"][k] for h in history if k in h["phases"]), 3)
        for k in keys
    }


def _last_losses(paths: Iterable[Path | None]) -> list[float]:
    losses = []
    for p in paths:
        if p is None or not p.exists():
            continue
        lines = p.read_text().strip().splitlines()
        if lines:
            losses.append(float(json.loads(lines[-1])["loss"]))
    return losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=30)
    ap.add_argument("--swarms", default=",".join(SWARMS), help="comma-separated subset")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--keep", type=Path, help="keep the trainers' dirs (logs) under here")
    args = ap.parse_args()
    names = [n for n in args.swarms.split(",") if n]
    unknown = [n for n in names if n not in SWARMS]
    if unknown:
        ap.error(f"unknown swarms {unknown}; choose from {list(SWARMS)}")
    res: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()}",
        "hosts": len(HOSTS),
        "rounds": args.rounds,
        "inner_steps": args.inner_steps,
    }
    with tempfile.TemporaryDirectory(prefix="shoal-util-") as tmp:
        out = args.keep or Path(tmp)
        for n in names:
            profile, overlap = SWARMS[n]
            res[n] = measure(profile, overlap, args.rounds, args.inner_steps, out)
            print(json.dumps({n: res[n]}), file=sys.stderr, flush=True)
    text = json.dumps(res, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
