"""Swarm fixtures for all-reduce tests: real Transports on 127.0.0.1 in one loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from shoal.averaging import AllReduce, AllReduceResult, BulkRouter
from shoal.identity.keys import Identity, PeerId
from shoal.transport import Transport
from shoal.wire.codec import Codec
from shoal.wire.contact import Contact

T = TypeVar("T")
TIMEOUT_S = 20.0


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """asyncio.run with an overall timeout, asserting no task outlives the test body."""

    async def main() -> T:
        async with asyncio.timeout(timeout):
            result = await coro
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"tasks left running: {leftover}"
        return result

    return asyncio.run(main())


@dataclass
class Member:
    identity: Identity = field(default_factory=Identity.generate)
    bad: list[tuple[PeerId | None, str]] = field(default_factory=list)
    transport: Transport = field(init=False)
    router: BulkRouter = field(init=False)

    def __post_init__(self) -> None:
        self.transport = Transport(
            self.identity,
            Codec(),
            on_message=lambda c, m: None,
            on_bad_peer=lambda p, r: self.bad.append((p, r)),
        )
        self.router = BulkRouter(self.transport)

    @property
    def contact(self) -> Contact:
        return self.transport.contact

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id


async def swarm(n: int) -> list[Member]:
    """``n`` started members, sorted by peer id (the order all_reduce expects)."""
    members = [Member() for _ in range(n)]
    for m in members:
        await m.transport.start("127.0.0.1", 0)
    return sorted(members, key=lambda m: m.peer_id)


async def close(members: Sequence[Member]) -> None:
    for m in members:
        await m.transport.aclose()


def tensors(n: int, numel: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(numel, generator=g) * (i + 1) for i in range(n)]


def direct_average(xs: Sequence[torch.Tensor], ws: Sequence[float]) -> torch.Tensor:
    """The weighted average in float64, as the reference."""
    acc = torch.zeros(xs[0].numel(), dtype=torch.float64)
    for x, w in zip(xs, ws, strict=True):
        acc += x.double() * w
    return (acc / sum(ws)).float()


async def reduce_all(
    members: Sequence[Member],
    xs: Sequence[torch.Tensor],
    ws: Sequence[float],
    session: str,
    *,
    compression: str = "none",
    version: int = 7,
    timeout_s: float = TIMEOUT_S,
    jobs: Sequence[type[AllReduce]] | None = None,
    probe_interval_s: float = 0.2,
) -> list[AllReduceResult | BaseException]:
    """Run one all-reduce at every member concurrently; exceptions are returned."""
    group = [m.contact for m in members]
    kinds = list(jobs) if jobs is not None else [AllReduce] * len(members)
    runs = [
        kind(
            m.router,
            m.contact,
            group,
            session,
            x,
            w,
            compression=compression,
            model_version=version,
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
        ).run()
        for kind, m, x, w in zip(kinds, members, xs, ws, strict=True)
    ]
    return list(await asyncio.gather(*runs, return_exceptions=True))


async def reduce_with_one_bad(
    members: Sequence[Member],
    xs: Sequence[torch.Tensor],
    ws: Sequence[float],
    session: str,
    bad: int,
    kind: type[AllReduce],
    *,
    compression: str = "none",
) -> list[AllReduceResult]:
    """One all-reduce where member ``bad`` runs ``kind`` and the rest plain AllReduce;
    every member, the bad one included, must come back with a result."""
    jobs = [kind if i == bad else AllReduce for i in range(len(members))]
    outs = await reduce_all(members, xs, ws, session, jobs=jobs, compression=compression)
    results = [o for o in outs if isinstance(o, AllReduceResult)]
    assert len(results) == len(members), outs
    return results
