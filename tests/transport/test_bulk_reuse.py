"""Kept bulk connections: streams reuse one authenticated connection; stale, capped,
evicted or misbehaving kept connections are handled without losing a stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from shoal.transport import bulk as bulk_module
from shoal.transport import transport as transport_module
from shoal.transport.bulk import MAX_KEPT_BULK_PER_PEER, BulkClient
from shoal.transport.channel import MAX_RECORDS, RecordSealer, RecordType

from .helpers import Node, Ping, close_all, eventually, run, started
from .test_bulk import Sink, receiver


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every bulk dial (handshake) a BulkClient makes."""
    seen: list[str] = []
    real = BulkClient.connect

    def counting(self: BulkClient) -> None:
        seen.append(self.to.addr)
        real(self)

    monkeypatch.setattr(BulkClient, "connect", counting)
    return seen


def test_sequential_streams_share_one_connection(dials: list[str]) -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        blobs = {f"s{i}": os.urandom(300_000 + i) for i in range(5)}
        for tag, data in blobs.items():
            await a.transport.send_bulk(b.contact, tag, [data])
        await eventually(lambda: len(sink.done) == len(blobs))
        assert sink.done == {t: hashlib.sha256(d).digest() for t, d in blobs.items()}
        assert len(dials) == 1  # one handshake for five streams
        await eventually(lambda: b.transport.kept_bulk_count == 1)
        assert a.transport.kept_bulk_count == 1
        assert a.transport.bulk_stream_count == 0 and b.transport.bulk_stream_count == 0
        assert not a.bad and not b.bad
        await close_all(a, b)

    run(body())


def test_refused_stream_closes_and_next_one_redials(dials: list[str]) -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        await a.transport.send_bulk(b.contact, "ok", [b"x" * 1000])
        sink.refuse = True
        with pytest.raises(bulk_module.BulkRejected):
            await a.transport.send_bulk(b.contact, "no", [b"y"])
        sink.refuse = False
        await a.transport.send_bulk(b.contact, "ok2", [b"z" * 1000])
        await eventually(lambda: "ok2" in sink.done)
        assert len(dials) == 2  # the refusal closed the kept connection
        await close_all(a, b)

    run(body())


def test_receiver_closing_a_kept_connection_costs_one_redial(
    dials: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "BULK_RECEIVER_IDLE_S", 0.2)

    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        await a.transport.send_bulk(b.contact, "first", [b"1" * 5000])
        assert a.transport.kept_bulk_count == 1
        # a has DONE before b's loop has parked the connection: wait for both steps
        await eventually(lambda: b.transport.kept_bulk_count == 1, what="receiver keeps it")
        await eventually(lambda: b.transport.kept_bulk_count == 0, what="receiver idle close")
        await asyncio.sleep(0.05)
        await a.transport.send_bulk(b.contact, "second", [b"2" * 5000])  # stale, redialled
        await eventually(lambda: "second" in sink.done)
        assert len(dials) == 2 and not sink.failed
        assert not b.bad  # an idle sender closing or being closed is not misbehaviour
        await close_all(a, b)

    run(body())


def test_sender_stops_reusing_after_its_idle_limit(
    dials: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "BULK_IDLE_S", 0.1)

    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        await a.transport.send_bulk(b.contact, "first", [b"1"])
        await asyncio.sleep(0.2)
        await a.transport.send_bulk(b.contact, "second", [b"2"])
        await eventually(lambda: len(sink.done) == 2)
        assert len(dials) == 2
        await eventually(lambda: b.transport.kept_bulk_count == 1)  # the old one was closed
        assert not b.bad
        await close_all(a, b)

    run(body())


def test_kept_connections_are_capped_per_peer(dials: list[str]) -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        n = MAX_KEPT_BULK_PER_PEER + 3
        data = os.urandom(2_000_000)
        await asyncio.gather(*(a.transport.send_bulk(b.contact, f"c{i}", [data]) for i in range(n)))
        await eventually(lambda: len(sink.done) == n)
        assert len(dials) == n  # concurrent streams each need their own connection
        assert a.transport.kept_bulk_count <= MAX_KEPT_BULK_PER_PEER
        await eventually(lambda: b.transport.kept_bulk_count <= MAX_KEPT_BULK_PER_PEER)
        await asyncio.gather(*(a.transport.send_bulk(b.contact, f"d{i}", [data]) for i in range(2)))
        await eventually(lambda: len(sink.done) == n + 2)
        assert len(dials) == n  # reused
        await close_all(a, b)

    run(body())


def test_kept_bulk_connection_is_evicted_for_a_new_connection() -> None:
    async def body() -> None:
        sink = Sink()
        a = Node()
        b = Node(max_connections=1)
        c = Node()
        await started(a, b, c)
        b.transport.set_bulk_handler(sink.accept, sink.complete, sink.fail)
        await a.transport.send_bulk(b.contact, "fill", [b"f" * 100])
        await eventually(lambda: b.transport.kept_bulk_count == 1)
        await c.transport.send(b.contact, Ping(7))  # needs b's only slot
        await eventually(lambda: b.pings == [7])
        assert b.transport.kept_bulk_count == 0
        await a.transport.send_bulk(b.contact, "after", [b"g" * 100])  # stale: redials
        await eventually(lambda: "after" in sink.done)
        await close_all(a, b, c)

    run(body())


def test_garbage_between_streams_is_reported() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = BulkClient(a.identity, "", b.contact)
        await asyncio.to_thread(client.send_stream, "good", [memoryview(b"abc")])
        assert client.reusable and client.connected
        sealer = client._sealer
        assert sealer is not None and client._sock is not None
        # a DATA record where the next stream's header must come
        await asyncio.to_thread(client._sock.sendall, sealer.seal(RecordType.BULK_DATA, b"x"))
        await eventually(lambda: bool(b.bad), what="bad peer report")
        assert b.bad[0][0] == a.identity.peer_id and "header" in b.bad[0][1]
        assert sink.done.keys() == {"good"}
        client.close()
        await close_all(a, b)

    run(body())


def test_second_stream_on_a_kept_connection_still_checks_sizes() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = BulkClient(a.identity, "", b.contact)
        await asyncio.to_thread(client.send_stream, "good", [memoryview(b"abc")])
        await asyncio.to_thread(client.announce, "short", 100)
        await asyncio.to_thread(client.send_chunk, memoryview(bytes(40)))
        with pytest.raises(bulk_module.BulkStreamError, match="after 40 of 100"):
            await asyncio.to_thread(client.finish)
        client.close()
        await eventually(lambda: "short" in sink.failed)
        assert sink.done.keys() == {"good"}
        await close_all(a, b)

    run(body())


def test_sealer_room_check() -> None:
    sealer = RecordSealer(bytes(32))
    assert sealer.has_room(10, 1000)
    sealer._counter = MAX_RECORDS - 5
    assert sealer.has_room(5, 0) and not sealer.has_room(6, 0)


def test_abandoned_stream_closes_after_the_handshake_without_a_report() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = BulkClient(a.identity, "", b.contact)
        client.abandon()  # as send_bulk does when cancelled mid-handshake
        with pytest.raises(bulk_module.BulkStreamError, match="abandoned"):
            await asyncio.to_thread(client.send_stream, "gone", [memoryview(b"abc")])
        assert client.result is not None  # the handshake was completed, not cut
        await eventually(lambda: b.transport.bulk_stream_count == 0)
        await asyncio.sleep(0.05)
        assert not b.bad and sink.announced == [] and not sink.failed
        await close_all(a, b)

    run(body())


def test_cancelled_sends_leave_no_reports(dials: list[str]) -> None:
    """Sends cancelled at every point of their life (dial, handshake, stream) never make
    the receiver report a misbehaving peer for a cut handshake."""

    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        for delay in (0.0, 0.0005, 0.001, 0.002, 0.004):
            task = asyncio.create_task(a.transport.send_bulk(b.contact, f"x{delay}", [b"y"]))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            a.transport._drop_kept_bulk(b.contact)  # the next one dials again
        await asyncio.sleep(0.1)
        assert not [r for r in b.bad if "handshake" in r[1]], b.bad
        await close_all(a, b)

    run(body())
