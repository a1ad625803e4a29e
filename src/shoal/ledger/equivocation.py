"""Equivocation: two validly signed entries by one author at the same seq.

A proof is just the two entries. Anyone can check it with the author's public key
alone (it *is* the PeerId), so it is portable: between peers, in a file, or on-chain
(where the contract checks its structure; see contracts/ShoalLedger.vy).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from shoal.ledger.entry import Entry, EntryError, decode_entry
from shoal.ledger.limits import MAX_ENTRY_BYTES


class InvalidProof(ValueError):
    """The two entries do not prove equivocation."""


@dataclass(frozen=True, slots=True)
class EquivocationProof:
    a: Entry
    b: Entry

    def check(self) -> None:
        """Raise InvalidProof unless this proves that ``a.author`` equivocated."""
        if self.a.author != self.b.author:
            raise InvalidProof("the entries have different authors")
        if self.a.seq != self.b.seq:
            raise InvalidProof(f"the entries have different seqs ({self.a.seq}, {self.b.seq})")
        if self.a.hash == self.b.hash:
            raise InvalidProof("the entries are the same entry")
        for e in (self.a, self.b):
            if not e.signature_ok():
                raise InvalidProof(f"entry {e.hash.hex()[:16]} is not signed by its author")

    def encode(self) -> bytes:
        # Canonical order so the same pair always encodes to the same bytes.
        a, b = sorted((self.a, self.b), key=lambda e: e.hash)
        return bytes(msgpack.packb([a.encode(), b.encode()], use_bin_type=True))


def decode_proof(data: bytes) -> EquivocationProof:
    """Decode and check a proof from untrusted bytes. Raises InvalidProof."""
    if len(data) > 2 * MAX_ENTRY_BYTES + 16:
        raise InvalidProof("proof is too large")
    try:
        obj = msgpack.unpackb(
            data, raw=False, max_bin_len=MAX_ENTRY_BYTES, max_str_len=0,
            max_array_len=2, max_map_len=0, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidProof(f"proof is not valid msgpack: {exc}") from exc
    if not isinstance(obj, list) or len(obj) != 2 or not all(isinstance(x, bytes) for x in obj):
        raise InvalidProof("a proof is an array of two encoded entries")
    try:
        proof = EquivocationProof(decode_entry(obj[0]), decode_entry(obj[1]))
    except EntryError as exc:
        raise InvalidProof(str(exc)) from exc
    proof.check()
    return proof
