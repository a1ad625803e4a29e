"""Run one training loop per in-process peer, each on its own thread."""

import threading
from collections.abc import Callable


def run_peers(n: int, train: Callable[[int], None], timeout_s: float) -> None:
    """``train(i)`` for i in range(n), concurrently; fails on any error or a hung peer."""
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            train(i)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout_s)
    assert not errors, errors
    assert not any(t.is_alive() for t in ts)
