"""The local-swarm demo: N real node processes on loopback find each other."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shoal.runtime.local_swarm import LocalSwarm

CONVERGE_TIMEOUT_S = 60.0


def run_membership_demo(
    nodes: int, out_dir: Path | None, as_json: bool, out: Console, err: Console
) -> None:
    root = out_dir or Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    t0 = time.monotonic()
    with LocalSwarm(root, log_level="WARNING") as swarm, Progress(console=err) as progress:
        task = progress.add_task("starting nodes", total=nodes)
        swarm.start_node(0)
        swarm.bootstrap = swarm.wait_info(0)["contact"]
        progress.advance(task)
        for i in range(1, nodes):
            swarm.start_node(i)
        for i in range(1, nodes):
            swarm.wait_info(i)
            progress.advance(task)
        ids = {i: swarm.wait_info(i)["peer_id"] for i in range(nodes)}
        conv = progress.add_task("waiting for full membership", total=nodes)
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        views: dict[int, set[str]] = {}
        while time.monotonic() < deadline:
            views = {i: swarm.alive_view(i) for i in range(nodes)}
            done = sum(views[i] >= set(ids.values()) - {ids[i]} for i in range(nodes))
            progress.update(conv, completed=done)
            if done == nodes:
                break
            time.sleep(0.25)
        converged_s = time.monotonic() - t0
        summary = {
            "nodes": nodes,
            "converged": all(views[i] >= set(ids.values()) - {ids[i]} for i in range(nodes)),
            "seconds": round(converged_s, 2),
            "peers": {ids[i]: sorted(views.get(i, set())) for i in range(nodes)},
            "data_dir": str(root),
        }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table(title=f"shoal local swarm: {nodes} nodes on loopback")
    table.add_column("node")
    table.add_column("peer id")
    table.add_column("alive peers it sees")
    for i in range(nodes):
        table.add_row(str(i), ids[i][:16] + "…", str(len(views.get(i, set()))))
    out.print(table)
    state = "[green]converged[/]" if summary["converged"] else "[red]did NOT converge[/]"
    out.print(f"membership {state} in {summary['seconds']} s; data in {root}")
