"""Drive n clients and one collector in one process, with peers dropping out at a
chosen step. The tests and the benchmark use it; a networked driver would move the
same messages over the transport."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from shoal.secagg.client import SecAggClient
from shoal.secagg.collector import SecAggCollector
from shoal.secagg.messages import MaskedInput


@dataclass
class LocalRun:
    total: torch.Tensor
    survivors: tuple[int, ...]
    masked: dict[int, MaskedInput] = field(default_factory=dict)  # what the collector saw


def run_local(
    xs: Sequence[torch.Tensor],
    threshold: int,
    *,
    clip: float = 8.0,
    frac_bits: int = 16,
    session: bytes = b"test-session",
    drop_after_advert: Sequence[int] = (),
    drop_after_shares: Sequence[int] = (),
    drop_after_masked: Sequence[int] = (),
    entropy: Callable[[int], bytes] = os.urandom,
) -> LocalRun:
    """Peers are ids 1..n for xs[0..n-1]. A peer in ``drop_after_X`` goes silent after
    step X (so ``drop_after_shares`` peers never send a masked input, the case the
    mask-key shares exist for)."""
    n, numel = len(xs), xs[0].numel()
    clients = {
        i: SecAggClient(i, n, threshold, session, numel, clip=clip, frac_bits=frac_bits,
                        entropy=entropy)
        for i in range(1, n + 1)
    }  # fmt: skip
    col = SecAggCollector(n, threshold, session, numel, frac_bits=frac_bits)
    for c in clients.values():
        col.on_advert(c.advertise())
    adverts = col.close_adverts()
    alive = [i for i in clients if i not in drop_after_advert]
    for i in alive:
        col.on_shares(clients[i].on_adverts(adverts))
    route = col.close_shares()
    alive = [i for i in alive if i not in drop_after_shares]
    out = LocalRun(torch.empty(0), ())
    for i in alive:
        m = clients[i].on_shares(route[i], xs[i - 1])
        out.masked[i] = m
        col.on_masked(m)
    req = col.close_masked()
    for i in alive:
        if i not in drop_after_masked:
            col.on_unmask(clients[i].on_unmask_request(req))
    out.total = col.finish()
    out.survivors = col.survivors
    return out
