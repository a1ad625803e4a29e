"""``shoal chain`` (serve the dev chain) and ``shoal verify`` (a checkpoint's lineage)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

ledger_app = typer.Typer(add_completion=False)
out = Console()
err = Console(stderr=True)

RPC_INFO = Path("chain") / "rpc.json"


@ledger_app.command("chain")
def chain_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the chain persists.")],
    port: Annotated[int, typer.Option(help="Loopback port (0 picks a free one).")] = 8545,
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the embedded dev chain over JSON-RPC on loopback, persisted in DATA_DIR."""
    from shoal.ledger.devchain import DevChain
    from shoal.ledger.rpc_server import make_server

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        dev = DevChain(data_dir / "chain")
        server = make_server(dev, host, port)
    except (OSError, ValueError, RuntimeError) as exc:
        err.print(f"[red]cannot start the dev chain:[/red] {exc}")
        raise typer.Exit(2) from exc
    url = f"http://{host}:{server.server_address[1]}"
    info = data_dir / RPC_INFO
    info.write_text(json.dumps({"url": url}) + "\n")
    err.print(f"dev chain on {url} (data in {data_dir / 'chain'})")
    sys.stdout.write(url + "\n")
    sys.stdout.flush()

    def _stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        dev.close()
        info.unlink(missing_ok=True)


@ledger_app.command("verify")
def verify_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors).")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Holds feeds, ledger/chain.json, chain/.")
    ],
    chain_rpc: Annotated[
        str | None, typer.Option("--chain-rpc", help="Read anchors from this JSON-RPC URL.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Prove CHECKPOINT's lineage: model hash -> round aggregate -> signed commitments ->
    on-chain anchor. Exits 1 naming the first mismatch."""
    from shoal.ledger.backends import open_run_chain
    from shoal.ledger.verify import LineageError, find_feed_files, verify_lineage

    dev = None
    failure: tuple[str, str] | None = None
    try:
        ledger, dev = open_run_chain(data_dir, chain_rpc)
        report = verify_lineage(checkpoint, find_feed_files(data_dir), ledger)
    except LineageError as exc:
        failure = (exc.step, exc.message)
    except Exception as exc:  # web3/requests raise many types for a dead endpoint
        failure = ("setup", f"{type(exc).__name__}: {exc}")
    finally:
        if dev is not None:
            dev.close()
    if failure is not None:
        _fail(as_json, *failure)
    if as_json:
        doc: dict[str, Any] = {
            "ok": True, "checkpoint": str(checkpoint), "model_hash": report.model_hash,
            "round": report.round, "run": report.run, "feeds_root": report.feeds_root,
            "contributors": [[str(p), s, d] for p, s, d in report.contributors],
            "steps": report.steps, "warnings": report.warnings,
        }  # fmt: skip
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    table = Table(title=f"lineage of {checkpoint.name}: VERIFIED")
    table.add_column("step")
    table.add_column("result")
    for step, detail in report.steps:
        table.add_row(f"[green]✓[/green] {step}", detail)
    out.print(table)
    contrib = Table(title=f"round {report.round} contributors")
    for col in ("peer", "samples", "update hash"):
        contrib.add_column(col)
    for p, s, d in report.contributors:
        contrib.add_row(str(p), str(s), d[:16] + "…")
    out.print(contrib)
    for w in report.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}")


def _fail(as_json: bool, step: str, message: str) -> NoReturn:
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "step": step, "error": message}) + "\n")
    else:
        err.print(f"[red]VERIFY FAILED at {step}:[/red] {message}")
    raise typer.Exit(1)
