"""Rounds in the simulator: time per round and bytes per peer vs. a flat ring.

    .venv/bin/python benchmarks/bench_sim_rounds.py [--nodes 10,100,1000] [--rounds 3]
        [--progress]   # phase, peers done and wall time on stderr (long runs)

For each swarm size it runs ``RoundsScenario`` (DHT + SWIM + round cores, 5% of peers
crashing mid-round 0, 10% slow) and prints, per peer and round:
- the group all-reduce time and bytes (cost model: 2 (g-1)/g * model_bytes, 2 (g-1)
  latency steps) against a flat ring all-reduce over the whole swarm, whose bytes per
  peer are about the same (2 (n-1)/n * model_bytes) but whose time grows with n:
  2 (n-1) * (latency + model_bytes / (n * bandwidth));
- the control-plane bytes (DHT puts/gets of progress, round.* messages), measured as
  the encoded size of every message sent;
- the virtual median round time (training to the close + grouping + averaging);
- how the peers closed (target / peer_closed / deadline), the wall time (all of it
  and the join + settle part) and the peak RSS.
Groups average only within themselves; Moshpit-style regrouping spreads the average
over rounds, so a group round is not a full swarm average -- the ring is.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from shoal.sim.rounds_scenario import RoundsScenarioConfig, run_rounds_scenario


class _Progress:
    """Prints the phase and peers done to stderr, at most every 30 s of wall time."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last >= 30.0 or done == total:
            self.last = now
            ru = resource.getrusage(resource.RUSAGE_SELF)
            print(
                f"# {phase} {done}/{total} at {now - self.t0:.0f}s wall, "
                f"{ru.ru_utime + ru.ru_stime:.0f}s CPU, {ru.ru_maxrss / 1024:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="10,100,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--json", action="store_true", help="also print each result as JSON")
    ap.add_argument("--progress", action="store_true", help="report progress on stderr")
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        t = time.perf_counter()
        r = run_rounds_scenario(
            RoundsScenarioConfig(
                nodes=n, seed=args.seed, rounds=args.rounds, group_size=args.group_size
            ),
            progress=_Progress(t) if args.progress else None,
        )
        r.pop("round_config", None)
        if args.json:
            sys.stdout.write(json.dumps(r) + "\n")
        sys.stdout.flush()
        rows.append(r)
        print(f"# n={n} done in {time.perf_counter() - t:.1f}s wall", file=sys.stderr)
    hdr = (
        f"{'nodes':>6} {'done':>5} {'grp':>5} {'round_s':>8} {'grp_ar_s':>8} {'ring_s':>8} "
        f"{'data_MB':>8} {'ring_MB':>8} {'ctrl_KB':>8} {'swim_KB':>8} {'wall_s':>7} "
        f"{'cpu_s':>7} {'join_s':>7} {'rss_MiB':>7}  closes target/peer/deadline"
    )
    print(hdr)
    for r in rows:
        closes = r["close_reasons"]
        print(
            f"{r['nodes']:>6} {r['rounds_completed']:>2}/{r['rounds']:<2} "
            f"{r['mean_group_size']:>5} {r['median_round_s']:>8} "
            f"{r['group_allreduce_s']:>8} {r['ring_baseline_allreduce_s']:>8} "
            f"{r['data_bytes_per_peer_per_round'] / 1e6:>8.1f} "
            f"{r['ring_baseline_bytes_per_peer'] / 1e6:>8.1f} "
            f"{r['control_bytes_per_peer_per_round'] / 1e3:>8.1f} "
            f"{r['swim_bytes_per_peer_per_round'] / 1e3:>8.1f} "
            f"{r['wall_s']:>7} {r['cpu_s']:>7} {r['join_wall_s']:>7} {r['peak_rss_mib']:>7}  "
            f"{closes.get('target', 0)}/{closes.get('peer_closed', 0)}/{closes.get('deadline', 0)}"
        )


if __name__ == "__main__":
    main()
