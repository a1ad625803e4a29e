"""Signed DHT records and the bounded store that holds them.

A record is a small value a peer publishes under a 32-byte key. Many publishers may
announce under one key (group formation needs this: every member of a group announces
itself under the group's key), so the store holds one record per (key, publisher) and,
for each pair, the highest ``seq`` wins.

Records are signed by their publisher over a domain-separated, fixed-layout encoding
of every field, so a holder cannot alter, re-date or re-attribute a record.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from dataclasses import dataclass
from typing import Any

from shoal.identity.keys import SIGNATURE_BYTES, Identity, PeerId
from shoal.wire.codec import MalformedMessage
from shoal.wire.fields import as_bytes, as_float, as_int, as_list, as_peer_id
from shoal.wire.limits import MAX_LIST_ITEMS, MAX_RECORD_VALUE_BYTES

KEY_BYTES = 32
MAX_SEQ = 2**64 - 1

# A record lives at most a day past the moment a holder checks it. Records are
# pointers (addresses, hashes) that a live publisher keeps re-announcing; a day lets
# a holder keep serving a pointer through a long publisher outage, while a dead or
# hostile publisher cannot pin data in the network for longer than that.
MAX_RECORD_TTL_S = 24 * 3600.0

# Publisher and holder clocks differ. Five minutes covers NTP-less hosts without
# meaningfully extending MAX_RECORD_TTL_S.
CLOCK_SKEW_ALLOWANCE_S = 300.0

# Publishers per key. Group formation announces a group's members under one key, and
# groups are tens to a couple of hundred peers; 256 also equals MAX_LIST_ITEMS, so every
# record of a key fits one reply's item count.
MAX_PUBLISHERS_PER_KEY = MAX_LIST_ITEMS

# Distinct keys one node holds. With ~20 replicas per key a 10k-node swarm storing a
# million keys puts ~2k keys on each node; 64k is 30x that.
MAX_STORE_KEYS = 65_536

# Total bytes one node spends on records it holds for others. 64 MiB is small next to a
# training node's memory and holds 1k full-size (64 KiB) records or far more pointers.
MAX_STORE_BYTES = 64 * 1024 * 1024

# What a stored record costs beyond its value: key, publisher, signature, seq, expiry
# and the Python objects around them. Used only for the byte budget.
RECORD_OVERHEAD_BYTES = 256

_SIGNING_DOMAIN = b"shoal/dht/record/v1\x00"
_SIGNED_HEADER = struct.Struct(">32s32sQdI")


class RecordError(Exception):
    """A record is invalid; the message says why."""


class BadRecordSignature(RecordError):
    pass


class RecordExpired(RecordError):
    pass


class RecordExpiryTooFar(RecordError):
    pass


class RecordTooLarge(RecordError):
    pass


class StaleRecord(RecordError):
    """A record with an equal or higher seq from the same publisher is already held."""


class StoreFull(RecordError):
    """The store is at its limits and every record it holds outlives this one."""


def signing_bytes(
    key: bytes, value: bytes, publisher: PeerId, seq: int, expires_at: float
) -> bytes:
    """The exact bytes a publisher signs: domain tag, fixed-size header, then value."""
    return (
        _SIGNING_DOMAIN
        + _SIGNED_HEADER.pack(key, publisher.raw, seq, expires_at, len(value))
        + value
    )


@dataclass(frozen=True, slots=True)
class SignedRecord:
    key: bytes
    value: bytes
    publisher: PeerId
    seq: int
    expires_at: float
    signature: bytes

    @classmethod
    def create(
        cls, identity: Identity, key: bytes, value: bytes, seq: int, expires_at: float
    ) -> SignedRecord:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a record key is {KEY_BYTES} bytes, got {len(key)}")
        if len(value) > MAX_RECORD_VALUE_BYTES:
            raise RecordTooLarge(
                f"record value is {len(value)} bytes; the limit is {MAX_RECORD_VALUE_BYTES}"
            )
        if not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"seq {seq} outside [0, {MAX_SEQ}]")
        expires_at = float(expires_at)
        sig = identity.sign(signing_bytes(key, value, identity.peer_id, seq, expires_at))
        return cls(key, value, identity.peer_id, seq, expires_at, sig)

    @property
    def position(self) -> int:
        """The record's position in the DHT key space."""
        return int.from_bytes(self.key, "big")

    @property
    def size(self) -> int:
        """Bytes this record is charged against a store's budget."""
        return len(self.value) + RECORD_OVERHEAD_BYTES

    def validate(self, now: float) -> None:
        """Raise a RecordError subclass unless this record may be held at ``now``."""
        if len(self.key) != KEY_BYTES:
            raise RecordError(f"record key is {len(self.key)} bytes, want {KEY_BYTES}")
        if len(self.value) > MAX_RECORD_VALUE_BYTES:
            raise RecordTooLarge(
                f"record value is {len(self.value)} bytes; the limit is {MAX_RECORD_VALUE_BYTES}"
            )
        if self.expires_at <= now:
            raise RecordExpired(
                f"record from {self.publisher.short()} expired at {self.expires_at:.3f} "
                f"(now {now:.3f})"
            )
        latest = now + MAX_RECORD_TTL_S + CLOCK_SKEW_ALLOWANCE_S
        if self.expires_at > latest:
            raise RecordExpiryTooFar(
                f"record from {self.publisher.short()} expires at {self.expires_at:.3f}, "
                f"more than MAX_RECORD_TTL_S={MAX_RECORD_TTL_S:.0f}s after now {now:.3f}"
            )
        data = signing_bytes(self.key, self.value, self.publisher, self.seq, self.expires_at)
        if not self.publisher.verify(self.signature, data):
            raise BadRecordSignature(
                f"record signature does not verify for publisher {self.publisher.short()}"
            )

    def to_fields(self) -> list[Any]:
        return [self.key, self.value, self.publisher.raw, self.seq, self.expires_at, self.signature]

    @classmethod
    def from_fields(cls, x: Any, name: str = "record") -> SignedRecord:
        """Structural checks only; call ``validate(now)`` before trusting the record."""
        f = as_list(x, name, 6)
        if len(f) != 6:
            raise MalformedMessage(f"{name}: expected 6 fields, got {len(f)}")
        return cls(
            key=as_bytes(f[0], f"{name}.key", KEY_BYTES, exact=KEY_BYTES),
            value=as_bytes(f[1], f"{name}.value", MAX_RECORD_VALUE_BYTES),
            publisher=as_peer_id(f[2], f"{name}.publisher"),
            seq=as_int(f[3], f"{name}.seq", 0, MAX_SEQ),
            expires_at=as_float(f[4], f"{name}.expires_at"),
            signature=as_bytes(f[5], f"{name}.signature", SIGNATURE_BYTES, exact=SIGNATURE_BYTES),
        )


def key_for(name: str) -> bytes:
    """The 32-byte DHT key for a human-readable name (sha256 of its UTF-8 bytes)."""
    return hashlib.sha256(name.encode()).digest()


class RecordStore:
    """Records this node holds, bounded by key count, publishers per key and bytes.

    When a new record does not fit, the records that expire soonest are evicted first
    (ties broken by key, then publisher, so every node evicts the same way); if the new
    record itself would expire soonest, it is refused with StoreFull.
    """

    __slots__ = (
        "_by_key",
        "_heap",
        "_records",
        "_sorted",
        "max_bytes",
        "max_keys",
        "max_per_key",
        "total_bytes",
    )

    def __init__(
        self,
        max_keys: int = MAX_STORE_KEYS,
        max_per_key: int = MAX_PUBLISHERS_PER_KEY,
        max_bytes: int = MAX_STORE_BYTES,
    ) -> None:
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._records = 0
        # key -> publisher raw -> record. Dicts keep insertion order, so iteration is
        # deterministic.
        self._by_key: dict[bytes, dict[bytes, SignedRecord]] = {}
        # key -> its records ordered by publisher, built on the first ``get`` after a
        # change: every FIND_VALUE is answered from here, and a key is read far more
        # often than it is written.
        self._sorted: dict[bytes, list[SignedRecord]] = {}
        # (expires_at, key, publisher raw) with lazy deletion; rebuilt when it grows
        # well past the live record count, so replaced records cannot bloat it.
        self._heap: list[tuple[float, bytes, bytes]] = []

    def __len__(self) -> int:
        return self._records

    @property
    def key_count(self) -> int:
        return len(self._by_key)

    def held_keys(self) -> list[bytes]:
        return list(self._by_key)

    def get(self, key: bytes, now: float) -> list[SignedRecord]:
        """Unexpired records under ``key``, ordered by publisher."""
        ordered = self._sorted.get(key)
        if ordered is None:
            held = self._by_key.get(key)
            if not held:
                return []
            ordered = self._sorted[key] = [held[p] for p in sorted(held)]
        return [r for r in ordered if r.expires_at > now]

    def put(self, record: SignedRecord, now: float) -> bool:
        """Validate and hold ``record``. True if stored; False if an identical copy is
        already held. Raises RecordError (with the reason) if refused."""
        record.validate(now)
        self.purge(now)  # expired records must neither block nor be replaced
        pub = record.publisher.raw
        held = self._by_key.get(record.key)
        old = held.get(pub) if held else None
        if old is not None:
            if old == record:
                return False
            if old.seq >= record.seq:
                raise StaleRecord(
                    f"holding seq {old.seq} from {record.publisher.short()}; got seq {record.seq}"
                )
        self._make_room(record, old, held)
        if old is not None:
            self._discard(record.key, pub)
        bucket = self._by_key.setdefault(record.key, {})
        bucket[pub] = record
        self._sorted.pop(record.key, None)
        self._records += 1
        self.total_bytes += record.size
        heapq.heappush(self._heap, (record.expires_at, record.key, pub))
        self._compact_heap()
        return True

    def purge(self, now: float) -> int:
        """Drop every record expired at ``now``; return how many."""
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            exp, key, pub = heapq.heappop(self._heap)
            rec = self._live(exp, key, pub)
            if rec is not None:
                self._discard(key, pub)
                dropped += 1
        return dropped

    def soonest_expiry(self) -> float | None:
        while self._heap:
            exp, key, pub = self._heap[0]
            if self._live(exp, key, pub) is not None:
                return exp
            heapq.heappop(self._heap)
        return None

    # -- internals -------------------------------------------------------------------

    def _live(self, exp: float, key: bytes, pub: bytes) -> SignedRecord | None:
        held = self._by_key.get(key)
        rec = held.get(pub) if held else None
        if rec is None or rec.expires_at != exp:
            return None
        return rec

    def _discard(self, key: bytes, pub: bytes) -> None:
        held = self._by_key[key]
        rec = held.pop(pub)
        self._sorted.pop(key, None)
        self._records -= 1
        self.total_bytes -= rec.size
        if not held:
            del self._by_key[key]

    def _make_room(
        self,
        record: SignedRecord,
        old: SignedRecord | None,
        held: dict[bytes, SignedRecord] | None,
    ) -> None:
        """Evict soonest-expiring records until ``record`` fits, or raise StoreFull.

        Evictions are planned first and applied only once the record is known to fit,
        so a refusal leaves the store as it was.
        """
        if record.size > self.max_bytes:
            raise StoreFull(f"record of {record.size} bytes exceeds the store of {self.max_bytes}")
        mine = (record.expires_at, record.key, record.publisher.raw)
        plan: list[tuple[bytes, bytes]] = []
        bytes_after = self.total_bytes + record.size - (old.size if old is not None else 0)
        keys_after = self.key_count + (0 if held else 1)
        if old is None and held and len(held) >= self.max_per_key:
            victim_pub = min(held, key=lambda p: (held[p].expires_at, p))
            victim = held[victim_pub]
            if (victim.expires_at, record.key, victim_pub) >= mine:
                raise StoreFull(
                    f"key already holds {self.max_per_key} publishers that all outlive this record"
                )
            plan.append((record.key, victim_pub))
            bytes_after -= victim.size
        if keys_after > self.max_keys or bytes_after > self.max_bytes:
            left: dict[bytes, int] = {}
            popped: list[tuple[float, bytes, bytes]] = []
            try:
                while keys_after > self.max_keys or bytes_after > self.max_bytes:
                    if not self._heap:
                        raise StoreFull("the store cannot make room for this record")
                    entry = heapq.heappop(self._heap)
                    exp, key, pub = entry
                    rec = self._live(exp, key, pub)
                    if rec is None:
                        continue  # a stale heap entry; dropping it is fine
                    popped.append(entry)
                    if (key, pub) in plan or (key == record.key and pub == record.publisher.raw):
                        continue
                    if entry >= mine:
                        raise StoreFull("the store is full of records that all outlive this one")
                    plan.append((key, pub))
                    bytes_after -= rec.size
                    left[key] = left.get(key, len(self._by_key[key])) - 1
                    if left[key] == 0 and key != record.key:
                        keys_after -= 1
            except StoreFull:
                for entry in popped:
                    heapq.heappush(self._heap, entry)
                raise
            for entry in popped:
                if (entry[1], entry[2]) not in plan:
                    heapq.heappush(self._heap, entry)
        for key, pub in plan:
            self._discard(key, pub)

    def _compact_heap(self) -> None:
        if len(self._heap) > 2 * self._records + 64:
            self._heap = [
                (rec.expires_at, key, pub)
                for key, held in self._by_key.items()
                for pub, rec in held.items()
            ]
            heapq.heapify(self._heap)
