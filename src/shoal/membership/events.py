"""Membership changes the core reports to the application through ``Emit``."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.wire.contact import Contact


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A peer entered this node's view."""

    contact: Contact
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    """A peer failed a probe (ours or another node's) and may be dead."""

    contact: Contact
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberDead:
    """A peer stayed suspect past the suspicion timeout, or was reported dead."""

    contact: Contact
    incarnation: int


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspect or dead peer proved it is alive at a higher incarnation."""

    contact: Contact
    incarnation: int


MembershipEvent = MemberJoined | MemberSuspect | MemberDead | MemberAlive
