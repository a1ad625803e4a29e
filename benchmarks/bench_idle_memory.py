"""Memory of idle node processes, against a bare asyncio Python process.

Starts a swarm of real ``shoal node start`` processes on loopback, lets them reach full
membership and idle for a while, then reads each process's RSS/USS with psutil. The
baseline is a Python process that only runs an idle asyncio loop, measured in the
same run, so the table shows what shoal itself costs.

    python benchmarks/bench_idle_memory.py [--nodes 8] [--idle-s 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from shoal.runtime.local_swarm import LocalSwarm

BASELINE = "import asyncio\nasync def main():\n    await asyncio.sleep(3600)\nasyncio.run(main())\n"


def mib(n: float) -> float:
    return round(n / 2**20, 1)


def measure(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss, info.uss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    base = subprocess.Popen([sys.executable, "-c", BASELINE])
    with tempfile.TemporaryDirectory() as tmp, LocalSwarm(Path(tmp), log_level="WARNING") as s:
        try:
            s.start(args.nodes)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(len(s.alive_view(i)) == args.nodes - 1 for i in range(args.nodes)):
                    break
                time.sleep(0.5)
            time.sleep(args.idle_s)
            node = [measure(p.pid) for p in s.procs.values()]
            b_rss, b_uss = measure(base.pid)
        finally:
            base.kill()  # by its own PID, via the Popen handle
            base.wait()
    result = {
        "machine": f"{platform.machine()} {psutil.cpu_count()} cpus, {platform.python_version()}",
        "nodes": args.nodes,
        "idle_s": args.idle_s,
        "node_rss_mib_median": mib(statistics.median(r for r, _ in node)),
        "node_uss_mib_median": mib(statistics.median(u for _, u in node)),
        "node_rss_mib_max": mib(max(r for r, _ in node)),
        "baseline_asyncio_rss_mib": mib(b_rss),
        "baseline_asyncio_uss_mib": mib(b_uss),
    }
    result["rss_ratio_vs_baseline"] = round(
        result["node_rss_mib_median"] / result["baseline_asyncio_rss_mib"], 2
    )
    if args.json:
        print(json.dumps(result))
    else:
        print("| process | RSS MiB (median) | USS MiB (median) |")
        print("|---|---:|---:|")
        print(
            f"| shoal node, idle in a {args.nodes}-node swarm | {result['node_rss_mib_median']} | "
            f"{result['node_uss_mib_median']} |"
        )
        print(
            f"| bare asyncio Python (baseline) | {result['baseline_asyncio_rss_mib']} | "
            f"{result['baseline_asyncio_uss_mib']} |"
        )


if __name__ == "__main__":
    main()
