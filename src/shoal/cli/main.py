"""``shoal``: run a node, inspect it, and run the simulator.

The CLI is the only place that prints; the library logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from shoal.cli.bench_cmd import bench_app
from shoal.cli.firewall_cmd import firewall_app
from shoal.cli.ledger_cmd import ledger_app
from shoal.cli.sim_cmd import sim_app
from shoal.cli.testnet_cmd import testnet_app
from shoal.identity import KeyFileError
from shoal.runtime import control
from shoal.wire.contact import Contact, split_addr

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
node_app = typer.Typer(no_args_is_help=True, help="Run a node.")
dht_app = typer.Typer(no_args_is_help=True, help="Store and fetch DHT records via a running node.")
app.add_typer(node_app, name="node")
app.add_typer(dht_app, name="dht")
app.add_typer(sim_app, name="sim")
app.add_typer(testnet_app, name="testnet")
app.add_typer(firewall_app, name="firewall")
app.add_typer(ledger_app)  # top-level `shoal chain`, `shoal verify`
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The node's data directory.")]
HealthListen = Annotated[
    str | None, typer.Option(help="HOST:PORT to serve /healthz, /readyz and /metrics on.")
]
Profile = Annotated[str, typer.Option(help="'default', or 'edge': memory cap, small batches.")]
MemoryMb = Annotated[int | None, typer.Option(help="Edge profile's memory cap in MiB.")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
    )


@node_app.command("start")
def node_start(
    data_dir: DataDir,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0 picks one).")] = (
        "127.0.0.1:0"
    ),
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="PEERID@HOST:PORT of a known peer; repeatable.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    health_listen: HealthListen = None,
    profile: Profile = "default",
    memory_mb: MemoryMb = None,
    serve_model: Annotated[
        Path | None, typer.Option(help="Inference only: serve the newest verified checkpoint here.")
    ] = None,
    serve_listen: Annotated[str, typer.Option(help="HOST:PORT for POST /predict.")] = (
        "127.0.0.1:8081"
    ),
    follow_run: Annotated[
        str | None, typer.Option(help="Inference only: serve this run's current model.")
    ] = None,
) -> None:
    """Join the swarm and log membership changes until stopped (SIGINT/SIGTERM)."""
    from shoal.cli.node_cmd import choose_profile, run_node
    from shoal.runtime.node import Node, NodeConfig

    _setup_logging(log_level)
    choose_profile(profile, memory_mb)
    try:
        host, port = split_addr(listen)
        boots = [Contact.parse(b) for b in bootstrap or []]
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        node = Node(
            NodeConfig(data_dir=data_dir, listen_host=host, listen_port=port, bootstrap=boots)
        )
    except KeyFileError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await run_node(
            node, health_listen=health_listen, serve_model=serve_model,
            serve_listen=serve_listen, follow_run=follow_run,
        )  # fmt: skip

    try:
        asyncio.run(main())
    except OSError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _request(data_dir: Path, req: dict[str, object]) -> dict[str, object]:
    try:
        reply = control.request(data_dir, req)
    except (ConnectionError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if not reply.get("ok"):
        err.print(f"[red]error:[/] {reply.get('error')}")
        raise typer.Exit(1)
    return reply


@app.command("peers")
def peers(
    data_dir: DataDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the peers the node running on DATA_DIR knows, with their SWIM state."""
    reply = _request(data_dir, {"cmd": "peers"})
    rows = reply["peers"]
    assert isinstance(rows, list)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table(title=f"{len(rows)} peers")
    for col in ("peer id", "address", "state", "incarnation"):
        table.add_column(col)
    colors = {"alive": "green", "suspect": "yellow", "dead": "red"}
    for p in sorted(rows, key=lambda r: (r["state"], r["peer_id"])):
        c = colors.get(p["state"], "white")
        table.add_row(p["peer_id"], p["addr"], f"[{c}]{p['state']}[/]", str(p["incarnation"]))
    out.print(table)


@dht_app.command("put")
def dht_put(data_dir: DataDir, key: str, value: str) -> None:
    """Publish a signed record under KEY through the running node."""
    reply = _request(data_dir, {"cmd": "put", "key": key, "value": value})
    out.print(f"stored on {reply['stored']} peers")


@dht_app.command("get")
def dht_get(
    data_dir: DataDir,
    key: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fetch the records stored under KEY."""
    reply = _request(data_dir, {"cmd": "get", "key": key})
    values = reply["values"]
    assert isinstance(values, list)
    if as_json:
        sys.stdout.write(json.dumps(values) + "\n")
        return
    if not values:
        err.print("no records")
        raise typer.Exit(1)
    for v in values:
        out.print(f"{v['publisher']}: {v['value']}")


@app.command("train")
def train(
    config: Annotated[Path, typer.Option("--config", help="The run's TOML file.")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    health_listen: HealthListen = None,
    profile: Profile = "default",
    memory_mb: MemoryMb = None,
    listen: Annotated[str | None, typer.Option(help="Override [node] listen.")] = None,
    rank: Annotated[int | None, typer.Option(help="Override [data] rank (pod ordinal).")] = None,
) -> None:
    """Join a training run described by a TOML config and train with the swarm."""
    from shoal.cli.node_cmd import (
        choose_profile,
        edge_run_config,
        memory_guard,
        override_run_config,
    )
    from shoal.training.run_config import ConfigError, load_run_config
    from shoal.training.runner import run_training

    _setup_logging(log_level)
    edge = choose_profile(profile, memory_mb)
    with memory_guard(edge, err):
        try:
            cfg = load_run_config(config)
            override_run_config(cfg, listen=listen, rank=rank)
            cfg.build_model()  # fail fast on a bad factory, before joining the swarm
        except ConfigError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        if edge is not None:
            edge_run_config(cfg, edge)
        result = run_training(cfg, health_listen=health_listen)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        out.print(
            f"trained {result['rounds']} rounds; final model {result['final_model_hash'][:16]} "
            f"in {result['checkpoint']}"
        )
        if result.get("privacy"):
            out.print(f"privacy spent: {json.dumps(result['privacy'])}")


@app.command("demo")
def demo(
    nodes: Annotated[int, typer.Option(help="Node processes to start.")] = 4,
    rounds: Annotated[int, typer.Option(help="Outer DiLoCo rounds.")] = 10,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where node data goes.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train a small character-level transformer with a local swarm on loopback."""
    from shoal.cli.demo_cmd import run_training_demo

    if nodes < 1 or rounds < 1:
        raise typer.BadParameter("--nodes and --rounds must be >= 1")
    logging.basicConfig(level="WARNING", handlers=[RichHandler(console=err, show_path=False)])
    run_training_demo(nodes, rounds, out_dir, as_json, out, err)


if __name__ == "__main__":
    app()
