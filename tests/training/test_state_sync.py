"""State sync between two real nodes: a publisher that has moved on one round still
serves the state a joiner asked for, and the request decoder refuses bad fields."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.runtime.background import NodeThread
from shoal.runtime.node import Node
from shoal.training.state_sync import (
    NONCE_BYTES,
    STATE_PREFIX,
    Snapshot,
    StateRequest,
    StateServer,
    _Receiver,
    state_hash,
)
from shoal.wire.codec import MalformedMessage
from shoal.wire.contact import Contact

SIZE = 64


def _snap(rnd: int, fill: int) -> Snapshot:
    data = bytes([fill]) * SIZE
    return Snapshot(rnd, data, state_hash(data))


async def _ask(
    node: Node, server: Contact, rnd: int, want: str, timeout_s: float = 20.0
) -> tuple[int, bytes]:
    nonce = os.urandom(NONCE_BYTES)
    rx = _Receiver(SIZE, nonce, rnd, want)
    prefix = f"{STATE_PREFIX}{rnd}/{want}/"
    node.router.register(prefix, rx)
    try:
        await node.send(server, StateRequest(nonce, rnd, want))
        got_round, _, data = await asyncio.wait_for(rx.done, timeout_s)
        return got_round, data
    finally:
        node.router.unregister(prefix)


async def _server(node: Node) -> StateServer:
    return StateServer(node, "sync")  # registers its protocol on the node's own loop


@contextlib.contextmanager
def _two_nodes(tmp_path: Path) -> Iterator[tuple[NodeThread, NodeThread]]:
    """Publisher ``a`` and joiner ``b`` (bootstrapped from ``a``) for run "sync"."""
    a = shoal.start_node(tmp_path / "a", run="sync", target_samples=1)
    try:
        assert a.node is not None
        b = shoal.start_node(
            tmp_path / "b", run="sync", target_samples=1, bootstrap=[str(a.node.contact)]
        )
        try:
            assert b.node is not None
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.mark.slow
def test_publisher_that_moved_on_still_serves_the_previous_state(tmp_path: Path) -> None:
    with _two_nodes(tmp_path) as (a, b):
        assert a.node is not None and b.node is not None
        server = a.call(_server(a.node))
        old, new = _snap(4, 1), _snap(5, 2)
        a.call(server.publish(old))
        a.call(server.publish(new))
        contact = a.node.contact
        # the joiner read the round-4 head just before the publisher moved on
        rnd, data = b.call(_ask(b.node, contact, 4, old.state_hash))
        assert (rnd, state_hash(data)) == (4, old.state_hash)
        rnd, data = b.call(_ask(b.node, contact, 5, new.state_hash))
        assert (rnd, state_hash(data)) == (5, new.state_hash)
        # two rounds on, round 4 is gone: the newest is served, the joiner refuses it
        a.call(server.publish(_snap(6, 3)))
        with pytest.raises(TimeoutError):
            b.call(_ask(b.node, contact, 4, old.state_hash, timeout_s=3.0))


def test_request_round_trips_and_old_form_means_newest() -> None:
    nonce = os.urandom(NONCE_BYTES)
    req = StateRequest(nonce, 7, "ab" * 32)
    assert StateRequest.from_fields(req.to_fields()) == req
    assert StateRequest.from_fields([nonce]) == StateRequest(nonce, -1, "")


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [b"short"],
        [os.urandom(NONCE_BYTES), 1],
        [os.urandom(NONCE_BYTES), "1", "ab" * 32],
        [os.urandom(NONCE_BYTES), True, "ab" * 32],
        [os.urandom(NONCE_BYTES), -2, "ab" * 32],
        [os.urandom(NONCE_BYTES), 1, "abc"],
        [os.urandom(NONCE_BYTES), 1, b"ab" * 32],
        [os.urandom(NONCE_BYTES), 1, "ab" * 32, "extra"],
    ],
)
def test_malformed_requests_are_refused(fields: list[object]) -> None:
    with pytest.raises(MalformedMessage):
        StateRequest.from_fields(fields)


@pytest.mark.slow
def test_a_peer_holding_the_voted_state_does_not_download_it(tmp_path: Path) -> None:
    from shoal.training.state_sync import fetch_state

    big = 1 << 20
    data = os.urandom(big)
    state = Snapshot(0, data, state_hash(data))
    other = Snapshot(0, bytes(big), state_hash(bytes(big)))
    with _two_nodes(tmp_path) as (a, b):
        assert a.node is not None and b.node is not None
        server = a.call(_server(a.node))
        a.call(server.publish(state))
        before = b.node.transport.bytes_received
        got = b.call(fetch_state(b.node, "sync", big, wait_s=10.0, have=state))
        assert got is state
        assert b.node.transport.bytes_received - before < big // 4
        # holding another state (same round, other hash): it downloads and verifies
        before = b.node.transport.bytes_received
        got = b.call(fetch_state(b.node, "sync", big, wait_s=10.0, have=other))
        assert got is not None and got.state_hash == state.state_hash and got.data == data
        assert b.node.transport.bytes_received - before > big
