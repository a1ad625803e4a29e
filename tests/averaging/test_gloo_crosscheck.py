"""shoal's all-reduce against a real collective engine: torch.distributed gloo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.averaging import AllReduceResult
from tests.gloo_reference import finish_gloo, start_gloo

from .helpers import close, reduce_all, run, swarm

WORLD = 4
NUMEL = 100_003


def _tensor(rank: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(500 + rank)) * (rank + 1)


@pytest.mark.slow
def test_equal_weight_average_matches_gloo_sum_over_world(tmp_path: Path) -> None:
    xs = [_tensor(r) for r in range(WORLD)]
    procs = start_gloo(xs, tmp_path)

    async def shoal_side() -> list[AllReduceResult | BaseException]:
        members = await swarm(WORLD)
        try:
            return await reduce_all(members, xs, [1.0] * WORLD, "gloo-check", version=0)
        finally:
            await close(members)

    try:
        ours = run(shoal_side())  # runs while the gloo workers start up
    finally:
        gloo = [g / WORLD for g in finish_gloo(procs, tmp_path)]
    for r in ours:
        assert isinstance(r, AllReduceResult), r
        for g in gloo:
            torch.testing.assert_close(r.average, g, rtol=1e-5, atol=1e-6)
    # Not vacuous: rank 0's own tensor is far from the average.
    assert not torch.allclose(gloo[0], _tensor(0), atol=1e-2)
