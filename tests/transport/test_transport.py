"""Two or more real Transports on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable

import pytest

from shoal.identity.keys import Identity
from shoal.transport import (
    HandshakeError,
    PeerIdMismatch,
    PeerUnreachable,
    Transport,
    TransportClosed,
    TransportError,
)
from shoal.transport import transport as transport_module
from shoal.transport.channel import RECORD_HEADER, RecordType
from shoal.transport.handshake import HS_HEADER, MAGIC, MSG_HELLO, Initiator
from shoal.wire.contact import Contact
from shoal.wire.frames import HEADER

from .helpers import CODEC, Node, Ping, RawClient, close_all, eventually, run, started
from .test_handshake import Forger


def test_messages_flow_both_ways_over_one_connection() -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        await a.transport.send(b.contact, Ping(0, b"hi"))
        await eventually(lambda: b.pings == [0])
        sender, msg = b.inbox[0]
        assert sender == a.contact and msg == Ping(0, b"hi")
        await b.transport.send(sender, Ping(100))
        await eventually(lambda: a.pings == [100])
        assert a.inbox[0][0] == b.contact

        for n in range(1, 31):
            await asyncio.gather(
                a.transport.send(b.contact, Ping(n)), b.transport.send(a.contact, Ping(100 + n))
            )
        await eventually(lambda: len(b.pings) == 31 and len(a.pings) == 31)
        assert b.pings == list(range(31)) and a.pings == list(range(100, 131))
        assert a.transport.connection_count == 1 and b.transport.connection_count == 1
        assert a.transport.bytes_sent == b.transport.bytes_received > 31 * 16
        assert b.transport.bytes_sent == a.transport.bytes_received > 31 * 16
        assert not a.bad and not b.bad
        await close_all(a, b)

    run(body())


def test_concurrent_sends_to_a_new_peer_share_one_dial() -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        await asyncio.gather(*(a.transport.send(b.contact, Ping(n)) for n in range(20)))
        await eventually(lambda: len(b.pings) == 20)
        assert sorted(b.pings) == list(range(20))
        assert a.transport.connection_count == 1 and b.transport.connection_count == 1
        await close_all(a, b)

    run(body())


def test_large_message_and_client_only_sender() -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await b.start()  # a never listens: b learns its observed address
        blob = os.urandom(900_000)
        await a.transport.send(b.contact, Ping(1, blob))
        await eventually(lambda: b.pings == [1])
        sender, msg = b.inbox[0]
        assert isinstance(msg, Ping) and msg.data == blob
        assert sender.peer_id == a.identity.peer_id and sender.addr.startswith("127.0.0.1:")
        await b.transport.send(sender, Ping(2))  # reply rides the inbound connection
        await eventually(lambda: a.pings == [2])
        await close_all(a, b)

    run(body())


def test_dialling_the_wrong_peer_id_raises_mismatch() -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        wrong = Contact(Identity.generate().peer_id, b.contact.addr)
        with pytest.raises(PeerIdMismatch):
            await a.transport.send(wrong, Ping(1))
        assert a.transport.connection_count == 0 and b.pings == []
        await a.transport.send(b.contact, Ping(2))
        await eventually(lambda: b.pings == [2])
        await close_all(a, b)

    run(body())


def test_unreachable_peer_raises() -> None:
    async def body() -> None:
        a = Node()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(PeerUnreachable):
            await a.transport.send(
                Contact(Identity.generate().peer_id, f"127.0.0.1:{port}"), Ping(1)
            )
        await close_all(a)

    run(body())


def test_impostor_with_forged_signature_is_rejected_both_ways() -> None:
    async def body() -> None:
        victim = Identity.generate()
        a, b = Node(), Node()
        impostor = Transport(
            Forger(victim, Identity.generate()),  # type: ignore[arg-type]
            CODEC,
            on_message=lambda c, m: None,
        )
        await started(a, b)
        imp_contact = await impostor.start("127.0.0.1", 0)
        # a dials "victim" but reaches the impostor.
        with pytest.raises(HandshakeError, match="bad signature") as err:
            await a.transport.send(Contact(victim.peer_id, imp_contact.addr), Ping(1))
        assert not isinstance(err.value, PeerIdMismatch)
        # the impostor dials b pretending to be victim.
        with contextlib.suppress(TransportError):
            await impostor.send(b.contact, Ping(2))
        await eventually(lambda: any("bad signature" in r for _, r in b.bad))
        assert b.pings == [] and b.transport.connection_count == 0
        await impostor.aclose()
        await close_all(a, b)

    run(body())


def test_unknown_handshake_version_gets_a_clear_reject() -> None:
    async def body() -> None:
        b = Node()
        await b.start()
        host, port = b.contact.host_port()
        reader, writer = await asyncio.open_connection(host, port)
        hello = HS_HEADER.pack(MAGIC, 42, MSG_HELLO) + os.urandom(32)
        writer.write(HEADER.pack(len(hello)) + hello)
        reply = await reader.read()  # until b closes
        assert b"version 42" in reply and reply[4:9] == MAGIC
        writer.close()
        assert any("UnsupportedVersion" in r for _, r in b.bad)
        await close_all(b)

    run(body())


GARBAGE = {
    "random": os.urandom(3000),
    "oversized-length": b"\xff\xff\xff\xf0" + b"x" * 100,
    "truncated-hello": HEADER.pack(39) + HS_HEADER.pack(MAGIC, 1, MSG_HELLO) + b"\x01" * 10,
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("stop", ["before-hello", "after-response"])
def test_close_between_handshake_messages_is_not_reported(stop: str) -> None:
    """A dial cancelled part-way (or a TCP health check) cuts no message in half: the
    listener logs it but reports no misbehaving peer. A truncated frame still is
    (test_pre_handshake_garbage_closes_only_that_connection[truncated-hello])."""

    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        host, port = b.contact.host_port()
        reader, writer = await asyncio.open_connection(host, port)
        if stop == "after-response":
            machine = Initiator(
                Identity.generate(), listen_addr="", expected_peer=b.identity.peer_id
            )
            writer.write(machine.start())
            await writer.drain()
            async with asyncio.timeout(5):
                reply = await reader.read(4096)
            assert reply  # the responder answered our hello and now waits for FINISH
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: b.transport._handshaking == 0, what="handshake slot freed")
        assert b.bad == []
        await a.transport.send(b.contact, Ping(1))  # the listener still serves
        await eventually(lambda: b.pings == [1])
        await close_all(a, b)

    run(body())


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_pre_handshake_garbage_closes_only_that_connection(kind: str) -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        await a.transport.send(b.contact, Ping(1))
        host, port = b.contact.host_port()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(GARBAGE[kind])
        writer.write_eof()
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass  # b must close its end
        writer.close()
        await eventually(lambda: len(b.bad) == 1, what="bad-peer report")
        assert b.bad[0][0] is None
        await a.transport.send(b.contact, Ping(2))
        await eventually(lambda: b.pings == [1, 2])
        assert b.transport.connection_count == 1
        await close_all(a, b)

    run(body())


POST_HANDSHAKE = {
    "garbage-record": (RECORD_HEADER.pack(40, RecordType.MESSAGE) + os.urandom(39), "BadRecord"),
    "oversized-length": (b"\x7f\xff\xff\xff", "FrameTooLarge"),
    "short-record": (HEADER.pack(3) + b"abc", "BadRecord"),
}


@pytest.mark.parametrize("kind", sorted(POST_HANDSHAKE))
def test_post_handshake_garbage_closes_only_that_connection(kind: str) -> None:
    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        await a.transport.send(b.contact, Ping(1))
        raw = await RawClient.connect(b.contact)
        await raw.send_raw(raw.sealer.seal(RecordType.MESSAGE, CODEC.encode(Ping(7))))
        await eventually(lambda: 7 in b.pings)  # the raw client really is a valid peer
        blob, reason = POST_HANDSHAKE[kind]
        await raw.send_raw(blob)
        assert await raw.closed_by_peer()
        await eventually(lambda: len(b.bad) == 1)
        assert b.bad[0][0] == raw.identity.peer_id
        assert reason in b.bad[0][1]
        raw.close()
        await a.transport.send(b.contact, Ping(2))
        await eventually(lambda: b.pings == [1, 7, 2])
        await close_all(a, b)

    run(body())


def test_truncated_record_then_eof_is_reported() -> None:
    async def body() -> None:
        b = Node()
        await b.start()
        raw = await RawClient.connect(b.contact)
        rec = raw.sealer.seal(RecordType.MESSAGE, CODEC.encode(Ping(1)))
        await raw.send_raw(rec[:-5])
        raw.writer.write_eof()
        await eventually(lambda: len(b.bad) == 1)
        assert "TruncatedStream" in b.bad[0][1] and b.pings == []
        raw.close()
        await close_all(b)

    run(body())


def test_tampered_ciphertext_closes_the_connection() -> None:
    async def body() -> None:
        b = Node()
        await b.start()
        raw = await RawClient.connect(b.contact)
        rec = bytearray(raw.sealer.seal(RecordType.MESSAGE, CODEC.encode(Ping(1))))
        rec[10] ^= 0x40
        after = raw.sealer.seal(RecordType.MESSAGE, CODEC.encode(Ping(2)))
        await raw.send_raw(bytes(rec) + after)
        assert await raw.closed_by_peer()
        await eventually(lambda: len(b.bad) == 1)
        assert b.bad[0][0] == raw.identity.peer_id
        assert "authentication" in b.bad[0][1]
        assert b.pings == [] and b.transport.connection_count == 0
        raw.close()
        await close_all(b)

    run(body())


def test_undecodable_message_is_reported() -> None:
    async def body() -> None:
        b = Node()
        await b.start()
        raw = await RawClient.connect(b.contact)
        await raw.send_raw(raw.sealer.seal(RecordType.MESSAGE, b"\xc1not msgpack"))
        assert await raw.closed_by_peer()
        await eventually(lambda: len(b.bad) == 1)
        assert "MalformedMessage" in b.bad[0][1]
        raw.close()
        await close_all(b)

    run(body())


def test_max_connections_evicts_least_recently_used_idle() -> None:
    async def body() -> None:
        hub = Node(max_connections=2)
        peers = [Node() for _ in range(3)]
        await started(hub, *peers)

        def received(n: int) -> Callable[[], bool]:
            return lambda: len(hub.pings) == n

        for i, p in enumerate(peers):
            await p.transport.send(hub.contact, Ping(i))
            await eventually(received(i + 1))
            assert hub.transport.connection_count <= 2
        assert hub.transport.connection_count == 2
        await eventually(lambda: peers[0].transport.connection_count == 0, what="evicted")
        await peers[0].transport.send(hub.contact, Ping(9))  # redials
        await eventually(lambda: 9 in hub.pings)
        assert hub.transport.connection_count == 2
        await close_all(hub, *peers)

    run(body())


def test_max_connections_refuses_when_nothing_is_idle() -> None:
    async def body() -> None:
        hub, b = Node(max_connections=1), Node()
        await started(hub, b)
        host, port = hub.contact.host_port()
        _, squatter = await asyncio.open_connection(host, port)  # holds the only slot
        await asyncio.sleep(0.05)
        with pytest.raises(TransportError):
            await b.transport.send(hub.contact, Ping(1))
        assert hub.pings == []
        squatter.close()
        # it sent nothing, so it is dropped without a bad-peer report; its slot frees
        await eventually(lambda: hub.transport._handshaking == 0, what="squatter dropped")
        assert hub.bad == []

        async def retry() -> None:
            while True:
                try:
                    await b.transport.send(hub.contact, Ping(2))
                    return
                except TransportError:
                    await asyncio.sleep(0.05)

        await retry()
        await eventually(lambda: hub.pings == [2])
        await close_all(hub, b)

    run(body())


def test_stalled_handshake_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "HANDSHAKE_TIMEOUT_S", 0.3)

    async def body() -> None:
        b = Node()
        await b.start()
        host, port = b.contact.host_port()
        reader, writer = await asyncio.open_connection(host, port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert any("handshake not done" in r for _, r in b.bad)
        await close_all(b)

    run(body())


def test_aclose_leaves_nothing_running() -> None:
    threads_before = threading.active_count()

    async def body() -> None:
        a, b = Node(), Node()
        await started(a, b)
        await a.transport.send(b.contact, Ping(1))
        await b.transport.send(a.contact, Ping(2))
        await eventually(lambda: b.pings == [1] and a.pings == [2])
        host, port = b.contact.host_port()
        _, half_open = await asyncio.open_connection(host, port)  # mid-handshake
        await asyncio.sleep(0.05)
        await close_all(a, b)
        assert a.transport.connection_count == 0 and b.transport.connection_count == 0
        with pytest.raises(TransportClosed):
            await a.transport.send(b.contact, Ping(3))
        half_open.close()
        # run() asserts that no task is left besides the test body

    run(body())
    assert threading.active_count() == threads_before
