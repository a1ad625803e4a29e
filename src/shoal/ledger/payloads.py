"""Typed payloads for each entry kind, with strict decoders for untrusted bytes.

Each payload is a msgpack array; decoders check every field's type and bound, so a
peer cannot smuggle a payload that other verifiers would read differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from shoal.identity.keys import PEER_ID_BYTES, PeerId
from shoal.ledger.entry import HASH_BYTES, Entry, EntryError, Kind
from shoal.ledger.limits import (
    MAX_CONTRIBUTORS,
    MAX_EVIDENCE_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MAX_TEXT_BYTES,
)


@dataclass(frozen=True, slots=True)
class JoinedRun:
    run: str


@dataclass(frozen=True, slots=True)
class UpdateCommitment:
    """The hash of the compressed pseudo-gradient this peer contributes, and its samples."""

    run: str
    round: int
    delta_hash: bytes
    samples: int


@dataclass(frozen=True, slots=True, order=True)
class Contribution:
    """A pointer to one contributor's update-commitment entry (its feed head)."""

    author: PeerId
    seq: int
    entry_hash: bytes
    samples: int


@dataclass(frozen=True, slots=True)
class RoundAggregate:
    run: str
    round: int
    model_hash: bytes
    feeds_root: bytes
    contributors: tuple[Contribution, ...]


@dataclass(frozen=True, slots=True)
class Attestation:
    run: str
    evidence: bytes


Payload = JoinedRun | UpdateCommitment | RoundAggregate | Attestation

KIND_OF: dict[type, Kind] = {
    JoinedRun: Kind.JOINED_RUN,
    UpdateCommitment: Kind.UPDATE_COMMITMENT,
    RoundAggregate: Kind.ROUND_AGGREGATE,
    Attestation: Kind.ATTESTATION,
}


def _pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def encode_payload(p: Payload) -> bytes:
    if isinstance(p, JoinedRun):
        return _pack([p.run])
    if isinstance(p, UpdateCommitment):
        return _pack([p.run, p.round, p.delta_hash, p.samples])
    if isinstance(p, RoundAggregate):
        rows = [[c.author.raw, c.seq, c.entry_hash, c.samples] for c in p.contributors]
        return _pack([p.run, p.round, p.model_hash, p.feeds_root, rows])
    return _pack([p.run, p.evidence])


def _text(v: object, what: str) -> str:
    if not isinstance(v, str) or len(v.encode()) > MAX_TEXT_BYTES:
        raise EntryError(f"{what} must be text of at most {MAX_TEXT_BYTES} bytes")
    return v


def _uint(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SEQ:
        raise EntryError(f"{what} must be an unsigned 64-bit integer")
    return v


def _digest(v: object, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != HASH_BYTES:
        raise EntryError(f"{what} must be a {HASH_BYTES}-byte hash")
    return v


def _fields(data: bytes, n: int) -> list[object]:
    try:
        obj = msgpack.unpackb(
            data, raw=False, max_bin_len=MAX_PAYLOAD_BYTES, max_str_len=MAX_TEXT_BYTES,
            max_array_len=MAX_CONTRIBUTORS, max_map_len=0, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise EntryError(f"payload is not valid msgpack: {exc}") from exc
    if not isinstance(obj, list) or len(obj) != n:
        raise EntryError(f"payload must be an array of {n} fields")
    return obj


def decode_payload(kind: Kind, data: bytes) -> Payload:
    if kind == Kind.JOINED_RUN:
        (run,) = _fields(data, 1)
        return JoinedRun(_text(run, "run"))
    if kind == Kind.UPDATE_COMMITMENT:
        run, rnd, delta, samples = _fields(data, 4)
        s = _uint(samples, "samples")
        if s == 0:
            raise EntryError("an update commitment covers at least one sample")
        return UpdateCommitment(_text(run, "run"), _uint(rnd, "round"), _digest(delta, "delta"), s)
    if kind == Kind.ROUND_AGGREGATE:
        run, rnd, mh, root, rows = _fields(data, 5)
        if not isinstance(rows, list) or not rows:
            raise EntryError("a round aggregate lists at least one contributor")
        contribs = []
        for row in rows:
            if not isinstance(row, list) or len(row) != 4:
                raise EntryError("a contributor is [author, seq, entry_hash, samples]")
            a, seq, h, s = row
            if not isinstance(a, bytes) or len(a) != PEER_ID_BYTES:
                raise EntryError("contributor author must be a 32-byte public key")
            contribs.append(
                Contribution(PeerId(a), _uint(seq, "seq"), _digest(h, "entry hash"), _uint(s, "n"))
            )
        if len({c.author for c in contribs}) != len(contribs):
            raise EntryError("a contributor is listed twice")
        return RoundAggregate(
            _text(run, "run"), _uint(rnd, "round"), _digest(mh, "model hash"),
            _digest(root, "feeds root"), tuple(contribs),
        )  # fmt: skip
    if kind == Kind.ATTESTATION:
        run, ev = _fields(data, 2)
        if not isinstance(ev, bytes) or len(ev) > MAX_EVIDENCE_BYTES:
            raise EntryError(f"evidence must be at most {MAX_EVIDENCE_BYTES} bytes")
        return Attestation(_text(run, "run"), ev)
    raise EntryError(f"unknown kind {kind}")


def payload_of(entry: Entry) -> Payload:
    return decode_payload(entry.kind, entry.payload)
