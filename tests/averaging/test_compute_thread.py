"""The all-reduce's shared compute thread: one thread, and a fresh one after a fork."""

from __future__ import annotations

import multiprocessing as mp
import threading

from shoal.averaging import allreduce


def _child(out: mp.SimpleQueue) -> None:  # type: ignore[type-arg]
    # The parent's compute thread does not exist here; a job must still run.
    out.put(allreduce._compute_thread().submit(lambda: 42).result(timeout=10))


def test_jobs_run_in_one_thread_and_after_a_fork() -> None:
    names = {allreduce._compute_thread().submit(lambda: threading.current_thread().name).result()
             for _ in range(5)}  # fmt: skip
    assert len(names) == 1 and next(iter(names)).startswith("shoal-allreduce")
    ctx = mp.get_context("fork")
    out = ctx.SimpleQueue()
    child = ctx.Process(target=_child, args=(out,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert out.get() == 42
