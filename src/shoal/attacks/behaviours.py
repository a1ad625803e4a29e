"""Attacker behaviours: what a Byzantine peer sends instead of its honest update.

Each behaviour gets the update the peer would honestly send (plus what colluding
attackers know) and returns a forged update, the weight it claims and the model
version it claims. The same behaviours drive the in-process robustness bench and real
attacker peer processes (``swarm_peer.py``), which push them through the all-reduce.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class AttackContext:
    honest: torch.Tensor  # this peer's honest pseudo-gradient this round
    weight: float  # the samples it honestly processed
    round_no: int
    colluders: Sequence[torch.Tensor]  # honest updates the attackers can see (their own)
    group_size: int
    attackers: int
    generator: torch.Generator  # seeded per peer, so runs replay exactly
    history: list[torch.Tensor] = field(default_factory=list)  # its earlier honest updates


@dataclass(frozen=True)
class Forged:
    update: torch.Tensor
    weight: float
    version: int


Behaviour = Callable[[AttackContext], Forged]


def _rms(x: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean(x.double() ** 2))) if x.numel() else 0.0


def alie_default_z(n: int, f: int) -> float:
    """z_max of "A Little Is Enough" (Baruch et al. 2019): the largest shift that still
    has enough honest peers on the attackers' side of the median."""
    s = n // 2 + 1 - f
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return statistics.NormalDist().inv_cdf(p)


def make_behaviour(name: str, params: Mapping[str, float] | None = None) -> Behaviour:
    """The attacker behaviour called ``name`` (see ATTACKS), with ``params`` overriding
    its defaults. Unknown names or parameters raise ValueError."""
    p = dict(params or {})

    def take(key: str, default: float) -> float:
        v = float(p.pop(key, default))
        if not math.isfinite(v):
            raise ValueError(f"attack parameter {key} must be finite, got {v}")
        return v

    if name == "none":
        b: Behaviour = lambda c: Forged(c.honest, c.weight, c.round_no)  # noqa: E731
    elif name == "sign_flip":
        s = take("scale", 1.0)
        b = lambda c: Forged(c.honest * -s, c.weight, c.round_no)  # noqa: E731
    elif name == "scale":
        s = take("factor", 100.0)
        b = lambda c: Forged(c.honest * s, c.weight, c.round_no)  # noqa: E731
    elif name == "gaussian":
        # Noise std relative to the rms of the honest update, so it suits any model.
        sigma = take("sigma", 30.0)

        def gaussian(c: AttackContext) -> Forged:
            std = sigma * max(_rms(c.honest), 1e-12)
            noise = torch.randn(c.honest.shape, generator=c.generator) * std
            return Forged(noise.to(torch.float32), c.weight, c.round_no)

        b = gaussian
    elif name == "alie":
        z_param = p.pop("z", None)

        def alie(c: AttackContext) -> Forged:
            z = float(z_param) if z_param is not None else alie_default_z(c.group_size, c.attackers)
            xs = torch.stack([x.double() for x in (c.colluders or [c.honest])])
            mu = xs.mean(0)
            sd = xs.std(0, correction=0) if xs.shape[0] > 1 else mu.abs()
            return Forged((mu - z * sd).to(torch.float32), c.weight, c.round_no)

        b = alie
    elif name == "replay":
        # Resend the update of ``lag`` rounds ago (the first one if lag is 0) as current.
        lag = int(take("lag", 0))

        def replay(c: AttackContext) -> Forged:
            if not c.history:
                return Forged(c.honest.clone(), c.weight, c.round_no)
            old = c.history[0] if lag <= 0 else c.history[max(0, len(c.history) - lag)]
            return Forged(old.clone(), c.weight, c.round_no)

        b = replay
    elif name == "free_rider":
        claim = take("claim", 10.0)
        b = lambda c: Forged(torch.zeros_like(c.honest), c.weight * claim, c.round_no)  # noqa: E731
    elif name == "wrong_version":
        off = int(take("offset", -1))
        if off == 0:
            raise ValueError("wrong_version needs a non-zero offset")

        def wrong_version(c: AttackContext) -> Forged:
            v = c.round_no + off
            return Forged(c.honest, c.weight, v if v >= 0 else c.round_no + 1)

        b = wrong_version
    else:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    if p:
        raise ValueError(f"attack {name!r} has no parameter(s) {', '.join(sorted(p))}")
    return b


ATTACKS = (
    "none",
    "sign_flip",
    "scale",
    "gaussian",
    "alie",
    "replay",
    "free_rider",
    "wrong_version",
)
