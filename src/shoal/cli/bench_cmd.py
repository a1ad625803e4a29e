"""``shoal bench robustness``: one attack against one aggregator, next to the plain mean.

Runs in-process (one Python process, the toy task of shoal.attacks.toy_task) on the
real aggregation code, so it finishes in seconds on 2 cores; the multi-process swarm
through the real all-reduce is exercised by tests/attacks.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")


def parse_attack_params(items: list[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not k=v", param_hint="--attack-param")
        try:
            params[key] = float(value)
        except ValueError:
            msg = f"{value!r} is not a number"
            raise typer.BadParameter(msg, param_hint="--attack-param") from None
    return params


@bench_app.command("robustness")
def robustness(
    attack: Annotated[str, typer.Option(help="sign_flip, scale, gaussian, alie, replay, ...")],
    aggregator: Annotated[str, typer.Option(help="median, trimmed_mean, centered_clip, krum")],
    fraction: Annotated[float, typer.Option(help="Fraction of peers that attack.")] = 0.3,
    attack_param: Annotated[
        list[str] | None, typer.Option(help="k=v attack parameter, e.g. z=1.5; repeatable.")
    ] = None,
    peers: Annotated[int, typer.Option(help="Peers in the swarm.")] = 10,
    rounds: Annotated[int, typer.Option(help="Outer rounds.")] = 14,
    seed: Annotated[int, typer.Option(help="Seed for data, model and attackers.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Final loss: clean (plain mean, no attack) vs AGGREGATOR and plain mean under ATTACK."""
    import torch

    from shoal.aggregation import AGGREGATORS, make_aggregator
    from shoal.attacks.behaviours import make_behaviour
    from shoal.attacks.robustness import RunConfig, attacker_count, run

    params = parse_attack_params(attack_param or [])
    try:
        make_aggregator(aggregator)
        make_behaviour(attack, params)
        attackers = attacker_count(peers, fraction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if aggregator not in AGGREGATORS or peers < 3 or rounds < 1:
        raise typer.BadParameter("need --peers >= 3 and --rounds >= 1")
    torch.set_num_threads(1)  # tiny model: threads only add overhead
    cfg = RunConfig(peers=peers, rounds=rounds, seed=seed)
    err = Console(stderr=True)
    runs = [("clean", "mean", "none"), ("attacked", aggregator, attack), ("mean", "mean", attack)]
    finals: dict[str, float] = {}
    excluded = 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), console=err, transient=True
    ) as progress:
        for label, agg, att in runs:
            task = progress.add_task(f"{label}: {agg} / {att}", total=rounds)

            def tick(r: int, loss: float, t: TaskID = task) -> None:
                progress.update(t, completed=r + 1)

            res = run(cfg, agg, att, fraction, params if att != "none" else None, on_round=tick)
            finals[label] = res.final_loss
            excluded = max(excluded, res.excluded)
    result = {
        "attack": attack,
        "attack_params": params,
        "aggregator": aggregator,
        "fraction": fraction,
        "peers": peers,
        "attackers": attackers,
        "rounds": rounds,
        "clean_loss": finals["clean"],
        "attacked_loss": finals["attacked"],
        "mean_attacked_loss": finals["mean"],
        "attacked_vs_clean": finals["attacked"] / finals["clean"],
        "mean_attacked_vs_clean": finals["mean"] / finals["clean"],
        "updates_refused_by_version_check": excluded,
        "mode": "in-process, real aggregation code",
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out = Console()
    out.print(
        f"clean {finals['clean']:.4f} | {aggregator} under {attack}: {finals['attacked']:.4f} "
        f"({result['attacked_vs_clean']:.3f}x) | mean under {attack}: {finals['mean']:.4f} "
        f"({result['mean_attacked_vs_clean']:.3f}x)"
    )
