"""Shared test fixtures: a tiny message type, nodes that record what they receive,
and a raw client that does the handshake by hand so tests can misbehave after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from shoal.identity.keys import Identity, PeerId
from shoal.transport import Initiator, Transport
from shoal.transport.channel import RecordOpener, RecordSealer
from shoal.transport.handshake import HandshakeResult
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact
from shoal.wire.fields import as_bytes, as_int, expect_len
from shoal.wire.limits import MAX_MESSAGE_BYTES

T = TypeVar("T")


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[str] = "test.ping"
    n: int
    data: bytes = b""

    def to_fields(self) -> list[Any]:
        return [self.n, self.data]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Ping:
        expect_len(fields, 2, "ping")
        return cls(as_int(fields[0], "n"), as_bytes(fields[1], "data", MAX_MESSAGE_BYTES))


CODEC = Codec([Ping])


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """asyncio.run with an overall timeout, asserting no task outlives the test body."""

    async def main() -> T:
        async with asyncio.timeout(timeout):
            result = await coro
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"tasks left running: {leftover}"
        return result

    return asyncio.run(main())


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


@dataclass
class Node:
    """A Transport plus everything it reported."""

    identity: Identity = field(default_factory=Identity.generate)
    max_connections: int = 64
    inbox: list[tuple[Contact, Message]] = field(default_factory=list)
    bad: list[tuple[PeerId | None, str]] = field(default_factory=list)
    transport: Transport = field(init=False)

    def __post_init__(self) -> None:
        self.transport = Transport(
            self.identity,
            CODEC,
            on_message=lambda c, m: self.inbox.append((c, m)),
            on_bad_peer=lambda p, r: self.bad.append((p, r)),
            max_connections=self.max_connections,
        )

    async def start(self) -> Contact:
        return await self.transport.start("127.0.0.1", 0)

    @property
    def contact(self) -> Contact:
        return self.transport.contact

    @property
    def pings(self) -> list[int]:
        return [m.n for _, m in self.inbox if isinstance(m, Ping)]


async def started(*nodes: Node) -> None:
    for n in nodes:
        await n.start()


async def close_all(*nodes: Node) -> None:
    for n in nodes:
        await n.transport.aclose()


@dataclass
class RawClient:
    """A hand-driven initiator: lets tests send arbitrary bytes after a real handshake."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    result: HandshakeResult
    sealer: RecordSealer
    opener: RecordOpener
    identity: Identity

    @classmethod
    async def connect(cls, to: Contact, identity: Identity | None = None) -> RawClient:
        host, port = to.host_port()
        reader, writer = await asyncio.open_connection(host, port)
        identity = identity or Identity.generate()
        machine = Initiator(identity, listen_addr="", expected_peer=to.peer_id)
        writer.write(machine.start())
        while machine.result is None:
            data = await reader.read(4096)
            assert data, "responder closed during handshake"
            out = machine.receive_data(data)
            writer.write(out)
        await writer.drain()
        res = machine.result
        return cls(
            reader, writer, res, RecordSealer(res.send_key), RecordOpener(res.recv_key), identity
        )

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the other side closed the connection."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()
