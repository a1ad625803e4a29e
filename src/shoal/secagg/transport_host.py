"""A bare Transport as a SecAggHost: secure aggregation without a full node.

The benchmark and the test peer processes use it; a training node passes its
``runtime.node.Node``, which already has everything the driver needs.
"""

from __future__ import annotations

import logging

from shoal.averaging.bulk_router import BulkRouter
from shoal.identity.keys import Identity, PeerId
from shoal.secagg.network_session import MessageHandler, SecAggService
from shoal.transport import Transport
from shoal.wire.codec import Codec, Message
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


class TransportHost:
    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.codec = Codec()
        self._handlers: dict[str, MessageHandler] = {}
        self.bad_peers: list[tuple[PeerId | None, str]] = []
        self.transport = Transport(
            self.identity, self.codec, on_message=self._on_message, on_bad_peer=self._on_bad
        )
        self.router = BulkRouter.attach(self.transport)
        # Message types and handler in place before any peer can send an advert.
        SecAggService.attach(self)

    @property
    def contact(self) -> Contact:
        return self.transport.contact

    def handle_protocol(self, protocol: str, handler: MessageHandler) -> None:
        self._handlers[protocol] = handler

    def _on_message(self, sender: Contact, msg: Message) -> None:
        handler = self._handlers.get(msg.protocol)
        if handler is not None:
            handler(sender, msg)

    def _on_bad(self, peer: PeerId | None, reason: str) -> None:
        self.bad_peers.append((peer, reason))
        log.warning("bad peer %s: %s", peer.short() if peer else "?", reason)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Contact:
        return await self.transport.start(host, port)

    async def aclose(self) -> None:
        await self.transport.aclose()
