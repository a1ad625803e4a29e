"""``shoal demo``: rich progress per node, then the result table."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from shoal.training.demo import DemoConfig, run_demo


def run_training_demo(
    nodes: int, rounds: int, out_dir: Path | None, as_json: bool, out: Console, err: Console
) -> None:
    root = out_dir or Path(tempfile.mkdtemp(prefix="shoal-demo-"))
    cfg = DemoConfig(nodes=nodes, rounds=rounds, out=root)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("round {task.fields[round]}/{task.total} loss {task.fields[loss]}"),
        console=err,
    ) as progress:
        tasks = [
            progress.add_task(f"node {i}", total=rounds, round=0, loss="-") for i in range(nodes)
        ]

        def update(i: int, p: dict[str, Any]) -> None:
            if p:
                progress.update(
                    tasks[i], completed=p["round"], round=p["round"], loss=f"{p['loss']:.3f}"
                )

        err.print(f"starting {nodes} nodes on loopback; data in {root}")
        result = run_demo(cfg, update)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table(title=f"shoal DiLoCo demo: {result['peers']} peers, {result['rounds']} rounds")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("held-out loss, swarm model", f"{result['swarm_loss']:.4f}"),
        (
            f"held-out loss, one node alone ({result['local_steps_per_peer']} steps)",
            f"{result['single_node_loss']:.4f}",
        ),
        ("held-out loss at start", f"{result['initial_loss']:.4f}"),
        ("bytes sent by the swarm", f"{result['bytes_sent']:,}"),
        ("bytes per-step DDP would send", f"{result['ddp_equivalent_bytes']:,}"),
        ("communication reduction", f"{result['communication_ratio']}x"),
        ("identical model hash on every peer, every round", str(result["model_hashes_equal"])),
        ("model parameters", f"{result['params']:,}"),
        ("swarm wall time", f"{result['swarm_wall_s']} s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    out.print(f"final checkpoint: {result['checkpoint']}")
    if result.get("verify_checkpoint"):
        out.print(
            f"ledger: rounds {result['anchored_rounds']} anchored on-chain; overhead "
            f"{result['ledger_overhead_pct_median']}% of node time (median)"
        )
        out.print(f"check it: shoal verify {result['verify_checkpoint']} --data-dir {root}")
