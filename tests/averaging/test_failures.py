"""A member that dies or never shows up: the others fail fast, naming it, and a retry
with the survivors succeeds."""

from __future__ import annotations

import asyncio
import time

import torch

from shoal.averaging import AllReduce, AllReduceFailed, AllReduceResult
from shoal.training.diloco_math import model_hash

from .helpers import close, direct_average, reduce_all, run, swarm, tensors

NUMEL = 200_001
TIMEOUT_S = 20.0


class SlowToShare(AllReduce):
    """Takes contributions, then sits on its averaged shard (so it can die mid-way)."""

    async def send_stream(
        self, to: int, tag: str, buffers: list[memoryview | bytes | bytearray]
    ) -> None:
        if tag.startswith("r/"):
            await asyncio.sleep(3600)
        await super().send_stream(to, tag, buffers)


def test_member_dies_mid_way_then_survivors_retry() -> None:
    async def body() -> None:
        members = await swarm(4)
        try:
            xs = tensors(4, NUMEL, seed=5)
            ws = [1.0, 2.0, 3.0, 4.0]
            dead = 2
            group = [m.contact for m in members]
            jobs = [
                (SlowToShare if i == dead else AllReduce)(
                    m.router,
                    m.contact,
                    group,
                    "die/a0",
                    xs[i],
                    ws[i],
                    model_version=1,
                    timeout_s=TIMEOUT_S,
                    probe_interval_s=0.2,
                )
                for i, m in enumerate(members)
            ]
            t0 = time.monotonic()
            tasks = [asyncio.ensure_future(j.run()) for j in jobs]
            while jobs[dead].bytes_received == 0:  # it is mid-way: holding contributions
                await asyncio.sleep(0.001)
            await members[dead].transport.aclose()
            alive = [t for i, t in enumerate(tasks) if i != dead]
            await asyncio.wait(alive)
            elapsed = time.monotonic() - t0
            tasks[dead].cancel()  # the dead member's own call is its caller's business
            outs = await asyncio.gather(*tasks, return_exceptions=True)
            dead_id = members[dead].peer_id
            for i, o in enumerate(outs):
                if i == dead:
                    continue
                assert isinstance(o, AllReduceFailed), o
                assert o.missing == [dead_id], (o.missing, o.reasons)
                assert o.reasons[dead_id].startswith("unreachable"), o.reasons
            assert elapsed < TIMEOUT_S / 2, elapsed  # failed fast, not at the deadline
            assert isinstance(outs[dead], BaseException)

            failure = outs[0]
            assert isinstance(failure, AllReduceFailed)
            survivors = [m for m in members if m.peer_id != dead_id]
            assert [c.peer_id for c in failure.survivors(group)] == [m.peer_id for m in survivors]
            keep = [i for i in range(4) if i != dead]
            retry = await reduce_all(
                survivors, [xs[i] for i in keep], [ws[i] for i in keep], "die/a1", version=1
            )
            assert all(isinstance(r, AllReduceResult) for r in retry), retry
            results = [r for r in retry if isinstance(r, AllReduceResult)]
            expected = direct_average([xs[i] for i in keep], [ws[i] for i in keep])
            torch.testing.assert_close(results[0].average, expected, rtol=1e-5, atol=1e-6)
            assert len({model_hash(r.average) for r in results}) == 1
        finally:
            await close(members)

    run(body())


def test_member_that_never_starts_is_named_at_the_deadline() -> None:
    async def body() -> None:
        members = await swarm(3)
        try:
            xs = tensors(3, 30_001, seed=6)
            absent = 1
            present = [m for i, m in enumerate(members) if i != absent]
            group = [m.contact for m in members]
            t0 = time.monotonic()
            outs = await asyncio.gather(
                *(
                    AllReduce(
                        m.router,
                        m.contact,
                        group,
                        "absent/a0",
                        xs[i],
                        1.0,
                        model_version=0,
                        timeout_s=2.0,
                        probe_interval_s=0.2,
                    ).run()
                    for i, m in enumerate(members)
                    if i != absent
                ),
                return_exceptions=True,
            )
            assert time.monotonic() - t0 < 4.0
            for o in outs:
                # Alive (its transport answers) but silent: named alone, because the
                # owners went ahead without it at half time and shared their shards.
                assert isinstance(o, AllReduceFailed), o
                assert o.missing == [members[absent].peer_id], o.reasons
            retry = await reduce_all(present, [xs[0], xs[2]], [1.0, 1.0], "absent/a1", version=0)
            expected = direct_average([xs[0], xs[2]], [1.0, 1.0])
            for r in retry:
                assert isinstance(r, AllReduceResult), r
                torch.testing.assert_close(r.average, expected)
        finally:
            await close(members)

    run(body())
