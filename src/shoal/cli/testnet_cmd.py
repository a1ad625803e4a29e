"""``shoal testnet``: a WAN of network namespaces on this machine (root only)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shoal.testbed import applier, kernel
from shoal.testbed.plan import PlanError, make_plan, parse_partition
from shoal.testbed.profiles import PROFILES, get_profile

testnet_app = typer.Typer(
    no_args_is_help=True, help="Network namespaces with shaped, delayed, lossy links."
)
out = Console()
err = Console(stderr=True)

Name = Annotated[
    str, typer.Option("--name", help="Testnet name; namespaces are shoal-NAME-h0, ...")
]


def _fail(msg: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {msg}")
    return typer.Exit(1)


@testnet_app.command("up")
def up(
    hosts: Annotated[int, typer.Option(help="Number of hosts (h0, h1, ...).")] = 4,
    profile: Annotated[str, typer.Option(help=f"Link profile: {'|'.join(PROFILES)}.")] = "wan",
    name: Name = "tn",
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Build the testnet (a no-op when it is already up with the same shape)."""
    try:
        prof = get_profile(profile)
        with err.status(f"building {hosts} hosts ({profile})"):
            applier.up(name, hosts, prof)
    except (applier.TestbedError, PlanError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _print_status(name, as_json)


@testnet_app.command("down")
def down(name: Name = "tn") -> None:
    """Remove every namespace, rule and process of the testnet (idempotent)."""
    try:
        removed = applier.down(name)
    except applier.TestbedError as exc:
        raise _fail(str(exc)) from None
    out.print(f"removed {len(removed)} namespaces" if removed else "nothing to remove")


@testnet_app.command("status")
def status(
    name: Name = "tn",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Hosts, addresses, links, partition and processes."""
    _print_status(name, as_json)


def _print_status(name: str, as_json: bool) -> None:
    try:
        st = applier.status(name)
    except applier.TestbedError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(st))
        return
    if not st["up"]:
        out.print(f"testnet {name}: down" if "hosts" not in st else f"testnet {name}: broken")
        if "hosts" not in st:
            return
    table = Table(title=f"testnet {name} ({st.get('delay')} delay)")
    for col in ("host", "addr", "Mbit/s", "loss %", "delayer", "pids"):
        table.add_column(col)
    for h in st["hosts"]:  # type: ignore[attr-defined]
        table.add_row(
            h["name"], h["addr"], f"{h['rate_mbit']:g}", f"{h['loss_pct']:g}",
            "alive" if h["delayer_alive"] else "-", " ".join(map(str, h["pids"])),
        )  # fmt: skip
    out.print(table)
    if st.get("partition"):
        out.print("partition: " + " | ".join(",".join(g) for g in st["partition"]))  # type: ignore[attr-defined]


@testnet_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def exec_(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="Host name, e.g. h0.")],
    name: Name = "tn",
) -> None:
    """Run a command inside HOST: shoal testnet exec h0 -- ping 10.231.0.2"""
    cmd = [a for a in ctx.args]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        argv = applier.exec_argv(name, host, cmd)
    except (applier.TestbedError, PlanError) as exc:
        raise _fail(str(exc)) from None
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # same PID: the caller can signal or wait on it directly


@testnet_app.command("partition")
def partition(
    spec: Annotated[str, typer.Argument(help="Groups, e.g. h0,h1/h2,h3.")],
    name: Name = "tn",
) -> None:
    """Cut every link between hosts of different groups (nftables drop rules)."""
    try:
        st = applier.load_running(name)
        groups = parse_partition(spec, make_plan(name, len(st.hosts), st.profile))
        applier.partition(name, groups)
    except (applier.TestbedError, PlanError) as exc:
        raise _fail(str(exc)) from None
    out.print("partitioned: " + " | ".join(",".join(g) for g in groups))


@testnet_app.command("heal")
def heal(name: Name = "tn") -> None:
    """Remove the partition."""
    try:
        applier.heal(name)
    except applier.TestbedError as exc:
        raise _fail(str(exc)) from None
    out.print("healed")


@testnet_app.command("kill")
def kill(host: Annotated[str, typer.Argument(help="Host name.")], name: Name = "tn") -> None:
    """SIGKILL every process running on HOST (the host crashes; its links stay)."""
    try:
        pids = applier.kill_host(name, host)
    except (applier.TestbedError, PlanError) as exc:
        raise _fail(str(exc)) from None
    out.print(f"killed {len(pids)} processes on {host}")


@testnet_app.command("shape")
def shape(
    host: Annotated[str, typer.Argument(help="Host name.")],
    rate_mbit: Annotated[float | None, typer.Option(help="New bandwidth, both ways.")] = None,
    loss_pct: Annotated[float | None, typer.Option(help="New input loss in percent.")] = None,
    name: Name = "tn",
) -> None:
    """Change one host's link: bandwidth or loss."""
    try:
        applier.shape(name, host, rate_mbit, loss_pct)
    except (applier.TestbedError, PlanError) as exc:
        raise _fail(str(exc)) from None
    out.print(f"{host}: rate {rate_mbit} Mbit/s, loss {loss_pct} %")


@testnet_app.command("check")
def check(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Report what this machine's kernel and tools support for the testbed."""
    feats = kernel.probe()
    method = kernel.delay_method(feats)
    missing = kernel.missing_required(feats)
    if as_json:
        out.print_json(json.dumps({
            "features": [f.__dict__ for f in feats], "delay": method,
            "usable": not missing and method is not None,
        }))  # fmt: skip
    else:
        table = Table(title="testbed support")
        for col in ("feature", "ok", "needed", "detail"):
            table.add_column(col)
        for f in feats:
            ok = "[green]yes[/green]" if f.ok else "[red]no[/red]"
            table.add_row(f.name, ok, "required" if f.required else "optional", f.detail)
        out.print(table)
        out.print(f"delay method: {method or 'none available'}")
    if missing or method is None:
        raise typer.Exit(1)
