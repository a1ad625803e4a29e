"""One Transport, many bulk-stream consumers: route incoming streams by tag prefix.

A Transport has exactly one bulk handler. `BulkRouter` installs itself as that
handler and hands each announced stream to the receiver registered under the
*longest* prefix of its tag (so ``ar/x/`` and ``ar/x/c/`` can coexist). The receiver
sees the tag with the prefix stripped. A tag no receiver claims is refused, so a
peer cannot make us buffer a stream nobody is waiting for.

Completion and failure are routed the same way at the time they happen; if the
receiver was unregistered meanwhile, the outcome is dropped (it stopped caring).
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol

from shoal.transport import Transport
from shoal.wire.contact import Contact

log = logging.getLogger(__name__)


class BulkReceiver(Protocol):
    """What a router hands streams to. ``tag`` has the registered prefix removed."""

    def accept(self, sender: Contact, tag: str, size: int) -> memoryview | None: ...

    def on_complete(self, sender: Contact, tag: str, buf: memoryview) -> None: ...

    def on_failed(self, sender: Contact, tag: str, reason: str) -> None: ...


_ROUTERS: weakref.WeakKeyDictionary[Transport, BulkRouter] = weakref.WeakKeyDictionary()


class BulkRouter:
    """The bulk handler of one Transport, dispatching by tag prefix."""

    def __init__(self, transport: Transport) -> None:
        if transport in _ROUTERS:
            raise ValueError("this transport already has a BulkRouter; use BulkRouter.attach")
        self.transport = transport
        self._receivers: dict[str, BulkReceiver] = {}
        transport.set_bulk_handler(self._accept, self._complete, self._failed)
        _ROUTERS[transport] = self

    @classmethod
    def attach(cls, transport: Transport) -> BulkRouter:
        """The router installed on ``transport``, installing one if there is none."""
        router = _ROUTERS.get(transport)
        return router if router is not None else cls(transport)

    @property
    def prefixes(self) -> list[str]:
        return sorted(self._receivers)

    def register(self, prefix: str, receiver: BulkReceiver) -> None:
        """Route tags starting with ``prefix`` to ``receiver``. Raises if it is taken."""
        if not prefix:
            raise ValueError("a bulk route needs a non-empty prefix")
        if prefix in self._receivers:
            raise ValueError(f"bulk prefix {prefix!r} is already registered")
        self._receivers[prefix] = receiver

    def unregister(self, prefix: str) -> None:
        """Stop routing ``prefix`` (no-op if it is not registered)."""
        self._receivers.pop(prefix, None)

    def _route(self, tag: str) -> tuple[BulkReceiver, str] | None:
        best: str | None = None
        for prefix in self._receivers:
            if tag.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return None
        return self._receivers[best], tag[len(best) :]

    def _accept(self, sender: Contact, tag: str, size: int) -> memoryview | None:
        route = self._route(tag)
        if route is None:
            log.debug("refusing bulk stream %r from %s: no receiver", tag, sender.peer_id.short())
            return None
        receiver, rest = route
        return receiver.accept(sender, rest, size)

    def _complete(self, sender: Contact, tag: str, buf: memoryview) -> None:
        route = self._route(tag)
        if route is None:
            log.debug("bulk stream %r from %s completed after its receiver left", tag, sender)
            return
        receiver, rest = route
        receiver.on_complete(sender, rest, buf)

    def _failed(self, sender: Contact, tag: str, reason: str) -> None:
        route = self._route(tag)
        if route is None:
            return
        receiver, rest = route
        receiver.on_failed(sender, rest, reason)
