"""weighted_average against a real collective engine: torch.distributed with gloo."""

import multiprocessing
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from shoal.training.diloco_math import weighted_average

WORLD = 3
NUMEL = 10_000
SAMPLES = [100, 250, 7]


def _tensor(rank: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(1000 + rank)) * (rank + 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(rank: int, port: int, out_dir: str) -> None:
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
        plain = x.clone()
        dist.all_reduce(plain, op=dist.ReduceOp.SUM)
        weighted = x * SAMPLES[rank]
        dist.all_reduce(weighted, op=dist.ReduceOp.SUM)
        torch.save({"plain": plain, "weighted": weighted}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_weighted_average_matches_gloo_all_reduce(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch built without gloo")
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:  # only our own children, and only if still running
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * WORLD
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    xs = [_tensor(r) for r in range(WORLD)]

    equal = weighted_average([(x, 1) for x in xs])
    weighted = weighted_average(list(zip(xs, SAMPLES, strict=True)))
    for res in results:  # every rank got the same sum
        assert torch.allclose(equal, res["plain"] / WORLD, rtol=1e-5, atol=1e-6)
        assert torch.allclose(weighted, res["weighted"] / sum(SAMPLES), rtol=1e-5, atol=1e-5)
    # And the check is not vacuous: a different weighting is far off.
    assert not torch.allclose(weighted, results[0]["plain"] / WORLD, rtol=1e-3, atol=1e-3)
