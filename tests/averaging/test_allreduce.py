"""all_reduce over real Transports: the right numbers, identical bits, any group size."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shoal.averaging import AllReduceResult, all_reduce, shard_align, shard_bounds
from shoal.compression import get_codec
from shoal.compression.int4 import max_abs_error as int4_max_abs_error
from shoal.compression.int8 import max_abs_error
from shoal.training.diloco_math import model_hash

from .helpers import close, direct_average, reduce_all, run, swarm, tensors

NUMEL = 1_000_003  # odd: shards of unequal length, int8 chunks that do not divide evenly


def results_only(outs: list[AllReduceResult | BaseException]) -> list[AllReduceResult]:
    for o in outs:
        if isinstance(o, BaseException):
            raise o
    return [o for o in outs if isinstance(o, AllReduceResult)]


def test_shard_bounds_tile_the_vector() -> None:
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    for numel, n in [(NUMEL, 4), (0, 3), (7, 7), (5, 1)]:
        b = shard_bounds(numel, n)
        assert b[0][0] == 0 and b[-1][1] == numel
        assert all(b[i][1] == b[i + 1][0] for i in range(n - 1))
        sizes = [hi - lo for lo, hi in b]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_bounds(5, 0)
    with pytest.raises(ValueError):
        shard_bounds(5, 2, align=0)


@given(st.integers(0, 100_000), st.integers(1, 64), st.integers(1, 5000))
def test_aligned_shard_bounds_tile_on_the_grid(numel: int, n: int, align: int) -> None:
    b = shard_bounds(numel, n, align)
    assert len(b) == n and b[0][0] == 0 and b[-1][1] == numel
    assert all(b[i][1] == b[i + 1][0] for i in range(n - 1))
    assert all(lo % align == 0 or lo == numel for lo, _ in b)
    sizes = [hi - lo for lo, hi in b]
    units = [-(-size // align) for size in sizes]  # the tail unit may be short
    assert max(units) - min(units) <= 1
    assert all(size % align == 0 for (_, hi), size in zip(b, sizes, strict=True) if hi < numel)
    if align == 1:  # the unaligned split: sizes differ by at most one value
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_quantised_vector_reencodes_exactly_on_aligned_shards(codec: str) -> None:
    """DiLoCo quantises its whole update once, with error feedback, and the all-reduce
    re-encodes each shard of it: on the chunk grid that must give the same bits back,
    or every round loses more than error feedback accounted for."""
    q = get_codec(codec)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(NUMEL, generator=g) * torch.rand(NUMEL, generator=g).pow(4)
    sent = q.decode(q.encode(x)).reshape(-1)
    for lo, hi in shard_bounds(NUMEL, 4, shard_align(codec)):
        again = q.decode(q.encode(sent[lo:hi].clone())).reshape(-1)
        assert torch.equal(again, sent[lo:hi]), (lo, hi)
    lo, hi = shard_bounds(NUMEL, 4)[1]  # off the grid: regrouped under new scales
    assert not torch.equal(q.decode(q.encode(sent[lo:hi].clone())).reshape(-1), sent[lo:hi])


@pytest.mark.parametrize(
    ("codec", "bound_of"),
    [("int8", max_abs_error), ("int4", int4_max_abs_error), ("int4z", int4_max_abs_error)],
)
def test_prequantised_updates_lose_only_the_average_rounding(
    codec: str, bound_of: Callable[[float], float]
) -> None:
    """Updates already on the codec's grid (what DiLoCo hands the all-reduce) are
    averaged exactly; only the average's own encoding rounds. Alternate chunks are
    1000x apart in scale: a shard starting mid-chunk would put small values under a
    large neighbour's scale and round them to zero."""
    chunk = shard_align(codec)
    q = get_codec(codec)
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([1e-3, 1.0]).repeat(-(-NUMEL // (2 * chunk))).repeat_interleave(chunk)
    xs = [q.decode(q.encode(torch.randn(NUMEL, generator=g) * scale[:NUMEL])).reshape(-1)
          for _ in range(4)]  # fmt: skip
    ws = [5.0, 1.0, 2.0, 3.0]

    async def body() -> None:
        members = await swarm(4)
        try:
            outs = results_only(
                await reduce_all(members, xs, ws, f"run/r0/g0/pre-{codec}", compression=codec)
            )
            exact = direct_average(xs, ws)[: NUMEL // chunk * chunk].view(-1, chunk)
            got = outs[0].average[: NUMEL // chunk * chunk].view(-1, chunk)
            row_errs = (got - exact).abs().amax(dim=1).tolist()
            row_maxes = exact.abs().amax(dim=1).tolist()
            for row_err, row_max in zip(row_errs, row_maxes, strict=True):
                assert row_err <= float(bound_of(row_max)) * 1.001 + 1e-7, (row_err, row_max)
        finally:
            await close(members)

    run(body())


def test_four_peers_fp32_weighted_average_bit_identical() -> None:
    async def body() -> list[AllReduceResult]:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=1)
            ws = [1.0, 250.0, 3.5, 40.0]
            outs = results_only(await reduce_all(members, xs, ws, "run/r0/g0/a0"))
            expected = direct_average(xs, ws)
            for r in outs:
                torch.testing.assert_close(r.average, expected, rtol=1e-5, atol=1e-5)
                assert r.total_weight == pytest.approx(sum(ws))
                assert r.contributors == [m.peer_id for m in members]
                assert r.excluded == {}
            # Not vacuous: equal weights give something measurably different.
            assert not torch.allclose(outs[0].average, direct_average(xs, [1.0] * 4), atol=1e-3)
            # Every member holds the very same bits.
            assert len({model_hash(r.average) for r in outs}) == 1
            # Bandwidth-optimal: each peer sends ~2(n-1)/n of the vector, plus headers.
            vector = 4 * NUMEL
            for r in outs:
                assert 1.4 * vector <= r.bytes_sent <= 1.6 * vector, r.bytes_sent
                assert 1.4 * vector <= r.bytes_received <= 1.6 * vector
            for m in members:
                assert not m.bad
                assert m.router.prefixes == []  # the session unregistered itself
            return outs
        finally:
            await close(members)

    run(body())


@pytest.mark.parametrize(
    ("codec", "bound_of", "bytes_per_value"),
    [
        ("int8", max_abs_error, (0.0, 0.45 * 4)),  # ~1/4 of the fp32 bytes
        ("int4", int4_max_abs_error, (0.7, 0.8)),  # 1.5 x 1/2 byte per peer, plus scales
    ],
)
def test_four_peers_quantised_within_stated_bound_and_identical(
    codec: str, bound_of: Callable[[float], float], bytes_per_value: tuple[float, float]
) -> None:
    """Error bound: each contribution is quantised once (per-chunk absmax/qmax/2 per
    value) and the average once more. For weights w_i/W summing to 1 the error is at
    most sum_i (w_i/W) * e_i + e_avg, with e = absmax/qmax * (1/2 + 2^-14) + tiny;
    bounded here by 2 * max_abs_error(max |x|) per element (+ fp32 rounding)."""

    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=2 if codec == "int8" else 3)
            ws = [5.0, 1.0, 2.0, 3.0]
            outs = results_only(
                await reduce_all(members, xs, ws, f"run/r0/g0/{codec}", compression=codec)
            )
            expected = direct_average(xs, ws)
            bound = 2 * float(bound_of(float(max(x.abs().max() for x in xs)))) + 1e-5
            err = (outs[0].average - expected).abs().max().item()
            assert err <= bound, (err, bound)
            assert err > 0  # it really was quantised
            assert len({hashlib.sha256(r.average.numpy().tobytes()).digest() for r in outs}) == 1
            lo, hi = bytes_per_value
            assert lo * NUMEL < outs[0].bytes_sent < hi * NUMEL
        finally:
            await close(members)

    run(body())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_small_groups(n: int) -> None:
    async def body() -> None:
        members = await swarm(n)
        try:
            xs = tensors(n, 10_001, seed=n)
            ws = [float(i + 1) for i in range(n)]
            outs = results_only(await reduce_all(members, xs, ws, f"small/{n}"))
            expected = direct_average(xs, ws)
            for r in outs:
                torch.testing.assert_close(r.average, expected, rtol=1e-5, atol=1e-6)
                assert r.average.data_ptr() != xs[0].data_ptr()
            assert len({model_hash(r.average) for r in outs}) == 1
            if n == 1:
                assert outs[0].bytes_sent == outs[0].bytes_received == 0
                assert torch.equal(outs[0].average, xs[0])
        finally:
            await close(members)

    run(body())


def test_fewer_values_than_members() -> None:
    """Empty shards (numel < n) still complete, through the plain API entry point."""

    async def body() -> None:
        members = await swarm(4)
        try:
            xs = [torch.tensor([float(i), -2.0 * i]) for i in range(4)]
            group = [m.contact for m in members]
            import asyncio

            outs = await asyncio.gather(
                *(
                    all_reduce(
                        m.transport,
                        m.contact,
                        group,
                        "tiny",
                        x,
                        1.0,
                        model_version=0,
                        timeout_s=10,
                    )
                    for m, x in zip(members, xs, strict=True)
                )
            )
            for r in outs:
                assert r.average.tolist() == [1.5, -3.0]
        finally:
            await close(members)

    run(body())


def test_bad_arguments_are_value_errors() -> None:
    async def body() -> None:
        members = await swarm(2)
        try:
            a = members[0]
            group = [m.contact for m in members]
            x = torch.zeros(10)
            cases = [
                dict(group=list(reversed(group))),  # not sorted
                dict(x=torch.zeros(10, dtype=torch.float64)),
                dict(x=torch.tensor([1.0, float("nan")])),
                dict(x=torch.zeros(4, 4)),
                dict(weight=0.0),
                dict(weight=float("inf")),
                dict(compression="fp8"),
                dict(session="x" * 300),
                dict(group=[group[1]]),  # me not in group
            ]
            for case in cases:
                with pytest.raises(ValueError):
                    await all_reduce(
                        a.router,
                        a.contact,
                        case.get("group", group),  # type: ignore[arg-type]
                        case.get("session", "s"),  # type: ignore[arg-type]
                        case.get("x", x),  # type: ignore[arg-type]
                        case.get("weight", 1.0),  # type: ignore[arg-type]
                        compression=case.get("compression", "none"),  # type: ignore[arg-type]
                        model_version=0,
                        timeout_s=5,
                    )
        finally:
            await close(members)

    run(body())


def test_result_independent_of_finish_order() -> None:
    """Same inputs in two sessions give the same bits (fixed summation order)."""

    async def body() -> None:
        members = await swarm(3)
        try:
            xs = tensors(3, 50_001, seed=9)
            ws = [0.3, 0.3, 0.4]
            a = results_only(await reduce_all(members, xs, ws, "order/a"))
            b = results_only(await reduce_all(members, xs, ws, "order/b"))
            assert np.array_equal(a[0].average.numpy(), b[2].average.numpy())
        finally:
            await close(members)

    run(body())
