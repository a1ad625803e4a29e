"""Early scaling (contributions scaled as they land) gives the same bits as scaling in
the reduce, and steps aside when the divisor changes."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from shoal.averaging import AllReduce, AllReduceResult

from .helpers import close, direct_average, reduce_all, run, swarm, tensors
from .test_allreduce import results_only


class NoEarlyScaling(AllReduce):
    """Scales everything inside the reduce (the default)."""

    early_scaling = False


class EarlyScaling(AllReduce):
    """Scales each contribution as it lands (off by default, see AllReduce)."""

    early_scaling = True


class CountingReduce(EarlyScaling):
    fast: ClassVar[list[bool]] = []

    def _prescaled_mean(
        self,
        acc: torch.Tensor,
        arrived: dict[int, tuple[bytearray, float]],
        scaled: dict[int, torch.Tensor],
    ) -> float | None:
        got = super()._prescaled_mean(acc, arrived, scaled)
        CountingReduce.fast.append(got is not None)
        return got


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_same_bits_with_and_without_early_scaling(compression: str) -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, 1_000_003, seed=21)
            ws = [0.7, 1.3, 2.0, 5.0]
            CountingReduce.fast.clear()
            early = results_only(
                await reduce_all(
                    members, xs, ws, "early/a", compression=compression,
                    jobs=[CountingReduce] * 4,
                )
            )  # fmt: skip
            assert CountingReduce.fast == [True] * 4  # every owner took the early path
            late = results_only(
                await reduce_all(
                    members, xs, ws, "early/b", compression=compression,
                    jobs=[NoEarlyScaling] * 4,
                )
            )  # fmt: skip
            for a, b in zip(early, late, strict=True):
                assert torch.equal(a.average, b.average)
            if compression == "none":
                torch.testing.assert_close(early[0].average, direct_average(xs, ws))
        finally:
            await close(members)

    run(body())


class SendsNaN(AllReduce):
    async def contribution(self, owner: int) -> tuple[str, list[memoryview | bytes | bytearray]]:
        tag, _ = await super().contribution(owner)
        lo, hi = self._bounds[owner]
        bad = self._flat[lo:hi].clone()
        bad[3] = float("nan")
        return tag, [bad.numpy().data]


def test_nan_contribution_falls_back_and_is_left_out() -> None:
    """A NaN only shows in the early mean's result; the reduce then scales from the
    raw buffers without the culprit: the others' weighted mean, identical everywhere."""

    async def body() -> None:
        members = await swarm(3)
        try:
            xs = tensors(3, 300_001, seed=22)
            ws = [1.0, 2.0, 3.0]
            outs = await reduce_all(
                members, xs, ws, "early/nan", jobs=[EarlyScaling, SendsNaN, EarlyScaling]
            )
            ok = [o for o in outs if isinstance(o, AllReduceResult)]
            assert len(ok) == 3
            bad_id = members[1].peer_id
            for r in ok:
                assert bad_id not in r.contributors
                assert "NaN" in r.excluded[bad_id]
                assert torch.equal(r.average, ok[0].average)
            # Shards owned by the honest members average the other two only.
            lo = (300_001 + 2) // 3
            expected = direct_average([xs[0], xs[2]], [1.0, 3.0])
            torch.testing.assert_close(ok[0].average[:lo], expected[:lo])
        finally:
            await close(members)

    run(body())
