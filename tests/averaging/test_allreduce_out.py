"""all_reduce(out=...): the average lands in the caller's buffer; bad buffers are refused."""

from __future__ import annotations

import asyncio

import pytest
import torch

from shoal.averaging import all_reduce

from .helpers import close, direct_average, reduce_all, run, swarm, tensors
from .test_allreduce import results_only


@pytest.mark.parametrize("compression", ["none", "int8", "int4", "int4z"])
def test_average_written_into_out_matches_a_fresh_result(compression: str) -> None:
    async def body() -> None:
        members = await swarm(3)
        try:
            xs = tensors(3, 70_001, seed=11)
            ref = results_only(
                await reduce_all(members, xs, [1.0, 2.0, 3.0], "out/a", compression=compression)
            )
            outs = [torch.full((70_001,), float("nan")) for _ in members]
            group = [m.contact for m in members]
            got = await asyncio.gather(
                *(
                    all_reduce(
                        m.router, m.contact, group, "out/b", x, w,
                        compression=compression, model_version=7, timeout_s=20, out=o,
                    )
                    for m, x, w, o in zip(members, xs, [1.0, 2.0, 3.0], outs, strict=True)
                )
            )  # fmt: skip
            for r, o, f in zip(got, outs, ref, strict=True):
                assert r.average is o
                assert torch.equal(o, f.average)
            if compression == "none":
                torch.testing.assert_close(outs[0], direct_average(xs, [1.0, 2.0, 3.0]))
        finally:
            await close(members)

    run(body())


def test_bad_out_buffers_are_refused_before_anything_is_sent() -> None:
    async def body() -> None:
        members = await swarm(2)
        try:
            x = torch.randn(1000)
            group = [m.contact for m in members]
            m = members[0]
            big = torch.randn(2000)
            cases = [
                (x, torch.empty(999)),
                (x, torch.empty(1000, dtype=torch.float64)),
                (x, torch.empty(2000)[::2]),
                (x, torch.empty(10, 100)),
                (x, x),  # the input itself
                (big[:1000], big[500:1500]),  # overlapping the input
            ]
            for flat, out in cases:
                with pytest.raises(ValueError, match="out must"):
                    await all_reduce(
                        m.router, m.contact, group, "out/bad", flat, 1.0,
                        model_version=0, timeout_s=5, out=out,
                    )  # fmt: skip
            assert members[1].transport.bulk_stream_count == 0
        finally:
            await close(members)

    run(body())
