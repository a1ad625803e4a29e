"""The asyncio node: a PeerCore driven by the transport, the wall clock and timers.

One Node is one process's peer. All work runs under a single TaskGroup: the
transport, the control server, and one sender task per destination peer (so a slow
dial to a dead peer never delays messages to live ones). Cores are fed wall-clock
``time.time()`` because DHT record expiries travel between machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.averaging.bulk_router import BulkRouter
from shoal.dht.core import DhtConfig
from shoal.dht.records import SignedRecord
from shoal.effects import Action, Emit, Send, SetTimer
from shoal.identity import Identity, PeerId
from shoal.membership.config import SwimConfig
from shoal.membership.events import MemberAlive, MemberDead, MemberJoined, MemberSuspect
from shoal.peer.core import PeerCore, UnroutableMessage, peer_codec
from shoal.peer.round_peer import RoundPeer
from shoal.rounds.config import RoundConfig
from shoal.rounds.messages import ROUND_MESSAGES
from shoal.runtime.control import ControlServer
from shoal.transport import Transport, TransportError
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)

# Messages queued for one peer while its connection is being set up. Control traffic
# to a single peer is a few messages per second; beyond this the peer is not keeping
# up and dropping is the right back-pressure (cores retry on their own timers).
MAX_QUEUED_PER_PEER = 256
# A sender task with nothing to send exits after this long so idle peers cost nothing.
SENDER_IDLE_S = 30.0

KEY_FILE = "node.key"
INFO_FILE = "node.json"
CONTROL_SOCKET = "control.sock"


@dataclass(slots=True)
class NodeConfig:
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    bootstrap: list[Contact] = field(default_factory=list)
    dht: DhtConfig = field(default_factory=DhtConfig)
    swim: SwimConfig = field(default_factory=SwimConfig)
    # Set both to take part in a training run's rounds (see rounds/).
    run: str | None = None
    rounds: RoundConfig | None = None
    # Message types of application protocols (handled via Node.handle_protocol).
    extra_messages: tuple[type[Message], ...] = ()


MessageHandler = Callable[[Contact, Message], None]
EventListener = Callable[[object], None]


class Node:
    def __init__(self, config: NodeConfig, identity: Identity | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = identity or Identity.load_or_create(config.data_dir / KEY_FILE)
        self.peer_id: PeerId = self.identity.peer_id
        codec = peer_codec()
        if config.run is not None:
            for t in ROUND_MESSAGES:
                codec.register(t)
        for t in config.extra_messages:
            codec.register(t)
        self.codec: Codec = codec
        self.transport = Transport(
            self.identity, codec, on_message=self._on_message, on_bad_peer=self._on_bad_peer
        )
        self.router = BulkRouter.attach(self.transport)
        self.core: PeerCore | None = None
        self._handlers: dict[str, MessageHandler] = {}
        self._listeners: list[EventListener] = []
        self.contact: Contact | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._outq: dict[PeerId, tuple[Contact, asyncio.Queue[Message]]] = {}
        self._ops: dict[int, asyncio.Future[object]] = {}
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------
    async def run(self) -> None:
        self.contact = await self.transport.start(self.config.listen_host, self.config.listen_port)
        # The OS seeds the core's RNG: real nodes need unpredictability, the simulator a seed.
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        if self.config.run is not None and self.config.rounds is not None:
            self.core = RoundPeer(
                self.contact,
                self.identity,
                rng,
                self.config.run,
                self.config.rounds,
                self.config.dht,
                self.config.swim,
            )
        else:
            self.core = PeerCore(self.contact, rng, self.config.dht, self.config.swim)
        control = ControlServer(self, self.config.data_dir / CONTROL_SOCKET)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await control.start()
                self._write_info()
                log.info("node %s listening on %s", self.peer_id, self.contact.addr)
                self._apply(self.core.start(time.time(), list(self.config.bootstrap)))
                self.ready.set()
                await self._stop.wait()
                for handle in self._timers.values():
                    handle.cancel()
                self._timers.clear()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._tg = None
            await control.aclose()
            await self.transport.aclose()
            with contextlib.suppress(FileNotFoundError):
                (self.config.data_dir / INFO_FILE).unlink()
            log.info("node %s stopped", self.peer_id)

    def stop(self) -> None:
        self._stop.set()

    # -- hooks for services (training, state sync) -----------------------------
    def handle_protocol(self, protocol: str, handler: MessageHandler) -> None:
        """Deliver messages whose type starts with ``protocol.`` to ``handler``."""
        self._handlers[protocol] = handler

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every event the cores emit."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    def apply(self, actions: list[Action]) -> None:
        """Carry out actions a service got from a core (must run on the node's loop)."""
        self._apply(actions)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a service's background job under the node's TaskGroup (never detached)."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("node is not running")
        self._tg.create_task(coro)

    async def send(self, to: Contact, msg: Message) -> None:
        await self.transport.send(to, msg)

    # -- API used by the control server and the CLI ----------------------------
    def peers(self) -> list[dict[str, Any]]:
        assert self.core is not None
        return [
            {
                "peer_id": str(m.contact.peer_id),
                "addr": m.contact.addr,
                "state": m.state.name.lower(),
                "incarnation": m.incarnation,
            }
            for m in self.core.swim.members()
        ]

    async def put(self, key: bytes, value: bytes, ttl_s: float = 3600.0) -> int:
        assert self.core is not None
        now = time.time()
        record = SignedRecord.create(
            self.identity, key, value, seq=time.time_ns(), expires_at=now + ttl_s
        )
        op, acts = self.core.put(now, record)
        result = await self._await_op(op, acts)
        return int(getattr(result, "stored", 0))

    async def get(self, key: bytes) -> list[SignedRecord]:
        assert self.core is not None
        op, acts = self.core.get(time.time(), key)
        result = await self._await_op(op, acts)
        return list(getattr(result, "records", []))

    async def _await_op(self, op: int, acts: list[Action]) -> object:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._ops[op] = fut
        self._apply(acts)
        try:
            return await asyncio.wait_for(fut, timeout=60.0)
        finally:
            self._ops.pop(op, None)

    # -- driving the core ------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._send(a.to, a.msg)
            elif isinstance(a, SetTimer):
                self._set_timer(a.name, a.at)
            elif isinstance(a, Emit):
                self._emit(a.event)

    def _emit(self, ev: object) -> None:
        for listener in list(self._listeners):
            listener(ev)
        op = getattr(ev, "op_id", None)
        if op is not None and op in self._ops:
            fut = self._ops[op]
            if not fut.done():
                fut.set_result(ev)
            return
        if isinstance(ev, MemberJoined | MemberAlive | MemberSuspect | MemberDead):
            state = type(ev).__name__.removeprefix("Member").lower()
            log.info("member %s: %s at %s", state, ev.contact.peer_id.short(), ev.contact.addr)

    def _on_message(self, sender: Contact, msg: Message) -> None:
        if self.core is None:
            return
        handler = self._handlers.get(msg.protocol)
        if handler is not None:
            handler(sender, msg)
            return
        try:
            self._apply(self.core.on_message(time.time(), sender, msg))
        except UnroutableMessage as exc:
            log.warning("dropping message from %s: %s", sender.peer_id.short(), exc)

    def _on_bad_peer(self, peer_id: PeerId | None, reason: str) -> None:
        log.warning("bad peer %s: %s", peer_id.short() if peer_id else "?", reason)

    def _set_timer(self, name: str, at: float | None) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        if at is None or self._tg is None:
            return
        delay = max(0.0, at - time.time())
        self._timers[name] = asyncio.get_running_loop().call_later(delay, self._fire, name)

    def _fire(self, name: str) -> None:
        self._timers.pop(name, None)
        if self.core is not None:
            self._apply(self.core.on_timer(time.time(), name))

    def _send(self, to: Contact, msg: Message) -> None:
        if self._tg is None:
            return
        entry = self._outq.get(to.peer_id)
        if entry is None or entry[0].addr != to.addr:
            q: asyncio.Queue[Message] = asyncio.Queue(MAX_QUEUED_PER_PEER)
            self._outq[to.peer_id] = (to, q)
            self._tg.create_task(self._sender(to, q))
        else:
            q = entry[1]
        try:
            q.put_nowait(msg)
        except asyncio.QueueFull:
            log.debug("queue to %s full; dropping %s", to.peer_id.short(), msg.TYPE)

    async def _sender(self, to: Contact, q: asyncio.Queue[Message]) -> None:
        try:
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(q.get(), SENDER_IDLE_S)
                except TimeoutError:
                    return
                try:
                    await self.transport.send(to, msg)
                except (TransportError, OSError) as exc:
                    log.debug("send to %s failed: %s", to, exc)
                    while not q.empty():
                        q.get_nowait()
                    if self.core is not None:
                        self._apply(self.core.on_unreachable(time.time(), to))
        finally:
            entry = self._outq.get(to.peer_id)
            if entry is not None and entry[1] is q:
                del self._outq[to.peer_id]

    def _write_info(self) -> None:
        assert self.contact is not None
        info = {
            "peer_id": str(self.peer_id),
            "addr": self.contact.addr,
            "contact": str(self.contact),
            "pid": os.getpid(),
            "control": str(self.config.data_dir / CONTROL_SOCKET),
        }
        tmp = self.config.data_dir / (INFO_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.config.data_dir / INFO_FILE)


class _Stopped(Exception):
    pass
