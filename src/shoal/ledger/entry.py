"""A feed entry: one signed, hash-chained record in a peer's append-only feed.

The signed part is a fixed 121-byte *header* so the on-chain contract can read the
author and seq out of it without a decoder (see contracts/ShoalLedger.vy):

    magic "shoalfd1" (8) | author (32) | seq u64 BE (8) | prev_hash (32)
    | kind (1) | timestamp_ms u64 BE (8) | sha256(payload) (32)

``entry_hash = sha256(header)``; the signature is Ed25519 over the header; the next
entry's ``prev_hash`` is this entry's hash, so changing, dropping or reordering any
entry breaks the chain. On the wire an entry is the msgpack array
``[author, seq, prev_hash, kind, timestamp_ms, payload, signature]``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

import msgpack

from shoal.identity.keys import PEER_ID_BYTES, SIGNATURE_BYTES, Identity, PeerId, verify
from shoal.ledger.limits import MAX_ENTRY_BYTES, MAX_PAYLOAD_BYTES, MAX_SEQ

MAGIC = b"shoalfd1"
HASH_BYTES = 32
HEADER_BYTES = len(MAGIC) + PEER_ID_BYTES + 8 + HASH_BYTES + 1 + 8 + HASH_BYTES
GENESIS_PREV = bytes(HASH_BYTES)


class EntryError(ValueError):
    """An entry is malformed, oversized, or its signature does not check out."""


class Kind(IntEnum):
    JOINED_RUN = 1
    UPDATE_COMMITMENT = 2
    ROUND_AGGREGATE = 3
    ATTESTATION = 4


@dataclass(frozen=True, slots=True)
class Entry:
    author: PeerId
    seq: int
    prev_hash: bytes
    kind: Kind
    timestamp_ms: int
    payload: bytes
    signature: bytes

    @property
    def header(self) -> bytes:
        return make_header(
            self.author, self.seq, self.prev_hash, self.kind, self.timestamp_ms, self.payload
        )

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.header).digest()

    def signature_ok(self) -> bool:
        return verify(self.author, self.signature, self.header)

    def encode(self) -> bytes:
        return bytes(
            msgpack.packb(
                [
                    self.author.raw,
                    self.seq,
                    self.prev_hash,
                    int(self.kind),
                    self.timestamp_ms,
                    self.payload,
                    self.signature,
                ],
                use_bin_type=True,
            )
        )


def make_header(
    author: PeerId, seq: int, prev_hash: bytes, kind: Kind, timestamp_ms: int, payload: bytes
) -> bytes:
    _check_fields(seq, prev_hash, kind, timestamp_ms, payload)
    return b"".join(
        (
            MAGIC,
            author.raw,
            seq.to_bytes(8, "big"),
            prev_hash,
            bytes([int(kind)]),
            timestamp_ms.to_bytes(8, "big"),
            hashlib.sha256(payload).digest(),
        )
    )


def _check_fields(seq: int, prev_hash: bytes, kind: int, timestamp_ms: int, payload: bytes) -> None:
    if not 0 <= seq <= MAX_SEQ:
        raise EntryError(f"seq {seq} out of range")
    if len(prev_hash) != HASH_BYTES:
        raise EntryError(f"prev_hash is {len(prev_hash)} bytes, want {HASH_BYTES}")
    if kind not in Kind._value2member_map_:
        raise EntryError(f"unknown entry kind {kind}")
    if not 0 <= timestamp_ms <= MAX_SEQ:
        raise EntryError(f"timestamp {timestamp_ms} out of range")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EntryError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")


def sign_entry(
    identity: Identity, seq: int, prev_hash: bytes, kind: Kind, timestamp_ms: int, payload: bytes
) -> Entry:
    header = make_header(identity.peer_id, seq, prev_hash, kind, timestamp_ms, payload)
    return Entry(
        identity.peer_id, seq, prev_hash, kind, timestamp_ms, payload, identity.sign(header)
    )


def decode_entry(data: bytes) -> Entry:
    """Decode and signature-check an entry from untrusted bytes. Raises EntryError."""
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=MAX_PAYLOAD_BYTES,
            max_str_len=0, max_array_len=7, max_map_len=0, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise EntryError(f"entry is not valid msgpack: {exc}") from exc
    return entry_from_fields(obj)


def entry_from_fields(obj: object) -> Entry:
    """Build and signature-check an entry from its decoded msgpack array."""
    if not isinstance(obj, list) or len(obj) != 7:
        raise EntryError("an entry is an array of 7 fields")
    author, seq, prev, kind, ts, payload, sig = obj
    if not isinstance(author, bytes) or len(author) != PEER_ID_BYTES:
        raise EntryError("entry author must be a 32-byte public key")
    # bool is an int subclass; a msgpack true is never a seq.
    for name, v in (("seq", seq), ("kind", kind), ("timestamp", ts)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise EntryError(f"entry {name} must be an integer")
    for name, v in (("prev_hash", prev), ("payload", payload), ("signature", sig)):
        if not isinstance(v, bytes):
            raise EntryError(f"entry {name} must be bytes")
    if len(sig) != SIGNATURE_BYTES:
        raise EntryError(f"signature is {len(sig)} bytes, want {SIGNATURE_BYTES}")
    _check_fields(seq, prev, kind, ts, payload)
    entry = Entry(PeerId(author), seq, prev, Kind(kind), ts, payload, sig)
    if not entry.signature_ok():
        raise EntryError(f"bad signature on entry {entry.author.short()}#{seq}")
    return entry


def parse_header(header: bytes) -> tuple[PeerId, int, bytes]:
    """(author, seq, prev_hash) from a raw 121-byte header (as stored on-chain)."""
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        raise EntryError("not a shoal feed entry header")
    author = PeerId(header[8:40])
    seq = int.from_bytes(header[40:48], "big")
    return author, seq, header[48:80]
