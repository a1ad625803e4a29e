"""shoal's all-reduce against a real collective engine: torch.distributed gloo."""

from __future__ import annotations

import multiprocessing
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from shoal.averaging import AllReduceResult

from .helpers import close, reduce_all, run, swarm

WORLD = 4
NUMEL = 100_003


def _tensor(rank: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(500 + rank)) * (rank + 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gloo_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        x = _tensor(rank)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        torch.save(x, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_equal_weight_average_matches_gloo_sum_over_world(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch built without gloo")
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    port = _free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()

    async def shoal_side() -> list[AllReduceResult | BaseException]:
        members = await swarm(WORLD)
        try:
            xs = [_tensor(r) for r in range(WORLD)]
            return await reduce_all(members, xs, [1.0] * WORLD, "gloo-check", version=0)
        finally:
            await close(members)

    try:
        ours = run(shoal_side())  # runs while the gloo workers start up
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:  # only our own children, and only if still running
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * WORLD
    gloo = [torch.load(tmp_path / f"{r}.pt") / WORLD for r in range(WORLD)]
    for r in ours:
        assert isinstance(r, AllReduceResult), r
        for g in gloo:
            torch.testing.assert_close(r.average, g, rtol=1e-5, atol=1e-6)
    # Not vacuous: rank 0's own tensor is far from the average.
    assert not torch.allclose(gloo[0], _tensor(0), atol=1e-2)
