"""What a sans-IO protocol core asks its runtime to do.

Cores are fed events (``on_message``, ``on_timer``, commands) with the current time
``now`` passed in, and return a list of these actions. The asyncio runtime carries
them out with sockets and the event loop's clock; the simulator with a virtual clock
and a simulated network. Cores never see either.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.wire.codec import Message
from shoal.wire.contact import Contact


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``to``. Delivery is best effort; cores own their timeouts."""

    to: Contact
    msg: Message


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call ``on_timer(now, name)`` at absolute time ``at`` (seconds).

    Setting a name that is already pending replaces it; ``at=None`` cancels it.
    """

    name: str
    at: float | None


@dataclass(frozen=True, slots=True)
class Emit:
    """Tell the application something happened (a lookup finished, a peer died)."""

    event: object


Action = Send | SetTimer | Emit
