"""Run a Node on its own event loop in a background thread.

A user's training loop is ordinary blocking torch code; the node's protocols need an
event loop that keeps running while the loop computes (SWIM must answer pings during a
long inner phase or the peer would be declared dead). So the node lives in a thread
and the training side submits coroutines to it and waits for their results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shoal.runtime.node import Node, NodeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

START_TIMEOUT_S = 30.0


class NodeThread:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node: Node | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Node:
        self._thread = threading.Thread(target=self._main, name="shoal-node", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError("node did not start in time")
        if self._error is not None:
            raise RuntimeError(f"node failed to start: {self._error}") from self._error
        assert self.node is not None
        return self.node

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.node = Node(self.config)
        runner = asyncio.create_task(self.node.run())
        ready = asyncio.create_task(self.node.ready.wait())
        await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
        self._ready.set()
        await runner

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the node's loop and block until it finishes."""
        return self.submit(coro).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            coro.close()
            raise RuntimeError("node thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` on the node's loop; do not wait."""
        if self._loop is None:
            raise RuntimeError("node thread is not running")
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self.node is not None:
            self._loop.call_soon_threadsafe(self.node.stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("node thread did not stop within %.0fs", timeout)
