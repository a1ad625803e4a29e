"""Events the DHT core emits (wrapped in ``effects.Emit``) for the application."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.dht.records import SignedRecord
from shoal.wire.contact import Contact


@dataclass(frozen=True, slots=True)
class LookupDone:
    """A ``start_lookup`` finished. ``closest``: the k nearest peers that answered,
    nearest first. ``ok`` is False when no peer answered at all."""

    op_id: int
    target: int
    closest: list[Contact]
    hops: int
    ok: bool


@dataclass(frozen=True, slots=True)
class PutDone:
    """A ``put`` finished; ``stored`` peers (this node included) accepted the record."""

    op_id: int
    key: bytes
    stored: int


@dataclass(frozen=True, slots=True)
class GetDone:
    """A ``get`` finished with every valid record found, one per publisher (highest
    seq), ordered by publisher."""

    op_id: int
    key: bytes
    records: list[SignedRecord]
    hops: int


@dataclass(frozen=True, slots=True)
class BootstrapDone:
    """The self-lookup started by ``bootstrap`` finished; ``contacts`` is the size of
    the routing table then."""

    contacts: int
    ok: bool


@dataclass(frozen=True, slots=True)
class ContactSeen:
    """A peer entered the routing table (newly added, or promoted from the cache)."""

    contact: Contact
