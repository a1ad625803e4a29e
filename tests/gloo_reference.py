"""The reference engine for our averaging tests: torch.distributed gloo all_reduce(SUM).

``gloo_sums(tensors, tmp)`` runs one spawned process per tensor on 127.0.0.1, each
all-reducing its tensor, and returns what every rank ended with.
"""

import multiprocessing
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        x = torch.load(Path(out_dir) / f"in{rank}.pt")
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        torch.save(x, Path(out_dir) / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


def start_gloo(tensors: list[torch.Tensor], tmp: Path) -> list[multiprocessing.Process]:
    """Start the gloo ranks (they run while the caller does its own side)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch built without gloo")
    for r, t in enumerate(tensors):
        torch.save(t, tmp / f"in{r}.pt")
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    port = _free_port()
    world = len(tensors)
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(tmp))) for r in range(world)]
    for p in procs:
        p.start()
    return procs


def finish_gloo(procs: list[multiprocessing.Process], tmp: Path) -> list[torch.Tensor]:
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:  # only our own children, and only if still running
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return [torch.load(tmp / f"out{r}.pt") for r in range(len(procs))]


def gloo_sums(tensors: list[torch.Tensor], tmp: Path) -> list[torch.Tensor]:
    return finish_gloo(start_gloo(tensors, tmp), tmp)
