"""What the networked SecAgg driver puts on the wire (see group_driver.py).

Control steps are small versioned messages (``secagg.*``, wire/codec.py) on the node's
authenticated connections; the sender's index is its authenticated peer id's place in
the group, never a field it fills in itself. Each message starts with the 16-byte
session id (``session_id``) so one node can tell concurrent or stale sessions apart.

    member -> collector  secagg.advert         enc_pk, mask_pk, Ed25519 signature
    collector -> member  secagg.adverts        [[index, enc_pk, mask_pk, signature], ...]
    member -> collector  secagg.shares         [[receiver, AES-GCM blob], ...]
    collector -> member  secagg.routed         [[sender, AES-GCM blob], ...]
    collector -> member  secagg.unmask_request [survivor index, ...]
    member -> collector  secagg.unmask         [[j, share of b_j]...], [[j, share of key_j]...]
    collector -> member  secagg.abort          reason, [missing index, ...]

Big vectors are bulk streams tagged ``sa/<session id hex>/<kind>``:

    m   member -> collector: the masked input, numel + 1 little-endian uint32 ring
        elements (the weighted vector, then the weight), exactly 4 (numel + 1) bytes
    r   collector -> member: ResultHeader, then the average encoded by the codec
        ("none": fp32, "int8": shoal.compression.int8); the same bytes to every member
    p   a liveness probe (0 bytes)

Every size is bounded here: lists by MAX_SECAGG_GROUP, every byte string by its exact
length, so no secagg message can exceed ~25 KiB however hostile its sender.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from shoal.secagg import shamir
from shoal.wire.codec import MalformedMessage, Message
from shoal.wire.fields import as_bytes, as_int, as_list, as_str, expect_len

# Pairwise masks and Shamir shares grow with n^2 per session; groups are small (the
# round core's group_size, 16 by default). 128 keeps every message list under the
# codec's MAX_LIST_ITEMS and every message under ~25 KiB.
MAX_SECAGG_GROUP = 128
SESSION_ID_BYTES = 16
KEY_BYTES = 32  # X25519 public key
SIGNATURE_BYTES = 64  # Ed25519
# client.py: 4-byte sender + 4-byte receiver + two Shamir shares, plus the AES-GCM tag.
SHARE_BLOB_BYTES = 8 + 2 * shamir.SHARE_BYTES + 16
MAX_REASON_BYTES = 200
TAG_PREFIX = "sa/"
MASKED_TAG = "m"
RESULT_TAG = "r"
PROBE_TAG = "p"


def session_id(session: str) -> bytes:
    return hashlib.sha256(b"shoal-secagg-session|" + session.encode()).digest()[:SESSION_ID_BYTES]


def tag_prefix(sid: bytes) -> str:
    return f"{TAG_PREFIX}{sid.hex()}/"


def _sid(x: Any) -> bytes:
    return as_bytes(x, "session", SESSION_ID_BYTES, exact=SESSION_ID_BYTES)


def _index(x: Any, name: str) -> int:
    return as_int(x, name, 1, MAX_SECAGG_GROUP)


def _pairs(x: Any, name: str, value_bytes: int) -> dict[int, bytes]:
    """[[index, bytes], ...] with distinct indices, each value exactly value_bytes."""
    out: dict[int, bytes] = {}
    for item in as_list(x, name, MAX_SECAGG_GROUP):
        pair = as_list(item, name, 2)
        expect_len(pair, 2, name)
        i = _index(pair[0], f"{name} index")
        if i in out:
            raise MalformedMessage(f"{name}: index {i} twice")
        out[i] = as_bytes(pair[1], f"{name} value", value_bytes, exact=value_bytes)
    return out


def _indices(x: Any, name: str) -> tuple[int, ...]:
    out = tuple(_index(i, name) for i in as_list(x, name, MAX_SECAGG_GROUP))
    if len(set(out)) != len(out):
        raise MalformedMessage(f"{name}: repeated index")
    return out


@dataclass(frozen=True, slots=True)
class AdvertMsg(Message):
    TYPE: ClassVar[str] = "secagg.advert"
    session: bytes
    enc_pk: bytes
    mask_pk: bytes
    signature: bytes

    def to_fields(self) -> list[Any]:
        return [self.session, self.enc_pk, self.mask_pk, self.signature]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 4, cls.TYPE)
        return cls(
            _sid(fields[0]),
            as_bytes(fields[1], "enc_pk", KEY_BYTES, exact=KEY_BYTES),
            as_bytes(fields[2], "mask_pk", KEY_BYTES, exact=KEY_BYTES),
            as_bytes(fields[3], "signature", SIGNATURE_BYTES, exact=SIGNATURE_BYTES),
        )


@dataclass(frozen=True, slots=True)
class AdvertsMsg(Message):
    TYPE: ClassVar[str] = "secagg.adverts"
    session: bytes
    adverts: tuple[tuple[int, bytes, bytes, bytes], ...]  # (index, enc_pk, mask_pk, sig)

    def to_fields(self) -> list[Any]:
        return [self.session, [list(a) for a in self.adverts]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        out = []
        seen: set[int] = set()
        for item in as_list(fields[1], "adverts", MAX_SECAGG_GROUP):
            a = as_list(item, "advert", 4)
            expect_len(a, 4, "advert")
            i = _index(a[0], "advert index")
            if i in seen:
                raise MalformedMessage(f"adverts: index {i} twice")
            seen.add(i)
            out.append((
                i,
                as_bytes(a[1], "enc_pk", KEY_BYTES, exact=KEY_BYTES),
                as_bytes(a[2], "mask_pk", KEY_BYTES, exact=KEY_BYTES),
                as_bytes(a[3], "signature", SIGNATURE_BYTES, exact=SIGNATURE_BYTES),
            ))  # fmt: skip
        return cls(_sid(fields[0]), tuple(out))


@dataclass(frozen=True, slots=True)
class SharesMsg(Message):
    TYPE: ClassVar[str] = "secagg.shares"
    session: bytes
    blobs: dict[int, bytes]  # receiver index -> ciphertext

    def to_fields(self) -> list[Any]:
        return [self.session, [[j, b] for j, b in sorted(self.blobs.items())]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        return cls(_sid(fields[0]), _pairs(fields[1], "shares", SHARE_BLOB_BYTES))


@dataclass(frozen=True, slots=True)
class RoutedMsg(Message):
    TYPE: ClassVar[str] = "secagg.routed"
    session: bytes
    blobs: dict[int, bytes]  # sender index -> ciphertext addressed to the receiver

    def to_fields(self) -> list[Any]:
        return [self.session, [[i, b] for i, b in sorted(self.blobs.items())]]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        return cls(_sid(fields[0]), _pairs(fields[1], "routed", SHARE_BLOB_BYTES))


@dataclass(frozen=True, slots=True)
class UnmaskRequestMsg(Message):
    TYPE: ClassVar[str] = "secagg.unmask_request"
    session: bytes
    survivors: tuple[int, ...]

    def to_fields(self) -> list[Any]:
        return [self.session, list(self.survivors)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 2, cls.TYPE)
        return cls(_sid(fields[0]), _indices(fields[1], "survivors"))


@dataclass(frozen=True, slots=True)
class UnmaskMsg(Message):
    TYPE: ClassVar[str] = "secagg.unmask"
    session: bytes
    self_mask: dict[int, bytes]  # survivor j -> share of b_j
    mask_key: dict[int, bytes]  # dropped j -> share of j's mask key

    def to_fields(self) -> list[Any]:
        return [
            self.session,
            [[j, s] for j, s in sorted(self.self_mask.items())],
            [[j, s] for j, s in sorted(self.mask_key.items())],
        ]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 3, cls.TYPE)
        return cls(
            _sid(fields[0]),
            _pairs(fields[1], "self_mask", shamir.SHARE_BYTES),
            _pairs(fields[2], "mask_key", shamir.SHARE_BYTES),
        )


@dataclass(frozen=True, slots=True)
class AbortMsg(Message):
    TYPE: ClassVar[str] = "secagg.abort"
    session: bytes
    reason: str
    missing: tuple[int, ...]

    def to_fields(self) -> list[Any]:
        return [self.session, self.reason[:MAX_REASON_BYTES], list(self.missing)]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Self:
        expect_len(fields, 3, cls.TYPE)
        return cls(
            _sid(fields[0]),
            as_str(fields[1], "reason", MAX_REASON_BYTES),
            _indices(fields[2], "missing"),
        )


SECAGG_MESSAGES: tuple[type[Message], ...] = (
    AdvertMsg, AdvertsMsg, SharesMsg, RoutedMsg, UnmaskRequestMsg, UnmaskMsg, AbortMsg,
)  # fmt: skip

# Result stream header (little-endian): magic, u16 format version, u16 n, n status bytes
# (averaging.stream_format STATUS_* codes, group order), f64 total included weight.
_RESULT_HEAD = struct.Struct("<4sHH")
_RESULT_MAGIC = b"SAR1"
# 2: the int8 payload after it decodes as q * fp32(absmax / 127) (was (q / 127) *
# absmax; a few values differ by an ulp), so an old peer refuses it rather than
# ending the round on different bits (the all-reduce's result format changed alike).
_RESULT_VERSION = 2


def result_header_bytes(n: int) -> int:
    return _RESULT_HEAD.size + n + 8


@dataclass(frozen=True, slots=True)
class ResultHeader:
    statuses: tuple[int, ...]
    total_weight: float

    def encode(self) -> bytes:
        n = len(self.statuses)
        return (
            _RESULT_HEAD.pack(_RESULT_MAGIC, _RESULT_VERSION, n)
            + bytes(self.statuses)
            + struct.pack("<d", self.total_weight)
        )

    @classmethod
    def decode(cls, raw: bytes | memoryview, n: int) -> ResultHeader:
        if len(raw) != result_header_bytes(n):
            raise ValueError(
                f"result header of {len(raw)} bytes, expected {result_header_bytes(n)}"
            )
        magic, version, got_n = _RESULT_HEAD.unpack_from(raw)
        if magic != _RESULT_MAGIC or version != _RESULT_VERSION or got_n != n:
            raise ValueError(f"bad result header (magic {magic!r}, version {version}, n {got_n})")
        statuses = tuple(raw[_RESULT_HEAD.size : _RESULT_HEAD.size + n])
        (total,) = struct.unpack_from("<d", raw, _RESULT_HEAD.size + n)
        return cls(statuses, float(total))
