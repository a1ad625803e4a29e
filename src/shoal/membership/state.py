"""What one node believes about another: a member's state, its incarnation, and the
precedence rule that decides which of two beliefs wins.

A ``Member`` is both the public snapshot (``SwimCore.members()``) and the unit of
gossip: every ping, ack and ping-req piggybacks a few of them.

Precedence (SWIM, section 4.2 of Das et al. 2002; the same table HashiCorp memberlist
uses). ``i`` is the incarnation we hold, ``j`` the one in the new statement:

=================  =========================================================
new statement      replaces what we hold when
=================  =========================================================
``alive(j)``       we hold alive, suspect or dead at ``i < j``
``suspect(j)``     we hold alive at ``i <= j``, or suspect at ``i < j``
``dead(j)``        we hold alive or suspect at ``i <= j``, or dead at ``i < j``
=================  =========================================================

Only the member itself ever raises its incarnation (to refute a suspicion), so an
``alive`` at a higher incarnation is proof of life newer than any rumour of death.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from shoal.identity.keys import PeerId
from shoal.wire.codec import MalformedMessage
from shoal.wire.contact import Contact
from shoal.wire.fields import as_int, as_list, as_peer_id

# Incarnations travel as msgpack integers; capping them at int64 keeps every peer's
# decoder happy. A peer only bumps its own incarnation when refuting, so an honest one
# never gets near this; a hostile one that claims it is clamped, not crashed.
MAX_INCARNATION = 2**63 - 1


class MemberState(IntEnum):
    """Wire values are the ints; never renumber them."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@dataclass(frozen=True, slots=True)
class Member:
    """``contact`` is ``state`` at ``incarnation``, as the holder believes.

    ``accuser`` (suspect statements only) names the node whose probe failed. Lifeguard
    shortens a suspicion as independent accusers confirm it; it is not part of the
    statement's identity (equality ignores it). On the wire a suspect statement without
    one is charged to the peer that relayed it.
    """

    contact: Contact
    state: MemberState
    incarnation: int
    accuser: PeerId | None = field(default=None, compare=False)

    def to_fields(self) -> list[Any]:
        accuser = None if self.accuser is None else self.accuser.raw
        return [self.contact.to_fields(), int(self.state), self.incarnation, accuser]

    @classmethod
    def from_fields(cls, x: Any, name: str = "member") -> Member:
        f = as_list(x, name, 4)
        if len(f) != 4:
            raise MalformedMessage(f"{name}: expected [contact, state, incarnation, accuser]")
        contact = Contact.from_fields(f[0], f"{name}.contact")
        state = MemberState(as_int(f[1], f"{name}.state", 0, len(MemberState) - 1))
        incarnation = as_int(f[2], f"{name}.incarnation", 0, MAX_INCARNATION)
        accuser = None
        if f[3] is not None:
            if state is not MemberState.SUSPECT:
                raise MalformedMessage(f"{name}.accuser: only suspect statements have one")
            accuser = as_peer_id(f[3], f"{name}.accuser")
        return cls(contact, state, incarnation, accuser)


def supersedes(new_state: MemberState, new_inc: int, old_state: MemberState, old_inc: int) -> bool:
    """True if the statement ``new_state@new_inc`` replaces ``old_state@old_inc``."""
    if new_state is MemberState.ALIVE:
        return new_inc > old_inc
    if new_state is MemberState.SUSPECT:
        if old_state is MemberState.ALIVE:
            return new_inc >= old_inc
        if old_state is MemberState.SUSPECT:
            return new_inc > old_inc
        return False  # dead(i) yields only to alive(j > i)
    # DEAD
    if old_state is MemberState.DEAD:
        return new_inc > old_inc
    return new_inc >= old_inc
