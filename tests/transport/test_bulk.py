"""Bulk streams: intact delivery, and refusal of every kind of lying sender."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
from dataclasses import dataclass, field

import pytest

from shoal.identity.keys import Identity
from shoal.transport import BulkRejected, BulkStreamError, PeerIdMismatch
from shoal.transport.bulk import BulkClient
from shoal.wire.contact import Contact
from shoal.wire.limits import BULK_CHUNK_BYTES, MAX_STREAM_BYTES

from .helpers import Node, Ping, close_all, eventually, run, started

MiB = 1024 * 1024


@dataclass
class Sink:
    """A bulk receiver that hands out fresh buffers and records outcomes."""

    refuse: bool = False
    wrong_size: bool = False
    announced: list[tuple[str, int]] = field(default_factory=list)
    done: dict[str, bytes] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def accept(self, sender: Contact, tag: str, size: int) -> memoryview | None:
        self.announced.append((tag, size))
        if self.refuse:
            return None
        return memoryview(bytearray(size + 1 if self.wrong_size else size))

    def complete(self, sender: Contact, tag: str, buf: memoryview) -> None:
        self.done[tag] = hashlib.sha256(buf).digest()

    def fail(self, sender: Contact, tag: str, reason: str) -> None:
        self.failed[tag] = reason


async def receiver(sink: Sink) -> tuple[Node, Node]:
    a, b = Node(), Node()
    await started(a, b)
    b.transport.set_bulk_handler(sink.accept, sink.complete, sink.fail)
    return a, b


def test_20_mib_stream_arrives_intact() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        data = os.urandom(20 * MiB + 12345)
        # odd-sized pieces exercise chunk boundaries; no piece is copied
        cuts = [0, 3 * MiB + 7, 3 * MiB + 8, 11 * MiB, len(data)]
        view = memoryview(data)
        pieces = [view[x:y] for x, y in itertools.pairwise(cuts)]
        await a.transport.send_bulk(b.contact, "grad/0", pieces)
        await eventually(lambda: "grad/0" in sink.done)
        assert sink.announced == [("grad/0", len(data))]
        assert sink.done["grad/0"] == hashlib.sha256(data).digest()
        assert a.transport.bytes_sent >= len(data) and b.transport.bytes_received >= len(data)
        assert a.transport.bulk_stream_count == 0 and not b.bad
        await close_all(a, b)

    run(body())


def test_concurrent_streams_and_empty_stream() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        blobs = {f"t{i}": os.urandom(i * 700_000 + 1) for i in range(4)}
        blobs["empty"] = b""
        await asyncio.gather(
            *(a.transport.send_bulk(b.contact, t, [memoryview(d)]) for t, d in blobs.items())
        )
        await eventually(lambda: len(sink.done) == len(blobs))
        assert sink.done == {t: hashlib.sha256(d).digest() for t, d in blobs.items()}
        await close_all(a, b)

    run(body())


def test_refusals() -> None:
    async def body() -> None:
        sink = Sink(refuse=True)
        a, b = await receiver(sink)
        with pytest.raises(BulkRejected, match="refused by the receiver"):
            await a.transport.send_bulk(b.contact, "x", [b"abc"])
        sink.refuse, sink.wrong_size = False, True
        with pytest.raises(BulkRejected, match="could not provide a buffer"):
            await a.transport.send_bulk(b.contact, "y", [b"abc"])
        c = Node()
        await c.start()  # no handler at all
        with pytest.raises(BulkRejected, match="accepts no bulk"):
            await a.transport.send_bulk(c.contact, "z", [b"abc"])
        wrong = Contact(Identity.generate().peer_id, b.contact.addr)
        with pytest.raises(PeerIdMismatch):
            await a.transport.send_bulk(wrong, "w", [b"abc"])
        with pytest.raises(ValueError, match="tag"):
            await a.transport.send_bulk(b.contact, "t" * 300, [b"abc"])
        assert sink.done == {}
        await close_all(a, b, c)

    run(body())


async def lying_client(a: Node, b: Node) -> BulkClient:
    client = BulkClient(a.identity, "", b.contact)
    await asyncio.to_thread(client.connect)
    return client


def test_oversize_announcement_rejected() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        with pytest.raises(BulkRejected, match="limit"):
            await asyncio.to_thread(client.announce, "huge", MAX_STREAM_BYTES + 1)
        client.close()
        assert sink.announced == []  # the handler never saw it
        assert b.bad and b.bad[0][0] == a.identity.peer_id
        await close_all(a, b)

    run(body())


def test_sender_sending_more_than_announced_is_rejected() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        await asyncio.to_thread(client.announce, "over", 100)
        await asyncio.to_thread(client.send_chunk, memoryview(bytes(60)))
        with pytest.raises(BulkStreamError, match="more than the 100 bytes"):
            await asyncio.to_thread(client.send_chunk, memoryview(bytes(60)))
            await asyncio.to_thread(client.finish)
        client.close()
        await eventually(lambda: "over" in sink.failed)
        assert "more than the 100 bytes" in sink.failed["over"] and sink.done == {}
        await close_all(a, b)

    run(body())


def test_sender_ending_early_is_rejected() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        await asyncio.to_thread(client.announce, "under", 100)
        await asyncio.to_thread(client.send_chunk, memoryview(bytes(50)))
        with pytest.raises(BulkStreamError, match="after 50 of 100"):
            await asyncio.to_thread(client.finish)
        client.close()
        await eventually(lambda: "under" in sink.failed)
        assert sink.done == {}
        await close_all(a, b)

    run(body())


def test_sender_stopping_mid_stream_is_rejected() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        await asyncio.to_thread(client.announce, "cut", 3 * BULK_CHUNK_BYTES)
        await asyncio.to_thread(client.send_chunk, memoryview(bytes(BULK_CHUNK_BYTES)))
        client.close()
        await eventually(lambda: "cut" in sink.failed)
        assert "stopped mid-stream" in sink.failed["cut"] and sink.done == {}
        assert b.transport.bulk_stream_count == 0
        await close_all(a, b)

    run(body())


def test_oversized_chunk_record_is_rejected() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        await asyncio.to_thread(client.announce, "fat", 4 * BULK_CHUNK_BYTES)
        with pytest.raises(BulkStreamError):
            await asyncio.to_thread(client.send_chunk, memoryview(bytes(2 * BULK_CHUNK_BYTES)))
            await asyncio.to_thread(client.finish)
        client.close()
        await eventually(lambda: "fat" in sink.failed)
        assert "chunk of" in sink.failed["fat"]
        await close_all(a, b)

    run(body())


def test_aclose_aborts_a_stalled_stream_and_joins_threads() -> None:
    threads_before = threading.active_count()

    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        client = await lying_client(a, b)
        await asyncio.to_thread(client.announce, "stall", 10 * MiB)
        await eventually(lambda: b.transport.bulk_stream_count == 1)
        async with asyncio.timeout(5):  # much less than BULK_IO_TIMEOUT_S
            await close_all(a, b)
        client.close()
        assert sink.done == {}

    run(body())
    assert threading.active_count() == threads_before


def test_cancelled_send_bulk_stops_its_thread() -> None:
    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        data = memoryview(bytes(64 * MiB))
        task = asyncio.create_task(a.transport.send_bulk(b.contact, "c", [data]))
        await eventually(lambda: sink.announced != [])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.transport.bulk_stream_count == 0
        await eventually(lambda: "c" in sink.failed)
        assert sink.done == {}
        await close_all(a, b)

    run(body())


def test_bytes_sent_by_kind_add_up_to_bytes_sent() -> None:
    """Where a node's bytes go: each message type, the handshakes and the streams,
    summing to exactly what the transport counted as sent, on both sides."""

    async def body() -> None:
        sink = Sink()
        a, b = await receiver(sink)
        await a.transport.send(b.contact, Ping(0, b"x" * 100))
        data = os.urandom(MiB + 3)
        await a.transport.send_bulk(b.contact, "g/0", [memoryview(data)])
        await eventually(lambda: "g/0" in sink.done and b.pings == [0])
        await b.transport.send(a.contact, Ping(1))
        await eventually(lambda: a.pings == [1])
        for t in (a.transport, b.transport):
            kinds = t.bytes_sent_by_kind
            assert sum(kinds.values()) == t.bytes_sent, kinds
            assert kinds[Ping.TYPE] > 0
        sent = a.transport.bytes_sent_by_kind
        assert sent["handshake"] > 0  # a dialled b
        assert len(data) <= sent["bulk"] < len(data) * 1.01  # tags and framing: < 1%
        assert b.transport.bytes_sent_by_kind.get("bulk", 0) < 64 * 1024  # b only acks
        await close_all(a, b)

    run(body())
