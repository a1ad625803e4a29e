"""``shoal firewall render``: print a node's nftables ruleset."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from shoal.firewall.render import DEFAULT_METRICS_PORT, FirewallError, render_ruleset

firewall_app = typer.Typer(no_args_is_help=True, help="A node's host firewall (nftables).")
err = Console(stderr=True)


@firewall_app.command("render")
def render(
    p2p_port: Annotated[int, typer.Option(help="The node's P2P listen port (open to all).")],
    metrics_from: Annotated[str, typer.Option(help="CIDR allowed to scrape metrics.")],
    metrics_port: Annotated[int, typer.Option(help="The health/metrics port.")] = (
        DEFAULT_METRICS_PORT
    ),
) -> None:
    """Print the ruleset; apply it with `nft -f -`."""
    try:
        text = render_ruleset(p2p_port, metrics_from, metrics_port)
    except FirewallError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo(text, nl=False)
