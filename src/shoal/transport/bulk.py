"""Bulk streams: big byte buffers (tensors) over dedicated authenticated connections.

Bulk streams run on their own TCP connections, whose handshake says purpose=bulk, one
stream at a time per connection. The data phase runs in a worker thread on a
blocking socket: AES-GCM and socket calls release the GIL, so the event loop stays
responsive and the stream runs near line rate. Records (see channel.py) on a bulk
connection, sender S and receiver R::

    S->R  BULK_HEADER  u64 size | utf-8 tag (<= MAX_STRING_BYTES)
    R->S  BULK_ACCEPT  (empty)        or BULK_ABORT reason, then close
    S->R  BULK_DATA    <= BULK_CHUNK_BYTES stream bytes, repeated, in order
    S->R  BULK_END     (empty)
    R->S  BULK_DONE    (empty) or KEEP_OPEN,   or BULK_ABORT reason, then close

A DONE carrying KEEP_OPEN says the receiver waits (up to BULK_RECEIVER_IDLE_S) for
the next stream's HEADER on the same connection; the sender may reuse it for up to
BULK_IDLE_S. The keys and nonce counters simply continue, so a reused connection is
exactly as authenticated and encrypted as a fresh one; it saves the handshake (two
signatures, two verifications, X25519) and three round trips per stream, which at a
few dozen streams per all-reduce cost more CPU than encrypting the data
(docs/BENCHMARKS.md). An empty DONE means the receiver closes; any failure closes.

The receiver's accept handler returns a writable buffer of exactly ``size`` bytes
(or None to refuse); each DATA record is decrypted straight into its slice of that
buffer (``decrypt_into``), and the sender encrypts each chunk straight from the
caller's memoryview into one reused record buffer (``encrypt_into``), so no
whole-buffer copy is made on either side. The receiver checks the announced size
against MAX_STREAM_BYTES, refuses a DATA record that would overrun the announced
size, and requires END exactly at ``size``; EOF or a stall of BULK_IO_TIMEOUT_S
mid-stream fails the stream. A failed stream's buffer is never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from shoal.transport.channel import (
    RECORD_HEADER,
    RECORD_OVERHEAD,
    TAG_BYTES,
    RecordOpener,
    RecordSealer,
    RecordType,
)
from shoal.transport.errors import (
    BulkRejected,
    BulkStreamError,
    ChannelError,
    HandshakeError,
    PeerUnreachable,
    ProtocolViolation,
    TransportError,
)
from shoal.transport.handshake import PURPOSE_BULK, HandshakeResult, Initiator, Signer
from shoal.wire.contact import Contact
from shoal.wire.limits import (
    BULK_CHUNK_BYTES,
    HANDSHAKE_TIMEOUT_S,
    MAX_STRING_BYTES,
)

BULK_IO_TIMEOUT_S = 30.0
# A sender reuses an idle bulk connection for at most BULK_IDLE_S; the receiver waits
# twice as long for the next header, so normally the sender is the one that closes
# (a receiver closing first only costs the sender one redial, see StaleBulkConnection).
BULK_IDLE_S = 30.0
BULK_RECEIVER_IDLE_S = 2 * BULK_IDLE_S
# Kept (reusable) bulk connections per peer, on each side: an all-reduce needs ~2 per
# member pair at once; the cap bounds what an authenticated peer can make us hold.
MAX_KEPT_BULK_PER_PEER = 4
KEEP_OPEN = b"\x01"  # BULK_DONE payload: the receiver keeps the connection for another stream
# A cancelled stream whose handshake is under way gets this long to finish it before the
# socket is cut: a handshake cut half-way is what a misbehaving dialler does, and the
# peer reports it as one (an all-reduce cancels sends it no longer needs all the time).
ABANDON_GRACE_S = 0.5
_SIZE = struct.Struct(">Q")
MAX_CONTROL_PAYLOAD = _SIZE.size + MAX_STRING_BYTES  # largest header / abort reason

BulkAccept = Callable[[Contact, str, int], memoryview | None]
"""(sender, tag, size) -> writable buffer of exactly ``size`` bytes, or None to refuse."""
BulkComplete = Callable[[Contact, str, memoryview], None]
"""(sender, tag, buffer): every byte arrived and was authenticated."""
BulkFailed = Callable[[Contact, str, str], None]
"""(sender, tag, reason): an accepted stream broke off; the buffer is not delivered."""


def check_tag(tag: str) -> bytes:
    raw = tag.encode()
    if len(raw) > MAX_STRING_BYTES:
        raise ValueError(f"bulk tag longer than {MAX_STRING_BYTES} bytes")
    return raw


def encode_header(tag: str, size: int) -> bytes:
    return _SIZE.pack(size) + check_tag(tag)


def decode_header(payload: bytes) -> tuple[str, int]:
    if len(payload) < _SIZE.size or len(payload) > MAX_CONTROL_PAYLOAD:
        raise ProtocolViolation(f"bulk header of {len(payload)} bytes is malformed")
    (size,) = _SIZE.unpack_from(payload)
    try:
        tag = payload[_SIZE.size :].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("bulk tag is not UTF-8") from exc
    return tag, size


def as_byte_views(buffers: Sequence[memoryview | bytes | bytearray]) -> list[memoryview]:
    """Flat unsigned-byte views of C-contiguous buffers (no copy)."""
    views = []
    for b in buffers:
        v = memoryview(b)
        if not v.c_contiguous:
            raise ValueError("bulk buffers must be C-contiguous")
        views.append(v.cast("B") if v.format != "B" or v.ndim != 1 else v)
    return views


def receive_buffer(buf: object, size: int) -> memoryview:
    """Validate what an accept handler returned: writable, contiguous, ``size`` bytes."""
    v = memoryview(buf)  # type: ignore[arg-type]
    if v.readonly or not v.c_contiguous:
        raise ValueError("bulk accept handler must return a writable contiguous buffer")
    v = v.cast("B") if v.format != "B" or v.ndim != 1 else v
    if len(v) != size:
        raise ValueError(f"bulk accept handler returned {len(v)} bytes for a {size}-byte stream")
    return v


class StaleBulkConnection(BulkStreamError):
    """A kept connection broke before the receiver accepted the stream (the receiver
    closed it while idle): nothing was delivered, so the sender redials once."""


class BlockingRecords:
    """Reads records from a blocking socket, starting with already-received bytes."""

    def __init__(self, sock: socket.socket, prefix: bytes = b"") -> None:
        self._sock = sock
        self._prefix = memoryview(prefix)
        self.bytes_received = 0

    def read_exact_into(self, out: memoryview) -> None:
        got = 0
        if self._prefix:
            got = min(len(self._prefix), len(out))
            out[:got] = self._prefix[:got]
            self._prefix = self._prefix[got:]
        while got < len(out):
            n = self._sock.recv_into(out[got:])
            if n == 0:
                raise EOFError
            got += n
            self.bytes_received += n

    def leftover(self) -> bytes:
        """Bytes received past the last record read (the next record's start)."""
        return bytes(self._prefix)

    def read_header(self) -> tuple[int, int]:
        """(frame length, record type) of the next record."""
        hdr = bytearray(RECORD_HEADER.size)
        self.read_exact_into(memoryview(hdr))
        length, rtype = RECORD_HEADER.unpack(hdr)
        return int(length), int(rtype)

    def read_control(self, opener: RecordOpener) -> tuple[int, bytes]:
        """A small (non-DATA) record, opened."""
        length, rtype = self.read_header()
        if length < 1 + TAG_BYTES or length > 1 + MAX_CONTROL_PAYLOAD + TAG_BYTES:
            raise ProtocolViolation(f"control record of {length} bytes")
        body = bytearray(length)
        body[0] = rtype
        self.read_exact_into(memoryview(body)[1:])
        return opener.open(body)


class BulkClient:
    """Blocking sender side of one bulk stream. Runs in a worker thread.

    ``send_stream`` is the whole protocol; the step methods (connect, announce,
    send_chunk, finish) exist so tests can play a misbehaving sender. After a stream
    whose DONE said KEEP_OPEN, ``reusable`` is True and the socket stays open for the
    next ``send_stream`` (the Transport keeps such clients per peer).
    """

    def __init__(self, signer: Signer, listen_addr: str, to: Contact) -> None:
        self._signer = signer
        self._listen_addr = listen_addr
        self.to = to
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._aborted = False
        self._records: BlockingRecords | None = None
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        self._out = bytearray()
        self.bytes_sent = 0
        self._hs_received = 0
        self._counted = (0, 0)  # (sent, received) already handed out by take_counts
        self.result: HandshakeResult | None = None
        self.reusable = False
        self.last_used = 0.0  # loop time it went idle (set by the Transport)
        self._abandoned = False

    @property
    def bytes_received(self) -> int:
        stream = self._records.bytes_received if self._records is not None else 0
        return self._hs_received + stream

    @property
    def connected(self) -> bool:
        return self._records is not None and not self._aborted

    def take_counts(self) -> tuple[int, int]:
        """(bytes sent, bytes received) since the previous call."""
        sent, received = self.bytes_sent, self.bytes_received
        out = (sent - self._counted[0], received - self._counted[1])
        self._counted = (sent, received)
        return out

    def has_room(self, size: int) -> bool:
        """Whether a ``size``-byte stream fits under this connection's key limits."""
        if self._sealer is None or self._opener is None:
            return False
        records = -(-size // BULK_CHUNK_BYTES) + 2  # HEADER, DATA..., END
        return self._sealer.has_room(records, size + MAX_CONTROL_PAYLOAD) and (
            self._opener.has_room(2, MAX_CONTROL_PAYLOAD)  # ACCEPT, DONE
        )

    def abandon(self) -> None:
        """Thread-safe: stop before announcing the stream, but let a handshake under way
        finish first (see ABANDON_GRACE_S); ``abort`` cuts it."""
        self._abandoned = True

    def abort(self) -> None:
        """Thread-safe: make the worker's socket calls fail now."""
        with self._lock:
            self._aborted = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self.reusable = False
            self._records = None
            if self._sock is not None:
                self._sock.close()

    def _sendall(self, data: bytes | memoryview) -> None:
        assert self._sock is not None
        self._sock.sendall(data)
        self.bytes_sent += len(data)

    def connect(self) -> None:
        host, port = self.to.host_port()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        try:
            sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_S)
        except OSError as exc:
            raise PeerUnreachable(f"cannot connect to {self.to.addr}: {exc}") from exc
        with self._lock:
            self._sock = sock
            if self._aborted:
                raise BulkStreamError("bulk stream aborted locally")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        machine = Initiator(
            self._signer,
            listen_addr=self._listen_addr,
            expected_peer=self.to.peer_id,
            purpose=PURPOSE_BULK,
        )
        try:
            self._sendall(machine.start())
            while machine.result is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(4096)
                if not data:
                    raise HandshakeError("peer closed the connection during the handshake")
                self._hs_received += len(data)
                out = machine.receive_data(data)
                if out:
                    self._sendall(out)
        except TimeoutError as exc:
            raise HandshakeError(f"handshake with {self.to} timed out") from exc
        except OSError as exc:
            raise PeerUnreachable(f"connection to {self.to} broke: {exc}") from exc
        self.result = machine.result
        self._sealer = RecordSealer(self.result.send_key)
        self._opener = RecordOpener(self.result.recv_key)
        self._records = BlockingRecords(sock, self.result.leftover)
        sock.settimeout(BULK_IO_TIMEOUT_S)

    def _control(self) -> tuple[int, bytes]:
        assert self._records is not None and self._opener is not None
        return self._records.read_control(self._opener)

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        """Map socket failures to TransportErrors, using the peer's ABORT reason."""
        try:
            yield
        except (EOFError, OSError, ChannelError) as exc:
            raise self._explain(exc) from exc

    def announce(self, tag: str, size: int) -> None:
        with self._io():
            self._announce(tag, size)

    def send_chunk(self, chunk: memoryview) -> None:
        """One DATA record of at most BULK_CHUNK_BYTES."""
        with self._io():
            self._send_chunk(chunk)

    def finish(self) -> None:
        """Send END and wait until the receiver confirms it has every byte."""
        with self._io():
            self._finish()

    def _announce(self, tag: str, size: int) -> None:
        assert self._sealer is not None
        self._sendall(self._sealer.seal(RecordType.BULK_HEADER, encode_header(tag, size)))
        rtype, payload = self._control()
        if rtype == RecordType.BULK_ABORT:
            raise BulkRejected(
                f"{self.to.peer_id.short()} refused bulk stream {tag!r}: "
                f"{payload.decode('utf-8', 'replace')}"
            )
        if rtype != RecordType.BULK_ACCEPT:
            raise ProtocolViolation(f"expected BULK_ACCEPT, got record type {rtype}")

    def _send_chunk(self, chunk: memoryview) -> None:
        assert self._sealer is not None
        need = RECORD_OVERHEAD + len(chunk)
        if len(self._out) < need:
            self._out = bytearray(max(need, RECORD_OVERHEAD + BULK_CHUNK_BYTES))
        n = self._sealer.seal_into(RecordType.BULK_DATA, chunk, self._out)
        self._sendall(memoryview(self._out)[:n])

    def _finish(self) -> None:
        assert self._sealer is not None
        self._sendall(self._sealer.seal(RecordType.BULK_END, b""))
        rtype, payload = self._control()
        if rtype == RecordType.BULK_ABORT:
            raise BulkStreamError(
                f"receiver aborted the stream: {payload.decode('utf-8', 'replace')}"
            )
        if rtype != RecordType.BULK_DONE:
            raise ProtocolViolation(f"expected BULK_DONE, got record type {rtype}")
        if payload not in (b"", KEEP_OPEN):
            raise ProtocolViolation(f"BULK_DONE with a {len(payload)}-byte payload")
        self.reusable = payload == KEEP_OPEN

    def send_stream(self, tag: str, views: Sequence[memoryview]) -> None:
        """The whole sender protocol, on a new connection or, when ``connected``, on a
        kept one. The socket stays open only if the receiver said KEEP_OPEN; raises
        StaleBulkConnection if a kept connection fails before the stream is accepted."""
        size = sum(len(v) for v in views)
        reused = self.connected
        self.reusable = False
        done = False
        try:
            if not reused:
                self.connect()
            if self._abandoned:
                raise BulkStreamError("bulk stream abandoned locally")
            try:
                with self._io():
                    self._announce(tag, size)
            except (BulkRejected, ProtocolViolation):
                raise
            except TransportError as exc:
                if reused and not self._aborted:
                    raise StaleBulkConnection(f"kept bulk connection broke: {exc}") from exc
                raise
            with self._io():
                for v in views:
                    for off in range(0, len(v), BULK_CHUNK_BYTES):
                        self._send_chunk(v[off : off + BULK_CHUNK_BYTES])
                self._finish()
            done = True
        finally:
            if not (done and self.reusable):
                self.close()

    def _explain(self, exc: BaseException) -> TransportError:
        """Turn a socket failure into the receiver's ABORT reason when it sent one."""
        if self._aborted:
            return BulkStreamError("bulk stream aborted locally")
        if isinstance(exc, TransportError):
            return exc
        if self._records is not None and self._sock is not None:
            try:
                self._sock.settimeout(1.0)
                rtype, payload = self._control()
                if rtype == RecordType.BULK_ABORT:
                    return BulkStreamError(
                        f"receiver aborted the stream: {payload.decode('utf-8', 'replace')}"
                    )
            except (EOFError, OSError, TransportError):
                pass
        if isinstance(exc, EOFError):
            return BulkStreamError(f"{self.to.peer_id.short()} closed the bulk connection")
        if isinstance(exc, TimeoutError):
            return BulkStreamError(f"{self.to.peer_id.short()} stalled for {BULK_IO_TIMEOUT_S} s")
        return BulkStreamError(f"bulk connection to {self.to.peer_id.short()} broke: {exc}")


def receive_stream(
    sock: socket.socket,
    records: BlockingRecords,
    opener: RecordOpener,
    sealer: RecordSealer,
    out: memoryview,
    keep: bool = False,
) -> int:
    """Receiver data phase (worker thread, blocking socket): fill ``out`` exactly.

    Returns bytes sent (the DONE record, saying KEEP_OPEN if ``keep``). Raises
    BulkStreamError / ProtocolViolation / ChannelError; the caller then sends ABORT
    (best effort) and closes.
    """
    size = len(out)
    offset = 0
    ct = memoryview(bytearray(BULK_CHUNK_BYTES + TAG_BYTES))
    try:
        while True:
            length, rtype = records.read_header()
            body = length - 1
            if rtype == RecordType.BULK_DATA:
                n = body - TAG_BYTES
                if n < 0 or n > BULK_CHUNK_BYTES:
                    raise ProtocolViolation(f"bulk chunk of {n} bytes (limit {BULK_CHUNK_BYTES})")
                if offset + n > size:
                    raise BulkStreamError(
                        f"sender sent more than the {size} bytes it announced "
                        f"(chunk of {n} at offset {offset})"
                    )
                records.read_exact_into(ct[:body])
                opener.open_into(rtype, ct[:body], out[offset : offset + n])
                offset += n
            elif rtype == RecordType.BULK_END:
                if body != TAG_BYTES:
                    raise ProtocolViolation("BULK_END must be empty")
                records.read_exact_into(ct[:body])
                opener.open_into(rtype, ct[:body], out[:0])
                if offset != size:
                    raise BulkStreamError(
                        f"sender ended the stream after {offset} of {size} announced bytes"
                    )
                done = sealer.seal(RecordType.BULK_DONE, KEEP_OPEN if keep else b"")
                sock.sendall(done)
                return len(done)
            else:
                raise ProtocolViolation(f"record type {rtype} inside a bulk stream")
    except EOFError:
        raise BulkStreamError(f"sender stopped mid-stream after {offset} of {size} bytes") from None
    except TimeoutError:
        raise BulkStreamError(
            f"sender stalled for {BULK_IO_TIMEOUT_S:.0f} s after {offset} of {size} bytes"
        ) from None
    except OSError as exc:
        raise BulkStreamError(
            f"bulk connection broke after {offset} of {size} bytes: {exc}"
        ) from exc


async def read_control_async(
    sock: socket.socket, prefix: bytes, opener: RecordOpener, *, eof_ok: bool = False
) -> tuple[int, bytes, bytes] | None:
    """Read one control record from a non-blocking socket: (type, payload, leftover).

    With ``eof_ok`` (a kept connection between streams) a clean close before the first
    byte returns None; a close part-way through a record is an error either way."""
    loop = asyncio.get_running_loop()
    buf = bytearray(prefix)

    async def fill(n: int) -> bool:
        while len(buf) < n:
            data = await loop.sock_recv(sock, n - len(buf))
            if not data:
                if eof_ok and not buf:
                    return False
                raise BulkStreamError("sender closed the connection before the bulk header")
            buf.extend(data)
        return True

    if not await fill(RECORD_HEADER.size):
        return None
    length, rtype = RECORD_HEADER.unpack_from(buf)
    if length < 1 + TAG_BYTES or length > 1 + MAX_CONTROL_PAYLOAD + TAG_BYTES:
        raise ProtocolViolation(f"control record of {length} bytes")
    end = RECORD_HEADER.size - 1 + length
    await fill(end)
    rtype, payload = opener.open(bytes(buf[RECORD_HEADER.size - 1 : end]))
    return rtype, payload, bytes(buf[end:])
