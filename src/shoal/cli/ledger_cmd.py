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


admin_app = typer.Typer(
    no_args_is_help=True, help="Set up a run on a chain and admit nodes (any JSON-RPC node)."
)
ledger_app.add_typer(admin_app, name="ledger")

ChainRpc = Annotated[str, typer.Option("--chain-rpc", help="The chain's JSON-RPC URL.")]
ChainKey = Annotated[
    Path | None,
    typer.Option("--chain-key", help="Hex private key file (0600); else $SHOAL_CHAIN_KEY."),
]


def _admin_fail(exc: Exception) -> NoReturn:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@admin_app.command("create-run")
def create_run_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the run record goes.")],
    chain_rpc: ChainRpc,
    run: Annotated[str, typer.Option(help="Run name (the run id is its SHA-256).")],
    chain_key: ChainKey = None,
    min_stake: Annotated[int, typer.Option(help="Wei to stake; 0 = allow-list.")] = 0,
    contract: Annotated[
        str | None, typer.Option(help="An already deployed ShoalLedger; else deploy one.")
    ] = None,
    evm_version: Annotated[
        str, typer.Option(help="EVM version to compile for (shanghai for older nodes).")
    ] = "shanghai",
) -> None:
    """Deploy the contract (or use --contract), create RUN, write DATA_DIR/ledger/chain.json."""
    import hashlib

    from shoal.ledger.backends import ChainRecord, load_chain_key, rpc_web3
    from shoal.ledger.chain import POLICY_ALLOWLIST, POLICY_STAKE, ChainLedger, deploy_contract

    try:
        account = load_chain_key(chain_key)
        w3 = rpc_web3(chain_rpc)
        address = contract or deploy_contract(w3, account, evm_version)
        run_id = hashlib.sha256(run.encode()).digest()
        owner = ChainLedger(w3, account, address, run_id)
        owner.create_run(POLICY_STAKE if min_stake else POLICY_ALLOWLIST, min_stake)
        ChainRecord(address, run_id.hex(), w3.eth.chain_id, evm_version, chain_rpc).save(data_dir)
    except Exception as exc:  # web3 and the chain raise many types; report, do not trace
        _admin_fail(exc)
    out.print(f"run {run!r} ({run_id.hex()[:16]}…) on contract {address}")
    out.print(f"record: {data_dir / 'ledger' / 'chain.json'}")


@admin_app.command("allow")
def allow_cmd(
    account: Annotated[str, typer.Argument(help="Ethereum address to allow-list.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Holds the run record.")],
    chain_key: ChainKey = None,
) -> None:
    """Allow-list an account for the run (the run owner's key signs)."""
    from shoal.ledger.backends import ChainRecord, load_chain_key, rpc_web3
    from shoal.ledger.chain import ChainLedger

    try:
        rec = ChainRecord.load(data_dir)
        lg = ChainLedger(rpc_web3(rec.rpc_url), load_chain_key(chain_key), rec.contract,
                         bytes.fromhex(rec.run_id))  # fmt: skip
        lg.allow(account)
    except Exception as exc:
        _admin_fail(exc)
    out.print(f"allowed {account}")


@admin_app.command("join")
def join_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The node's data directory.")],
    record: Annotated[Path, typer.Option(help="The run's ledger/chain.json.")],
    chain_key: ChainKey = None,
    stake: Annotated[int, typer.Option(help="Wei to stake (stake runs).")] = 0,
) -> None:
    """Register this node's Ed25519 key for the run and set its data dir up for the
    ledger (it then commits, checks and anchors every round it trains)."""
    from shoal.identity.keys import Identity
    from shoal.ledger.backends import ChainRecord, load_chain_key, rpc_web3, write_chain_key
    from shoal.ledger.chain import ChainLedger
    from shoal.ledger.training_hook import CHAIN_KEY_PATH

    try:
        rec = ChainRecord.load_file(record)
        if not rec.rpc_url:
            raise ValueError(f"{record} names no rpc_url")
        account = load_chain_key(chain_key)
        ident = Identity.load_or_create(data_dir / "node.key")
        lg = ChainLedger(rpc_web3(rec.rpc_url), account, rec.contract, bytes.fromhex(rec.run_id))
        if not lg.is_admitted(ident.peer_id):
            lg.register_peer(ident.peer_id, stake=stake)
        if chain_key is not None:
            write_chain_key(data_dir / CHAIN_KEY_PATH, bytes(account.key))
        rec.save(data_dir)
    except Exception as exc:
        _admin_fail(exc)
    out.print(f"node {ident.peer_id} admitted; ledger on for {data_dir}")
