"""A non-finite or misshapen input vector is a ValueError before anything is sent,
with either codec (int8 finds NaN/Inf outside our own shard while encoding)."""

from __future__ import annotations

import pytest
import torch

from shoal.averaging import all_reduce
from shoal.training.diloco_math import NonFiniteUpdateError, WrongShapeError

from .helpers import close, run, swarm

NUMEL = 30_001


@pytest.mark.parametrize("compression", ["none", "int8", "int4", "int4z"])
@pytest.mark.parametrize("where", ["own shard", "other shard"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_refused(compression: str, where: str, bad: float) -> None:
    async def body() -> None:
        members = await swarm(2)
        try:
            a = members[0]
            group = [m.contact for m in members]
            me = group.index(a.contact)
            x = torch.randn(NUMEL, generator=torch.Generator().manual_seed(3))
            half = (NUMEL + 1) // 2  # shard 0 is [0, half), shard 1 the rest
            own_first = me == 0
            in_own = where == "own shard"
            x[half // 2 if in_own == own_first else half + 5] = bad
            sent_before = a.transport.bytes_sent
            with pytest.raises(NonFiniteUpdateError, match="NaN/Inf"):
                await all_reduce(
                    a.router, a.contact, group, "bad/x", x, 1.0,
                    compression=compression, model_version=0, timeout_s=5,
                )  # fmt: skip
            assert a.transport.bytes_sent == sent_before  # nothing left for the other peer
            assert a.router.prefixes == []
        finally:
            await close(members)

    run(body())


@pytest.mark.parametrize("compression", ["none", "int8", "int4", "int4z"])
def test_misshapen_input_is_refused(compression: str) -> None:
    async def body() -> None:
        members = await swarm(2)
        try:
            a = members[0]
            group = [m.contact for m in members]
            for x in (torch.zeros(10, 4), torch.zeros(40, dtype=torch.float64)):
                with pytest.raises(WrongShapeError):
                    await all_reduce(
                        a.router, a.contact, group, "bad/s", x, 1.0,
                        compression=compression, model_version=0, timeout_s=5,
                    )  # fmt: skip
        finally:
            await close(members)

    run(body())
