"""BufferPool: exact-size reuse, bounds, and the all-reduce giving its buffers back."""

from __future__ import annotations

import pytest
import torch

from shoal.averaging.buffer_pool import MIN_POOLED_BYTES, POOL, BufferPool

from .helpers import close, reduce_all, run, swarm, tensors
from .test_allreduce import results_only

SIZE = MIN_POOLED_BYTES * 2


def test_reuses_a_given_back_buffer_of_the_same_size() -> None:
    pool = BufferPool(max_bytes=SIZE * 4)
    a = pool.take(SIZE)
    assert len(a) == SIZE and pool.misses == 1
    pool.give(a)
    assert pool.cached_bytes == SIZE
    assert pool.take(SIZE + 1) is not a  # exact size only
    assert pool.take(SIZE) is a and pool.hits == 1
    assert pool.cached_bytes == 0


def test_bounded_oldest_dropped_first() -> None:
    pool = BufferPool(max_bytes=SIZE * 2)
    bufs = [pool.take(SIZE) for _ in range(3)]
    for b in bufs:
        pool.give(b)
    assert pool.cached_bytes == SIZE * 2
    got = {id(pool.take(SIZE)), id(pool.take(SIZE))}
    assert got == {id(bufs[1]), id(bufs[2])}  # bufs[0] was evicted


def test_small_huge_and_double_gives_are_not_pooled() -> None:
    pool = BufferPool(max_bytes=SIZE)
    pool.give(bytearray(16))
    pool.give(bytearray(SIZE * 2))
    assert pool.cached_bytes == 0
    b = pool.take(SIZE)
    pool.give(b)
    pool.give(b)
    assert pool.cached_bytes == SIZE
    pool.clear()
    assert pool.cached_bytes == 0


def test_floats_view_and_bad_arguments() -> None:
    pool = BufferPool()
    t, buf = pool.take_floats(SIZE // 4)
    assert t.dtype == torch.float32 and t.numel() == SIZE // 4 and len(buf) == SIZE
    t.fill_(2.0)
    assert bytes(buf[:4]) == torch.tensor([2.0]).numpy().tobytes()
    with pytest.raises(ValueError):
        pool.take(-1)
    with pytest.raises(ValueError):
        BufferPool(max_bytes=-1)


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_all_reduce_gives_buffers_back_and_reuses_them(compression: str) -> None:
    """A second all-reduce of the same size takes its buffers from the pool, and the
    stale bytes in them do not change the result."""

    async def body() -> None:
        members = await swarm(3)
        try:
            xs = tensors(3, 3_000_001, seed=4)
            POOL.clear()
            first = results_only(
                await reduce_all(members, xs, [1.0] * 3, "pool/a", compression=compression)
            )
            assert POOL.cached_bytes > 0
            hits = POOL.hits
            ys = tensors(3, 3_000_001, seed=5)
            second = results_only(
                await reduce_all(members, ys, [1.0] * 3, "pool/b", compression=compression)
            )
            assert POOL.hits > hits
            fresh = results_only(
                await reduce_all(members, ys, [1.0] * 3, "pool/c", compression=compression)
            )
            for a, b in zip(second, fresh, strict=True):
                assert torch.equal(a.average, b.average)
            assert not torch.equal(first[0].average, second[0].average)
        finally:
            await close(members)

    run(body())
