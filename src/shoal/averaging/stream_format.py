"""What all-reduce puts on the wire: bulk-stream tags and the result-shard header.

Every stream of one all-reduce is tagged ``ar/<session>/<kind>...`` (the router strips
``ar/<session>/``). Kinds, with every field checked by the receiver:

    c/<sender>/<shard>/<version>/<numel>/<codec>/<weight>   a contribution
        sender = the sender's index in the group (must match its authenticated id),
        shard  = the receiver's index, version = model version it was computed from,
        numel  = length of the *whole* flat vector, codec = "none" | "int8" | "int4" |
                 "int4z",
        weight = float.hex() of the sender's weight (finite, > 0).
        Body: the sender's unweighted shard, encoded by the codec.
    r/<shard>/<version>/<numel>/<codec>                     an averaged shard
        Body: ResultHeader, then the averaged shard encoded by the codec. The owner
        sends the same bytes to every member.
    p                                                       a liveness probe (0 bytes)

Shards: ``shard_bounds(numel, n, shard_align(codec))``, cut on the codec's chunk grid.

ResultHeader (little-endian): magic "SHAR", u16 format version, u16 n (group size),
n status bytes (STATUS_* below, one per member in group order), n f64 weights (the
weight the owner used for each member; 0 if excluded). Codec payload sizes follow
from the shard length: none = 4 bytes per value, int8 = 1 byte per value plus one
fp32 scale per 4096 values (see shoal.compression.int8); int4 = half a
byte per value plus one fp32 scale per 256 values (shoal.compression.int4). An
int4z body is `shoal.compression.entropy`'s frame of the int4 payload: any size from
1 to the payload size + 1 (`body_fits`), which must rebuild to exactly the payload.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from shoal.compression import entropy, get_codec, int4, int8

TAG_PREFIX = "ar/"
CODECS = ("none", "int8", "int4", "int4z")
MAX_SESSION_BYTES = 120  # leaves room for the longest kind suffix in a 256-byte tag
MAX_GROUP_SIZE = 1024
_MAX_INT_DIGITS = 20

STATUS_INCLUDED = 0
STATUS_NOT_RECEIVED = 1
STATUS_UNREACHABLE = 2
STATUS_REJECTED = 3
STATUS_NON_FINITE = 4
STATUS_STREAM_FAILED = 5
STATUS_MALFORMED = 6
STATUS_TEXT = {
    STATUS_INCLUDED: "included",
    STATUS_NOT_RECEIVED: "no contribution arrived in time",
    STATUS_UNREACHABLE: "unreachable",
    STATUS_REJECTED: "contribution refused (wrong session, version, size or weight)",
    STATUS_NON_FINITE: "contribution holds NaN/Inf",
    STATUS_STREAM_FAILED: "contribution stream broke off (more/fewer bytes than announced?)",
    STATUS_MALFORMED: "contribution does not decode",
}

_HEADER = struct.Struct("<4sHH")
_MAGIC = b"SHAR"
# 2: int8 averaged shards decode as q * fp32(absmax / 127) (1 used (q / 127) * absmax).
# 3: with a codec, shards are aligned to its chunk grid (`shard_align`), so an owner's
# shard covers other values than under 2. 4: int4 chunks of 256 values, not 4096.
# Members must decode an owner's bytes alike, so a member of the other version refuses
# the shard rather than end up with different bits.
_FORMAT_VERSION = 4


class BadTag(ValueError):
    """A stream tag that does not parse or does not fit this all-reduce."""


def session_prefix(session: str) -> str:
    if not session or len(session.encode()) > MAX_SESSION_BYTES:
        raise ValueError(f"session must be 1..{MAX_SESSION_BYTES} bytes, got {session!r}")
    return f"{TAG_PREFIX}{session}/"


# Values per scale block of each codec on the wire (fp32 has none: 1).
_CHUNK = {
    "none": 1,
    "int8": int8.DEFAULT_CHUNK_SIZE,
    "int4": int4.DEFAULT_CHUNK_SIZE,
    "int4z": int4.DEFAULT_CHUNK_SIZE,
}


def shard_align(codec: str) -> int:
    """Shard boundaries fall on multiples of this (`shard_bounds`): the codec's chunk, so
    re-encoding a peer's already quantised vector shard by shard is exact."""
    if codec not in _CHUNK:
        raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")
    return _CHUNK[codec]


def payload_bytes(codec: str, values: int) -> int:
    """Exact encoded size of ``values`` floats under ``codec``."""
    if codec == "none":
        return 4 * values
    if codec == "int8":
        return int8.payload_size(values)
    if codec in ("int4", "int4z"):
        return int4.payload_size(values)
    raise ValueError(f"unknown codec {codec!r}; known: {list(CODECS)}")


def entropy_coded(codec: str) -> bool:
    """Whether ``codec``'s bodies are entropy frames of its payload (`entropy.py`)."""
    return codec in CODECS and get_codec(codec).entropy_coded


def body_fits(codec: str, values: int, size: int) -> bool:
    """Whether a body of ``size`` bytes may carry ``values`` floats under ``codec``: the
    exact payload size, or for an entropy-coded codec any frame size up to the bound."""
    payload = payload_bytes(codec, values)
    if entropy_coded(codec):
        return entropy.FRAME_HEADER_BYTES <= size <= entropy.max_frame_size(payload)
    return size == payload


@dataclass(frozen=True, slots=True)
class ContributionTag:
    sender: int
    shard: int
    version: int
    numel: int
    codec: str
    weight: float

    def encode(self) -> str:
        return (
            f"c/{self.sender}/{self.shard}/{self.version}/{self.numel}/{self.codec}/"
            f"{self.weight.hex()}"
        )


@dataclass(frozen=True, slots=True)
class ResultTag:
    shard: int
    version: int
    numel: int
    codec: str

    def encode(self) -> str:
        return f"r/{self.shard}/{self.version}/{self.numel}/{self.codec}"


PROBE_TAG = "p"


def _int(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > _MAX_INT_DIGITS:  # isdigit: no sign, no spaces
        raise BadTag(f"{what} {text[:24]!r} is not a non-negative integer")
    return int(text)


def _codec(text: str) -> str:
    if text not in CODECS:
        raise BadTag(f"unknown codec {text[:24]!r}")
    return text


def parse_tag(tag: str) -> ContributionTag | ResultTag | str:
    """Parse a session-relative tag; returns PROBE_TAG for a probe. Raises BadTag."""
    parts = tag.split("/")
    kind = parts[0]
    if kind == PROBE_TAG and len(parts) == 1:
        return PROBE_TAG
    if kind == "c" and len(parts) == 7:
        try:
            weight = float.fromhex(parts[6])
        except (ValueError, OverflowError):
            raise BadTag(f"weight {parts[6][:32]!r} is not a float.hex() number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise BadTag(f"weight {weight!r} must be finite and > 0")
        return ContributionTag(
            sender=_int(parts[1], "sender"),
            shard=_int(parts[2], "shard"),
            version=_int(parts[3], "model version"),
            numel=_int(parts[4], "numel"),
            codec=_codec(parts[5]),
            weight=weight,
        )
    if kind == "r" and len(parts) == 5:
        return ResultTag(
            shard=_int(parts[1], "shard"),
            version=_int(parts[2], "model version"),
            numel=_int(parts[3], "numel"),
            codec=_codec(parts[4]),
        )
    raise BadTag(f"unrecognised all-reduce tag {tag[:48]!r}")


def header_bytes(n: int) -> int:
    return _HEADER.size + 9 * n


@dataclass(frozen=True, slots=True)
class ResultHeader:
    """Which members the owner included in its shard, and with what weight."""

    statuses: tuple[int, ...]
    weights: tuple[float, ...]

    def encode(self) -> bytes:
        n = len(self.statuses)
        return (
            _HEADER.pack(_MAGIC, _FORMAT_VERSION, n)
            + bytes(self.statuses)
            + struct.pack(f"<{n}d", *self.weights)
        )

    @classmethod
    def decode(cls, data: bytes | memoryview, n: int) -> ResultHeader:
        """Parse and check against the expected group size; raises ValueError."""
        if len(data) != header_bytes(n):
            raise ValueError(f"result header of {len(data)} bytes; {header_bytes(n)} expected")
        magic, version, got_n = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _FORMAT_VERSION:
            raise ValueError(f"result header magic/version {magic!r}/{version} not understood")
        if got_n != n:
            raise ValueError(f"result header is for a group of {got_n}, not {n}")
        statuses = tuple(data[_HEADER.size : _HEADER.size + n])
        weights = struct.unpack_from(f"<{n}d", data, _HEADER.size + n)
        for s, w in zip(statuses, weights, strict=True):
            if s not in STATUS_TEXT:
                raise ValueError(f"unknown member status {s}")
            if s == STATUS_INCLUDED and not (math.isfinite(w) and w > 0):
                raise ValueError(f"included member has weight {w!r}")
        if STATUS_INCLUDED not in statuses:
            raise ValueError("result shard includes no member")
        return cls(statuses, tuple(weights))
