"""One authenticated asyncio message connection, plus the async handshake driver.

A Connection owns a StreamReader/StreamWriter pair whose handshake is done. Its
``run()`` loop reads bytes -> frames (FrameDecoder) -> records (RecordOpener) ->
messages (Codec) and hands each to ``on_message``. Reading is naturally
back-pressured: the next read waits until the handler returned, and the decoder
holds at most one partial frame (MAX_MESSAGE_BYTES + record overhead).

Sending seals one MESSAGE record per message and writes it; before writing, it waits
(``drain``) while the bytes already queued plus this record would exceed
MAX_PENDING_BYTES_PER_CONNECTION, and after writing it drains. A peer that stops
reading for WRITE_STALL_TIMEOUT_S is dropped.

Any malformed frame, bad tag, non-MESSAGE record or undecodable message is the
peer's fault: the reason is logged, ``on_bad_peer(peer_id, reason)`` is called, and
this connection (only) is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.identity.keys import PeerId
from shoal.transport.channel import RECORD_OVERHEAD, RecordOpener, RecordSealer, RecordType
from shoal.transport.errors import (
    ChannelError,
    HandshakeAbandoned,
    HandshakeError,
    PeerUnreachable,
    ProtocolViolation,
)
from shoal.transport.handshake import HandshakeResult, Initiator, Responder
from shoal.wire.codec import Codec, DecodeError, Message
from shoal.wire.contact import Contact
from shoal.wire.frames import FrameDecoder, FrameError
from shoal.wire.limits import MAX_MESSAGE_BYTES, MAX_PENDING_BYTES_PER_CONNECTION

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
WRITE_STALL_TIMEOUT_S = 30.0
CLOSE_GRACE_S = 1.0
MAX_MESSAGE_FRAME = 1 + MAX_MESSAGE_BYTES + RECORD_OVERHEAD

OnMessage = Callable[[Contact, Message], None]
OnBadPeer = Callable[[PeerId | None, str], None]


@dataclass(slots=True)
class TrafficCounters:
    """Bytes on the wire (handshakes, framing and tags included)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    # bytes_sent split by what carried them: each message type's name (its record
    # included), "handshake" for message connections', "bulk" for streams (their
    # handshakes included); the values always sum to bytes_sent
    sent_by_kind: dict[str, int] = field(default_factory=dict)

    def count_sent(self, kind: str, n: int) -> None:
        self.sent_by_kind[kind] = self.sent_by_kind.get(kind, 0) + n


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def report_bad_peer(
    on_bad_peer: OnBadPeer | None, peer: PeerId | None, who: str, reason: str
) -> None:
    log.warning("dropping %s: %s", who, reason)
    if on_bad_peer is not None:
        try:
            on_bad_peer(peer, reason)
        except Exception:
            log.exception("on_bad_peer callback failed")


async def run_handshake(
    sock: socket.socket,
    machine: Initiator | Responder,
    counters: TrafficCounters,
    first: bytes = b"",
) -> HandshakeResult:
    """Drive ``machine`` over a non-blocking socket until it has a result.

    The caller bounds the time (asyncio.timeout(HANDSHAKE_TIMEOUT_S)).
    """
    loop = asyncio.get_running_loop()
    if first:
        await loop.sock_sendall(sock, first)
        counters.bytes_sent += len(first)
        counters.count_sent("handshake", len(first))
    while machine.result is None:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            if machine.between_messages:
                raise HandshakeAbandoned("peer closed the connection between handshake messages")
            raise HandshakeError("peer closed the connection during the handshake")
        counters.bytes_received += len(data)
        out = machine.receive_data(data)
        if out:
            await loop.sock_sendall(sock, out)
            counters.bytes_sent += len(out)
            counters.count_sent("handshake", len(out))
    return machine.result


class ConnectionGone(PeerUnreachable):
    """The connection closed before this message was written (safe to redial)."""


class Connection:
    """An authenticated, encrypted message connection to one peer."""

    def __init__(
        self,
        *,
        peer: Contact,
        outbound: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        result: HandshakeResult,
        codec: Codec,
        counters: TrafficCounters,
        on_message: OnMessage,
        on_bad_peer: OnBadPeer | None,
        on_closed: Callable[[Connection], None],
    ) -> None:
        self.peer = peer
        self.outbound = outbound
        self._reader = reader
        self._writer = writer
        self._leftover = result.leftover
        self._sealer = RecordSealer(result.send_key)
        self._opener = RecordOpener(result.recv_key)
        self._decoder = FrameDecoder(max_frame=MAX_MESSAGE_FRAME)
        self._codec = codec
        self._counters = counters
        self._on_message = on_message
        self._on_bad_peer = on_bad_peer
        self._on_closed: Callable[[Connection], None] | None = on_closed
        self._closing = False
        self._sending = 0
        self.last_used = time.monotonic()

    @classmethod
    async def open(
        cls,
        sock: socket.socket,
        *,
        peer: Contact,
        outbound: bool,
        result: HandshakeResult,
        codec: Codec,
        counters: TrafficCounters,
        on_message: OnMessage,
        on_bad_peer: OnBadPeer | None,
        on_closed: Callable[[Connection], None],
    ) -> Connection:
        """Wrap a socket whose handshake is done in asyncio streams."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
        return cls(
            peer=peer,
            outbound=outbound,
            reader=reader,
            writer=writer,
            result=result,
            codec=codec,
            counters=counters,
            on_message=on_message,
            on_bad_peer=on_bad_peer,
            on_closed=on_closed,
        )

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def idle(self) -> bool:
        """No send is in progress (so closing it loses nothing we were asked to send)."""
        return self._sending == 0

    def __repr__(self) -> str:
        way = "out" if self.outbound else "in"
        return f"<Connection {way} {self.peer.peer_id.short()}@{self.peer.addr}>"

    async def run(self) -> None:
        """Read and dispatch messages until the peer closes or misbehaves."""
        try:
            data = self._leftover
            self._leftover = b""
            while not self._closing:
                if data:
                    self._dispatch(data)
                    if self._closing:
                        break
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self._decoder.eof()
                    log.debug("%r: peer closed", self)
                    break
                self._counters.bytes_received += len(data)
        except (FrameError, ChannelError, DecodeError, ProtocolViolation) as exc:
            report_bad_peer(self._on_bad_peer, self.peer.peer_id, repr(self), describe(exc))
            self.close(abort=True)
        except OSError as exc:
            log.debug("%r: %s", self, describe(exc))
        finally:
            self.close()
            await self.wait_closed()

    def _dispatch(self, data: bytes) -> None:
        for body in self._decoder.feed(data):
            rtype, payload = self._opener.open(body)
            if rtype != RecordType.MESSAGE:
                raise ProtocolViolation(f"record type {rtype} on a message connection")
            msg = self._codec.decode(payload)
            self.last_used = time.monotonic()
            try:
                self._on_message(self.peer, msg)
            except Exception:
                log.exception("on_message handler failed for %s from %r", msg.TYPE, self)
            if self._closing:
                return

    async def send(self, payload: bytes, kind: str = "message") -> None:
        """Seal and write one encoded message, with back-pressure; ``kind`` (its
        type) is what its bytes count under in ``TrafficCounters.sent_by_kind``."""
        self._sending += 1
        try:
            record_len = len(payload) + RECORD_OVERHEAD
            transport = self._writer.transport
            while (
                not self._closing
                and transport.get_write_buffer_size() + record_len
                > MAX_PENDING_BYTES_PER_CONNECTION
            ):
                await self._drain()
            if self._closing:
                raise ConnectionGone(f"connection to {self.peer} is closed")
            record = self._sealer.seal(RecordType.MESSAGE, payload)
            self._writer.write(record)
            self._counters.bytes_sent += len(record)
            self._counters.count_sent(kind, len(record))
            self.last_used = time.monotonic()
            await self._drain()
        except ChannelError as exc:  # our own key ran out: close, caller redials
            self.close()
            raise PeerUnreachable(f"connection to {self.peer}: {exc}") from exc
        finally:
            self._sending -= 1

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(WRITE_STALL_TIMEOUT_S):
                await self._writer.drain()
        except TimeoutError:
            self.close(abort=True)
            raise PeerUnreachable(
                f"{self.peer} stopped reading for {WRITE_STALL_TIMEOUT_S:.0f} s"
            ) from None
        except OSError as exc:
            self.close(abort=True)
            raise PeerUnreachable(f"connection to {self.peer} broke: {exc}") from exc

    def close(self, *, abort: bool = False) -> None:
        """Start closing (idempotent); ``abort`` drops queued bytes (bad peers)."""
        if abort:
            self._writer.transport.abort()
        if self._closing:
            return
        self._closing = True
        if not abort:
            self._writer.close()
        callback, self._on_closed = self._on_closed, None
        if callback is not None:
            callback(self)

    async def wait_closed(self) -> None:
        """Wait up to CLOSE_GRACE_S for queued bytes to flush, then abort."""
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            self._writer.transport.abort()
