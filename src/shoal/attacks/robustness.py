"""In-process DiLoCo rounds under attack, on the real aggregation code.

Runs ``n`` peers on the toy task in one process: each round every peer starts from
the global parameters, takes its inner steps, and sends its pseudo-gradient; the last
``round(fraction * n)`` peers replace theirs by an attacker behaviour. Updates whose
claimed model version is wrong are dropped, as the all-reduce does at announce time;
the rest go through the chosen aggregator (the same code the data plane's shard owners
run, given whole vectors), then the outer Nesterov step. Used by
``shoal bench robustness`` and the tests; the multi-process variant that goes through
the real all-reduce is ``swarm_peer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from shoal.aggregation import make_aggregator
from shoal.attacks.behaviours import AttackContext, make_behaviour
from shoal.attacks.toy_task import eval_loss, local_steps, make_data, make_model
from shoal.training.diloco_math import (
    OuterOptimizer,
    UpdateRejected,
    flatten_params,
    pseudo_gradient,
    unflatten_into,
    validate_update,
)


@dataclass(frozen=True)
class RunConfig:
    peers: int = 10
    rounds: int = 14
    inner_steps: int = 8
    batch: int = 32
    inner_lr: float = 0.03
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    seed: int = 0


@dataclass
class RunResult:
    final_loss: float
    losses: list[float] = field(default_factory=list)
    excluded: int = 0  # updates dropped by the version/finiteness check


def attacker_count(peers: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return round(fraction * peers)


def run(
    cfg: RunConfig,
    aggregator: str,
    attack: str = "none",
    fraction: float = 0.0,
    attack_params: Mapping[str, float] | None = None,
    on_round: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train for ``cfg.rounds`` rounds; the final eval loss is the figure of merit."""
    agg = make_aggregator(aggregator, byzantine_fraction=max(fraction, 0.1))
    behaviour = make_behaviour(attack, attack_params)
    f = attacker_count(cfg.peers, fraction) if attack != "none" else 0
    data = make_data(cfg.peers, seed=cfg.seed)
    models = [make_model(cfg.seed) for _ in range(cfg.peers)]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.inner_lr) for m in models]
    gens = [torch.Generator().manual_seed(cfg.seed * 1000 + i) for i in range(cfg.peers)]
    attack_gens = [torch.Generator().manual_seed(cfg.seed * 1000 + 500 + i) for i in range(f)]
    history: list[list[torch.Tensor]] = [[] for _ in range(f)]
    global_flat = flatten_params(models[0].parameters())
    outer = OuterOptimizer(lr=cfg.outer_lr, momentum=cfg.outer_momentum)
    result = RunResult(final_loss=float("nan"))
    for rnd in range(cfg.rounds):
        honest: list[torch.Tensor] = []
        weights: list[float] = []
        for i, (m, opt) in enumerate(zip(models, opts, strict=True)):
            unflatten_into(global_flat, m.parameters())
            n = local_steps(m, opt, data.shards[i], cfg.inner_steps, cfg.batch, gens[i])
            honest.append(pseudo_gradient(global_flat, flatten_params(m.parameters())))
            weights.append(float(n))
        parts: list[torch.Tensor | None] = list(honest)
        first_bad = cfg.peers - f
        colluders = honest[first_bad:]
        for a in range(f):
            i = first_bad + a
            ctx = AttackContext(
                honest=honest[i], weight=weights[i], round_no=rnd, colluders=colluders,
                group_size=cfg.peers, attackers=f, generator=attack_gens[a], history=history[a],
            )  # fmt: skip
            forged = behaviour(ctx)
            history[a].append(honest[i])
            try:
                validate_update(forged.update, global_flat.numel(), rnd, forged.version)
            except UpdateRejected:
                parts[i] = None
                result.excluded += 1
                continue
            parts[i] = forged.update
            weights[i] = forged.weight
        avg = agg.aggregate(parts, weights)
        outer.step(global_flat, avg)
        unflatten_into(global_flat, models[0].parameters())
        loss = eval_loss(models[0], data)
        result.losses.append(loss)
        if on_round is not None:
            on_round(rnd, loss)
    result.final_loss = result.losses[-1] if result.losses else float("nan")
    return result
