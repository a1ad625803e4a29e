"""``shoal sim``: run protocol cores in the deterministic simulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

sim_app = typer.Typer(no_args_is_help=True, help="Deterministic simulations.")


@sim_app.command("dht")
def sim_dht(
    nodes: Annotated[int, typer.Option(help="Simulated peers.")] = 1000,
    seed: Annotated[int, typer.Option(help="RNG seed; the same seed replays exactly.")] = 1,
    crash_fraction: Annotated[float, typer.Option(help="Fraction of peers to crash.")] = 0.1,
    lookups: Annotated[int, typer.Option(help="Random lookups to measure.")] = 1000,
    loss: Annotated[float, typer.Option(help="Packet loss probability.")] = 0.0,
    trace: Annotated[Path | None, typer.Option(help="Write the event trace here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Bootstrap a DHT + SWIM swarm, measure lookups, crash peers, time convergence."""
    from shoal.sim.dht_scenario import DhtScenario, ScenarioConfig

    if nodes < 2:
        raise typer.BadParameter("need at least 2 nodes", param_hint="--nodes")
    if not 0.0 <= crash_fraction < 1.0:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--crash-fraction")
    cfg = ScenarioConfig(
        nodes=nodes, seed=seed, crash_fraction=crash_fraction, lookups=lookups, loss=loss
    )
    console = Console(stderr=True)
    trace_f = open(trace, "w") if trace else None  # noqa: SIM115 - closed below
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task("simulating", total=None)

            def report(phase: str, done: int, total: int) -> None:
                progress.update(task, description=phase, completed=done, total=total)

            result = DhtScenario(cfg, trace_file=trace_f, progress=report).run()
    finally:
        if trace_f:
            trace_f.close()
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for k, v in result.items():
            Console().print(f"[bold]{k}[/]: {v}")


@sim_app.command("rounds")
def sim_rounds(
    nodes: Annotated[int, typer.Option(help="Simulated peers.")] = 100,
    seed: Annotated[int, typer.Option(help="RNG seed; the same seed replays exactly.")] = 1,
    rounds: Annotated[int, typer.Option(help="Outer rounds to run.")] = 3,
    group_size: Annotated[int, typer.Option(help="Moshpit group size.")] = 16,
    dead_fraction: Annotated[float, typer.Option(help="Peers that crash mid-round 0.")] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """DiLoCo outer rounds (round core + DHT + SWIM) with a cost-modelled data plane."""
    from shoal.sim.rounds_scenario import RoundsScenarioConfig, run_rounds_scenario

    if nodes < 2 or rounds < 1 or group_size < 1:
        raise typer.BadParameter("need --nodes >= 2, --rounds >= 1, --group-size >= 1")
    cfg = RoundsScenarioConfig(
        nodes=nodes, seed=seed, rounds=rounds, group_size=group_size, dead_fraction=dead_fraction
    )
    result = run_rounds_scenario(cfg)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for k, v in result.items():
            Console().print(f"[bold]{k}[/]: {v}")
