"""The asyncio Transport: authenticated, encrypted connections keyed by PeerId.

A Transport listens on one TCP port and dials out on demand. Every connection starts
with the handshake (handshake.py), which proves both ends hold the Ed25519 keys of
their PeerIds; after it, records are AES-256-GCM (channel.py). Message connections
(connection.py) are shared by both directions: ``send`` reuses any live connection
to the PeerId, inbound or outbound, and concurrent sends to a new peer share one
dial. Bulk streams (bulk.py) run on dedicated bulk connections, one stream at a
time each, in a worker thread; a connection whose receiver said KEEP_OPEN is kept
(at most MAX_KEPT_BULK_PER_PEER per peer, for BULK_IDLE_S) and reused for the next
stream to that peer, with no new handshake.

Limits: handshaking + established + bulk connections (streaming or kept idle) never
exceed ``max_connections``. At the limit an idle kept bulk connection is closed
first, then the least recently used idle message connection (closed gracefully; the
peer redials when it next sends); if none is idle an inbound connection is refused
at accept and a dial raises TooManyConnections. A handshake has HANDSHAKE_TIMEOUT_S
to finish.

Concurrency: every task the Transport starts is tracked and awaited by ``aclose``;
worker threads are stopped by shutting their sockets down and are waited for too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shoal.identity.keys import Identity, PeerId
from shoal.transport.bulk import (
    ABANDON_GRACE_S,
    BULK_IDLE_S,
    BULK_IO_TIMEOUT_S,
    BULK_RECEIVER_IDLE_S,
    MAX_KEPT_BULK_PER_PEER,
    BlockingRecords,
    BulkAccept,
    BulkClient,
    BulkComplete,
    BulkFailed,
    StaleBulkConnection,
    as_byte_views,
    check_tag,
    decode_header,
    read_control_async,
    receive_buffer,
    receive_stream,
)
from shoal.transport.channel import RecordOpener, RecordSealer, RecordType
from shoal.transport.connection import (
    Connection,
    ConnectionGone,
    OnBadPeer,
    OnMessage,
    TrafficCounters,
    describe,
    report_bad_peer,
    run_handshake,
)
from shoal.transport.errors import (
    BulkStreamError,
    ChannelError,
    HandshakeAbandoned,
    HandshakeError,
    PeerUnreachable,
    ProtocolViolation,
    TooManyConnections,
    TransportClosed,
    TransportError,
    UnsupportedVersion,
)
from shoal.transport.handshake import (
    PURPOSE_BULK,
    HandshakeResult,
    Initiator,
    Responder,
    encode_reject,
)
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact, split_addr
from shoal.wire.limits import HANDSHAKE_TIMEOUT_S, MAX_CONNECTIONS, MAX_STREAM_BYTES

log = logging.getLogger(__name__)

T = TypeVar("T")
_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})
BULK_WORKERS = 16


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Transport:
    """Authenticated, encrypted messaging and bulk streams between PeerIds."""

    def __init__(
        self,
        identity: Identity,
        codec: Codec,
        *,
        on_message: OnMessage,
        advertise_host: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        on_bad_peer: OnBadPeer | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._identity = identity
        self._codec = codec
        self._on_message = on_message
        self._on_bad_peer = on_bad_peer
        self._advertise_host = advertise_host
        self._max = max_connections
        self._counters = TrafficCounters()
        self._listen_addr = ""
        self._contact: Contact | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[Connection] = set()
        self._by_peer: dict[PeerId, Connection] = {}
        self._dials: dict[PeerId, asyncio.Task[Connection]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshaking = 0
        self._bulk_active = 0
        self._bulk_clients: set[BulkClient] = set()
        self._bulk_socks: set[socket.socket] = set()
        # Kept bulk connections: ours, idle, by (peer, address), most recent last; and
        # inbound ones waiting for their next stream (socket -> loop time it went idle),
        # with how many inbound connections each peer has us keeping.
        self._bulk_idle: dict[tuple[PeerId, str], list[BulkClient]] = {}
        self._bulk_waiting: dict[socket.socket, float] = {}
        self._bulk_kept_in: dict[PeerId, int] = {}
        self._bulk_futures: set[asyncio.Future[Any]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._bulk_accept: BulkAccept | None = None
        self._bulk_complete: BulkComplete | None = None
        self._bulk_failed: BulkFailed | None = None
        self._closed = False

    # ---------------------------------------------------------------- properties

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def contact(self) -> Contact:
        """Our own Contact (after start)."""
        if self._contact is None:
            raise TransportClosed("transport is not listening; call start() first")
        return self._contact

    @property
    def bytes_sent(self) -> int:
        return self._counters.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._counters.bytes_received

    @property
    def bytes_sent_by_kind(self) -> dict[str, int]:
        """``bytes_sent`` by message type, "handshake" and "bulk" (streams); the
        values sum to ``bytes_sent``."""
        return dict(self._counters.sent_by_kind)

    @property
    def connection_count(self) -> int:
        """Established message connections (inbound and outbound)."""
        return len(self._conns)

    @property
    def bulk_stream_count(self) -> int:
        return self._bulk_active

    @property
    def kept_bulk_count(self) -> int:
        """Idle bulk connections kept for reuse: ours to peers, and peers' to us."""
        return self._kept_bulk_count()

    # ------------------------------------------------------------------- control

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Contact:
        """Listen on ``host:port`` (0 = any free port); returns our Contact."""
        self._check_open()
        if self._accept_task is not None:
            raise RuntimeError("transport already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        af, kind, proto, _, sockaddr = infos[0]
        listener = socket.socket(af, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        bound_port = listener.getsockname()[1]
        self._listen_addr = format_addr(self._advertise_host or host, bound_port)
        self._contact = Contact(self.peer_id, self._listen_addr)
        self._accept_task = self._spawn(self._accept_loop(listener), "shoal-accept")
        log.info("listening on %s as %s", self._listen_addr, self.peer_id)
        return self._contact

    def set_bulk_handler(
        self,
        accept: BulkAccept,
        on_complete: BulkComplete,
        on_failed: BulkFailed | None = None,
    ) -> None:
        """Accept bulk streams.

        ``accept(sender, tag, size)`` runs on the event loop when a stream is announced
        and returns a writable buffer of exactly ``size`` bytes, or None to refuse.
        ``on_complete(sender, tag, buffer)`` runs once every byte arrived intact;
        ``on_failed(sender, tag, reason)`` if an accepted stream broke off (the buffer
        is then not delivered and its contents are undefined).
        """
        self._bulk_accept = accept
        self._bulk_complete = on_complete
        self._bulk_failed = on_failed

    async def aclose(self) -> None:
        """Close every connection and stream; returns when no task or thread is left."""
        if self._closed:
            return
        self._closed = True
        for client in list(self._bulk_clients):
            client.abort()
        for idle in self._bulk_idle.values():
            for client in idle:
                client.close()
        self._bulk_idle.clear()
        for sock in list(self._bulk_socks):
            _shutdown(sock)
        for conn in list(self._conns):
            conn.close()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._bulk_futures:
            await asyncio.wait(list(self._bulk_futures))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        log.info("transport %s closed", self.peer_id.short())

    # --------------------------------------------------------------- messaging

    async def send(self, to: Contact, msg: Message) -> None:
        """Send ``msg`` to ``to.peer_id`` over an existing connection or a new dial.

        Raises PeerUnreachable, PeerIdMismatch, HandshakeError, TooManyConnections
        (all TransportError) or the codec's MessageTooLarge. Delivery is best effort:
        a message written just before the peer drops the connection can be lost.
        """
        self._check_open()
        if to.peer_id == self.peer_id:
            raise ValueError("cannot send a message to ourselves")
        payload = self._codec.encode(msg)
        conn = self._by_peer.get(to.peer_id)
        if conn is not None and not conn.closed:
            try:
                await conn.send(payload, msg.TYPE)
                return
            except ConnectionGone:  # closed under us before the write: redial once
                pass
        conn = await self._connect(to)
        await conn.send(payload, msg.TYPE)

    async def _connect(self, to: Contact) -> Connection:
        task = self._dials.get(to.peer_id)
        if task is None:
            task = self._spawn(self._dial(to), f"shoal-dial-{to.peer_id.short()}")
            self._dials[to.peer_id] = task
            task.add_done_callback(functools.partial(self._dial_done, to.peer_id))
        # shield: a cancelled sender must not cancel a dial that others wait on.
        return await asyncio.shield(task)

    def _dial_done(self, pid: PeerId, task: asyncio.Task[Connection]) -> None:
        if self._dials.get(pid) is task:
            del self._dials[pid]

    async def _dial(self, to: Contact) -> Connection:
        if not self._make_room():
            raise TooManyConnections(
                f"{self._max} connections busy; cannot dial {to.peer_id.short()}"
            )
        try:
            host, port = to.host_port()
        except ValueError as exc:
            raise PeerUnreachable(f"bad address for {to.peer_id.short()}: {exc}") from exc
        self._handshaking += 1
        sock: socket.socket | None = None
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    sock = await _connect_socket(host, port)
                    machine = Initiator(
                        self._identity, listen_addr=self._listen_addr, expected_peer=to.peer_id
                    )
                    result = await run_handshake(
                        sock, machine, self._counters, first=machine.start()
                    )
            except TimeoutError:
                if sock is None:
                    raise PeerUnreachable(
                        f"connecting to {to} took longer than {HANDSHAKE_TIMEOUT_S:.0f} s"
                    ) from None
                raise HandshakeError(
                    f"handshake with {to} took longer than {HANDSHAKE_TIMEOUT_S:.0f} s"
                ) from None
            except OSError as exc:
                raise PeerUnreachable(f"connection to {to} failed: {exc}") from exc
            self._check_open()
            conn = await self._open_connection(sock, to, outbound=True, result=result)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            self._handshaking -= 1
        self._register(conn)
        self._spawn(conn.run(), f"shoal-conn-out-{to.peer_id.short()}")
        return conn

    async def _open_connection(
        self, sock: socket.socket, peer: Contact, *, outbound: bool, result: HandshakeResult
    ) -> Connection:
        return await Connection.open(
            sock,
            peer=peer,
            outbound=outbound,
            result=result,
            codec=self._codec,
            counters=self._counters,
            on_message=self._on_message,
            on_bad_peer=self._on_bad_peer,
            on_closed=self._forget,
        )

    # ----------------------------------------------------------------- inbound

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, addr = await loop.sock_accept(listener)
                except OSError as exc:  # EMFILE and friends: back off, keep serving
                    log.warning("accept failed: %s", exc)
                    await asyncio.sleep(0.1)
                    continue
                if self._closed:
                    sock.close()
                    return
                if not self._make_room():
                    log.warning(
                        "refusing connection from %s: %d connections busy (max_connections)",
                        format_addr(addr[0], addr[1]),
                        self._max,
                    )
                    sock.close()
                    continue
                self._handshaking += 1
                self._spawn(self._serve_inbound(sock, addr[0], addr[1]), "shoal-inbound")
        finally:
            listener.close()

    async def _serve_inbound(self, sock: socket.socket, host: str, port: int) -> None:
        """Handshake an accepted socket, then serve it as messages or a bulk stream."""
        observed = format_addr(host, port)
        in_handshake = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    machine = Responder(self._identity, listen_addr=self._listen_addr)
                    result = await run_handshake(sock, machine, self._counters)
            except UnsupportedVersion as exc:
                self._bad(None, observed, describe(exc))
                with contextlib.suppress(OSError):
                    sock.send(encode_reject(str(exc)))
                return
            except HandshakeAbandoned as exc:
                # a dial cancelled part-way (ABANDON_GRACE_S ran out on a loaded host) or
                # a TCP health check: nothing was cut in half, nobody misbehaved
                log.info("inbound %s: %s", observed, exc)
                return
            except HandshakeError as exc:
                self._bad(None, observed, describe(exc))
                return
            except TimeoutError:
                self._bad(None, observed, f"handshake not done in {HANDSHAKE_TIMEOUT_S:.0f} s")
                return
            except OSError as exc:
                log.debug("inbound %s: %s", observed, describe(exc))
                return
            if self._closed:
                return
            peer = self._peer_contact(result, host)
            if result.purpose == PURPOSE_BULK:
                in_handshake = False
                self._handshaking -= 1
                self._bulk_active += 1
                try:
                    await self._serve_bulk(sock, result, peer)
                finally:
                    self._bulk_active -= 1
                return
            conn = await self._open_connection(sock, peer, outbound=False, result=result)
            in_handshake = False
            self._handshaking -= 1
            self._register(conn)
            await conn.run()
        finally:
            if in_handshake:
                self._handshaking -= 1
                sock.close()

    def _peer_contact(self, result: HandshakeResult, observed_host: str) -> Contact:
        """The advertised address; an unspecified host means "where you see me"."""
        if not result.peer_addr:
            return Contact(result.peer_id, format_addr(observed_host, 0))
        host, port = split_addr(result.peer_addr)
        if host in _UNSPECIFIED_HOSTS:
            return Contact(result.peer_id, format_addr(observed_host, port))
        return Contact(result.peer_id, result.peer_addr)

    # -------------------------------------------------------------------- bulk

    async def send_bulk(
        self, to: Contact, tag: str, buffers: Sequence[memoryview | bytes | bytearray]
    ) -> None:
        """Stream the concatenation of ``buffers`` to ``to`` under ``tag``.

        Returns once the receiver confirmed every byte. Buffers are read in place,
        BULK_CHUNK_BYTES at a time, by a worker thread; do not modify them until this
        returns. Raises BulkRejected if the receiver refuses, BulkStreamError if the
        stream breaks, PeerUnreachable / PeerIdMismatch / HandshakeError on connect.
        """
        self._check_open()
        views = as_byte_views(buffers)
        size = sum(len(v) for v in views)
        if size > MAX_STREAM_BYTES:
            raise ValueError(f"bulk stream of {size} bytes exceeds {MAX_STREAM_BYTES}")
        check_tag(tag)
        for attempt in range(2):
            # A kept connection first; a fresh one if there is none or it went stale.
            client = self._kept_bulk_client(to, size) if attempt == 0 else None
            reused = client is not None
            if client is None:
                if not self._make_room():
                    raise TooManyConnections(f"{self._max} connections busy; cannot stream to {to}")
                client = BulkClient(self._identity, self._listen_addr, to)
            self._bulk_active += 1
            self._bulk_clients.add(client)
            keep = False
            try:
                fut = self._run_in_thread(client.send_stream, tag, views)
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    if not client.connected:  # let its handshake finish: see ABANDON_GRACE_S
                        client.abandon()
                        await asyncio.wait([fut], timeout=ABANDON_GRACE_S)
                    client.abort()
                    await asyncio.wait([fut])
                    raise
                keep = client.reusable
                return
            except StaleBulkConnection as exc:
                if not reused:
                    raise
                log.debug("kept bulk connection to %s was stale (%s); redialling", to, exc)
                self._drop_kept_bulk(to)  # the peer probably closed them all
            finally:
                self._bulk_active -= 1
                self._bulk_clients.discard(client)
                sent, received = client.take_counts()
                self._counters.bytes_sent += sent
                self._counters.count_sent("bulk", sent)
                self._counters.bytes_received += received
                if keep and not self._closed:
                    self._keep_bulk(to, client)
                else:
                    client.close()

    def _kept_bulk_client(self, to: Contact, size: int) -> BulkClient | None:
        """The most recently used kept connection to ``to`` that is still fresh."""
        self._expire_kept_bulk()
        idle = self._bulk_idle.get((to.peer_id, to.addr))
        while idle:
            client = idle.pop()
            if client.has_room(size):
                return client
            client.close()  # its keys are nearly used up: a new dial gets fresh ones
        return None

    def _keep_bulk(self, to: Contact, client: BulkClient) -> None:
        client.last_used = asyncio.get_running_loop().time()
        idle = self._bulk_idle.setdefault((to.peer_id, to.addr), [])
        if len(idle) >= MAX_KEPT_BULK_PER_PEER:
            client.close()
        else:
            idle.append(client)

    def _drop_kept_bulk(self, to: Contact) -> None:
        for client in self._bulk_idle.pop((to.peer_id, to.addr), []):
            client.close()

    def _expire_kept_bulk(self) -> None:
        """Close our kept connections idle for BULK_IDLE_S or longer."""
        cutoff = asyncio.get_running_loop().time() - BULK_IDLE_S
        for key in list(self._bulk_idle):
            idle = self._bulk_idle[key]
            while idle and idle[0].last_used <= cutoff:
                idle.pop(0).close()
            if not idle:
                del self._bulk_idle[key]

    def _kept_bulk_count(self) -> int:
        return sum(len(idle) for idle in self._bulk_idle.values()) + len(self._bulk_waiting)

    def _evict_kept_bulk(self) -> bool:
        """Close the longest-idle kept bulk connection, ours or inbound; False if none."""
        oldest: tuple[float, tuple[PeerId, str]] | None = None
        for key, idle in self._bulk_idle.items():
            if idle and (oldest is None or idle[0].last_used < oldest[0]):
                oldest = (idle[0].last_used, key)
        waiting = min(self._bulk_waiting.items(), key=lambda kv: kv[1], default=None)
        if waiting is not None and (oldest is None or waiting[1] < oldest[0]):
            del self._bulk_waiting[waiting[0]]
            _shutdown(waiting[0])  # its reader sees EOF and closes it
            return True
        if oldest is None:
            return False
        idle = self._bulk_idle[oldest[1]]
        idle.pop(0).close()
        if not idle:
            del self._bulk_idle[oldest[1]]
        return True

    async def _serve_bulk(
        self, sock: socket.socket, result: HandshakeResult, peer: Contact
    ) -> None:
        """Serve the streams of one inbound bulk connection, one after another."""
        pid = peer.peer_id
        # Keep it for further streams unless this peer already has its share kept.
        keep = self._bulk_kept_in.get(pid, 0) < MAX_KEPT_BULK_PER_PEER
        if keep:
            self._bulk_kept_in[pid] = self._bulk_kept_in.get(pid, 0) + 1
        opener = RecordOpener(result.recv_key)
        sealer = RecordSealer(result.send_key)
        self._bulk_socks.add(sock)
        try:
            leftover: bytes | None = result.leftover
            first = True
            while leftover is not None and not self._closed:
                leftover = await self._serve_stream(
                    sock, opener, sealer, peer, leftover, first=first, keep=keep
                )
                first = False
        finally:
            if keep:
                self._bulk_kept_in[pid] -= 1
                if not self._bulk_kept_in[pid]:
                    del self._bulk_kept_in[pid]
            self._bulk_socks.discard(sock)
            sock.close()

    async def _next_header(
        self, sock: socket.socket, leftover: bytes, opener: RecordOpener
    ) -> tuple[int, bytes, bytes] | None:
        """On a kept connection between streams: the next record, or None once the
        sender closes, it idles past BULK_RECEIVER_IDLE_S, or we evict it."""
        self._bulk_active -= 1  # idle: no stream, but still a connection (see _make_room)
        self._bulk_waiting[sock] = asyncio.get_running_loop().time()
        try:
            sock.setblocking(False)
            async with asyncio.timeout(BULK_RECEIVER_IDLE_S):
                return await read_control_async(sock, leftover, opener, eof_ok=True)
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._bulk_active += 1
            self._bulk_waiting.pop(sock, None)

    async def _serve_stream(
        self,
        sock: socket.socket,
        opener: RecordOpener,
        sealer: RecordSealer,
        peer: Contact,
        leftover: bytes,
        *,
        first: bool,
        keep: bool,
    ) -> bytes | None:
        """One stream: header, accept, data. Returns the bytes received past it if the
        connection stays open for another stream, None if it is to be closed."""
        loop = asyncio.get_running_loop()
        tag: str | None = None
        records: BlockingRecords | None = None
        out: memoryview | None = None
        try:
            if first:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    # A close before any byte: the sender abandoned the stream after the
                    # handshake (BulkClient.abandon); it sent nothing, so nothing is wrong.
                    got = await read_control_async(sock, leftover, opener, eof_ok=True)
            else:
                got = await self._next_header(sock, leftover, opener)
            if got is None:
                return None
            rtype, payload, leftover = got
            if rtype != RecordType.BULK_HEADER:
                raise ProtocolViolation(f"expected a bulk header, got record type {rtype}")
            tag, size = decode_header(payload)
            self._counters.bytes_received += len(payload)
            out, refusal = self._accept_bulk(peer, tag, size)
            if out is None:
                log.info("refused bulk stream %r from %s: %s", tag, peer, refusal)
                await loop.sock_sendall(sock, sealer.seal(RecordType.BULK_ABORT, refusal.encode()))
                return None
            await loop.sock_sendall(sock, sealer.seal(RecordType.BULK_ACCEPT, b""))
            sock.settimeout(BULK_IO_TIMEOUT_S)  # blocking (with timeout) for the worker
            records = BlockingRecords(sock, leftover)
            keep = keep and not self._closed
            fut = self._run_in_thread(receive_stream, sock, records, opener, sealer, out, keep)
            try:
                sent = await asyncio.shield(fut)
            except asyncio.CancelledError:
                _shutdown(sock)
                await asyncio.wait([fut])
                raise
            self._counters.bytes_sent += sent
            self._counters.count_sent("bulk", sent)
        except (BulkStreamError, ProtocolViolation, ChannelError, TimeoutError, OSError) as exc:
            reason = (
                "bulk header not received in time"
                if isinstance(exc, TimeoutError) and out is None
                else describe(exc)
            )
            if not self._closed:
                sock.setblocking(False)
                with contextlib.suppress(OSError, ChannelError):
                    sock.send(sealer.seal(RecordType.BULK_ABORT, reason.encode()[:200]))
                self._bad(peer.peer_id, f"bulk stream {tag!r} from {peer}", reason)
            if out is not None and tag is not None and self._bulk_failed is not None:
                _call_safely(self._bulk_failed, peer, tag, reason)
            return None
        finally:
            if records is not None:
                self._counters.bytes_received += records.bytes_received
        assert tag is not None and self._bulk_complete is not None
        _call_safely(self._bulk_complete, peer, tag, out)
        return records.leftover() if keep else None

    def _accept_bulk(self, peer: Contact, tag: str, size: int) -> tuple[memoryview | None, str]:
        if size > MAX_STREAM_BYTES:
            reason = f"announced {size} bytes; the limit is {MAX_STREAM_BYTES}"
            self._bad(peer.peer_id, f"bulk stream {tag!r} from {peer}", reason)
            return None, reason
        if self._bulk_accept is None:
            return None, "this node accepts no bulk streams"
        try:
            buf = self._bulk_accept(peer, tag, size)
        except Exception:
            log.exception("bulk accept handler failed for %r from %s", tag, peer)
            return None, "receiver's bulk handler failed"
        if buf is None:
            return None, "refused by the receiver"
        try:
            return receive_buffer(buf, size), ""
        except (TypeError, ValueError) as exc:
            log.error("bulk accept handler returned an unusable buffer: %s", exc)
            return None, "receiver could not provide a buffer"

    def _run_in_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(BULK_WORKERS, thread_name_prefix="shoal-bulk")
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._bulk_futures.add(fut)
        fut.add_done_callback(self._future_done)
        return fut

    def _future_done(self, fut: asyncio.Future[Any]) -> None:
        self._bulk_futures.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved here so an abandoned future does not warn

    # ------------------------------------------------------------ bookkeeping

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("transport is closed")

    def _spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise TransportClosed("transport is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, TransportError):
            log.error("transport task %s failed", task.get_name(), exc_info=exc)

    def _make_room(self) -> bool:
        """True if one more connection fits, evicting the LRU idle one if needed."""
        busy = self._handshaking + len(self._conns) + self._bulk_active
        if busy + self._kept_bulk_count() < self._max:
            return True
        if self._evict_kept_bulk():
            return True
        idle = [c for c in self._conns if c.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_used)
        log.info("evicting idle %r (max_connections=%d)", victim, self._max)
        victim.close()
        return True

    def _register(self, conn: Connection) -> None:
        self._conns.add(conn)
        current = self._by_peer.get(conn.peer.peer_id)
        if current is None or current.closed:
            self._by_peer[conn.peer.peer_id] = conn

    def _forget(self, conn: Connection) -> None:
        self._conns.discard(conn)
        pid = conn.peer.peer_id
        if self._by_peer.get(pid) is conn:
            del self._by_peer[pid]
            for other in self._conns:
                if other.peer.peer_id == pid and not other.closed:
                    self._by_peer[pid] = other
                    break

    def _bad(self, peer: PeerId | None, who: str, reason: str) -> None:
        report_bad_peer(self._on_bad_peer, peer, who, reason)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _call_safely(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("bulk callback %r failed", fn)


async def _connect_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket, trying each resolved address in turn."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PeerUnreachable(f"cannot resolve {host!r}: {exc}") from exc
    last: OSError | None = None
    for af, kind, proto, _, sockaddr in infos:
        sock = socket.socket(af, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise PeerUnreachable(f"cannot connect to {format_addr(host, port)}: {last}")
