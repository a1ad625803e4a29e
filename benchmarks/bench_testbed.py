"""The namespace testbed measured from inside (root only).

Two wan hosts: ``ping -U`` RTT (user-space timing, since the delay holder sits after
the kernel's receive timestamp), one TCP flow with the profile's 1% loss and with loss
off (the shaped rate), and UDP loss at the profile's rate. The baseline is the same
measurements on the lan profile (no delay, no loss, 1 Gbit/s), in the same run.

    sudo .venv/bin/python benchmarks/bench_testbed.py [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from typing import Any

from shoal.testbed import applier
from shoal.testbed.profiles import get_profile

NAME = "bench"


def in_host(host: str, *cmd: str) -> str:
    argv = applier.exec_argv(NAME, host, list(cmd))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout


def iperf(dst: str, *extra: str) -> dict[str, Any]:
    server = subprocess.Popen(
        applier.exec_argv(NAME, "h1", ["iperf3", "-s", "-1", "-B", dst]),
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        out: dict[str, Any] = json.loads(in_host("h0", "iperf3", "-c", dst, "-J", *extra))
        return out
    finally:
        server.wait(timeout=60)


def measure(profile: str) -> dict[str, float]:
    st = applier.up(NAME, 2, get_profile(profile))
    dst = st.hosts[1].addr
    try:
        ping = in_host("h0", "ping", "-U", "-n", "-q", "-c", "100", "-i", "0.02", dst)
        m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", ping)
        assert m, ping
        tcp_lossy = iperf(dst, "-t", "8", "-O", "2")["end"]["sum_received"]["bits_per_second"]
        udp = iperf(dst, "-u", "-b", "20M", "-l", "1200", "-t", "5")["end"]["sum"]
        for h in ("h0", "h1"):
            applier.shape(NAME, h, loss_pct=0.0)
        tcp = iperf(dst, "-t", "8", "-O", "2")["end"]["sum_received"]["bits_per_second"]
    finally:
        applier.down(NAME)
    return {
        "rtt_min_ms": float(m.group(1)),
        "rtt_avg_ms": float(m.group(2)),
        "rtt_max_ms": float(m.group(3)),
        "tcp_mbit_no_loss": round(tcp / 1e6, 1),
        "tcp_mbit_profile_loss": round(tcp_lossy / 1e6, 1),
        "udp_lost_pct": round(float(udp["lost_percent"]), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {
        "machine": f"{platform.node()} {platform.machine()}",
        "wan": measure("wan"),
        "lan (baseline)": measure("lan"),
    }
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print("| metric | wan | lan (baseline) |\n|---|---|---|")
    for k in res["wan"]:
        print(f"| {k} | {res['wan'][k]} | {res['lan (baseline)'][k]} |")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    sys.exit(main())
