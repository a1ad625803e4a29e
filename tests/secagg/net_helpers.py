"""In-process SecAgg groups over real Transports on 127.0.0.1 (one event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import torch

from shoal.averaging import AllReduceResult
from shoal.secagg.group_driver import CollectorRun, MemberRun, secure_average
from shoal.secagg.transport_host import TransportHost
from tests.averaging import helpers as averaging_helpers

T = TypeVar("T")
TIMEOUT_S = 10.0


def run(coro: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
    """The all-reduce tests' bounded asyncio.run, with SecAgg's longer default."""
    return averaging_helpers.run(coro, timeout)


async def hosts(n: int) -> list[TransportHost]:
    hs = [TransportHost() for _ in range(n)]
    for h in hs:
        await h.start()
    hs.sort(key=lambda h: h.contact.peer_id)  # group order = peer-id order
    return hs


def inputs(n: int, k: int, seed: int = 0, scale: float = 0.01) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, generator=g) * scale for _ in range(n)]


def weighted_mean(xs: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    return sum((x.double() * w for x, w in zip(xs, ws, strict=True)), torch.zeros(1)) / sum(ws)


async def group_average(
    hs: list[TransportHost],
    xs: list[torch.Tensor],
    ws: list[float],
    *,
    session: str = "s",
    members: dict[int, type[MemberRun]] | None = None,
    collector: type[CollectorRun] = CollectorRun,
    compression: str = "none",
    timeout_s: float = TIMEOUT_S,
) -> list[AllReduceResult | BaseException]:
    """Every host runs secure_average; member i may play ``members[i]``."""
    group = [h.contact for h in hs]
    members = members or {}
    jobs = [
        secure_average(
            h, group, session, x, ws, compression=compression, timeout_s=timeout_s,
            probe_interval_s=0.3, member_type=members.get(i, MemberRun),
            collector_type=collector,
        )
        for i, (h, x) in enumerate(zip(hs, xs, strict=True))
    ]  # fmt: skip
    try:
        return list(await asyncio.gather(*jobs, return_exceptions=True))
    finally:
        for h in hs:
            await h.aclose()
