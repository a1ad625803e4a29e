"""Robust rules inside the real all-reduce: shard owners get the whole-vector answer."""

from __future__ import annotations

import pytest
import torch

from shoal.aggregation import make_aggregator
from shoal.averaging import AllReduce, AllReduceResult
from shoal.training.diloco_math import model_hash

from ..averaging.helpers import close, run, swarm

NUMEL = 10_007


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(NUMEL, generator=g)
    xs = [base + 0.05 * torch.randn(NUMEL, generator=g) for _ in range(n)]
    xs[1] = xs[1] * 100.0  # one scaled attacker
    xs[3] = -xs[3]  # one sign-flipper
    return xs


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "centered_clip", "krum"])
def test_sharded_rule_equals_whole_vector_rule(name: str) -> None:
    n = 6
    xs = _inputs(n)
    expected = make_aggregator(name, 0.34).aggregate(list(xs), [1.0] * n)

    async def go() -> list[AllReduceResult | BaseException]:
        import asyncio

        members = await swarm(n)
        try:
            group = [m.contact for m in members]
            jobs = [
                AllReduce(
                    m.router, m.contact, group, f"agg-{name}", x, 1.0 + i,
                    compression="none", model_version=1, timeout_s=20.0,
                    probe_interval_s=0.2, aggregator=make_aggregator(name, 0.34),
                ).run()
                for i, (m, x) in enumerate(zip(members, xs, strict=True))
            ]  # fmt: skip
            return list(await asyncio.gather(*jobs, return_exceptions=True))
        finally:
            await close(members)

    results = run(go())
    ok = [r for r in results if isinstance(r, AllReduceResult)]
    assert len(ok) == n, results
    assert len({model_hash(r.average) for r in ok}) == 1  # identical bits everywhere
    got = ok[0].average
    # Nested sums round differently from whole-vector sums, so allow fp32 noise; the
    # selection (Krum) / clipping (CC) must be the same for this to hold.
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), float((got - expected).abs().max())
    honest_center = torch.stack([x for i, x in enumerate(xs) if i not in (1, 3)]).mean(0)
    assert float((got - honest_center).norm()) < 0.5 * float(honest_center.norm())


def test_default_is_still_the_weighted_mean() -> None:
    from ..averaging.helpers import direct_average, reduce_all

    n = 4
    xs = _inputs(n)

    async def go() -> list[AllReduceResult | BaseException]:
        members = await swarm(n)
        try:
            return await reduce_all(members, xs, [1.0, 2.0, 3.0, 4.0], "agg-default")
        finally:
            await close(members)

    results = run(go())
    assert all(isinstance(r, AllReduceResult) for r in results)
    first = results[0]
    assert isinstance(first, AllReduceResult)
    assert torch.allclose(first.average, direct_average(xs, [1.0, 2.0, 3.0, 4.0]), atol=1e-3)
