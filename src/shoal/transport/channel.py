"""AEAD record layer, sans-IO: AES-256-GCM records inside length-prefixed frames.

After the handshake each direction has its own 32-byte key. A record on the wire is::

    length u32 (big-endian, = 1 + len(ciphertext)) | type u8 | ciphertext | tag (16)

i.e. a wire frame (shoal.wire.frames) whose body is ``type | AES-256-GCM(payload)``.
The nonce is a 96-bit big-endian counter: 0 for the first record in a direction, +1
for each record after it, never sent and never reused. The type byte is the
associated data, so it is authenticated but readable (the bulk receiver needs it to
decrypt chunks straight into the caller's buffer). Because nonces are implicit, a
dropped, replayed or reordered record fails its tag.

A failed tag, a record shorter than a tag, or a key past its limits (MAX_RECORDS or
MAX_BYTES per direction, far below counter wrap and within AES-GCM's usage bounds)
raises a ChannelError and latches the opener/sealer dead: the connection must close.
There is no rekeying; a connection that reaches the limit is closed and the next
dial makes fresh keys.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.transport.errors import BadRecord, KeyExhausted

TAG_BYTES = 16
RECORD_HEADER = struct.Struct(">IB")  # frame length, record type
RECORD_OVERHEAD = RECORD_HEADER.size + TAG_BYTES
NONCE_BYTES = 12

# 2^32 records / 2^40 bytes per key: ~2^36 AES blocks keeps the GCM distinguishing
# advantage near 2^-56, and the counter is nowhere near 2^96.
MAX_RECORDS = 2**32
MAX_BYTES = 2**40


class RecordType(IntEnum):
    MESSAGE = 0x01  # one codec-encoded Message
    BULK_HEADER = 0x10  # u64 size | utf-8 tag
    BULK_ACCEPT = 0x11  # empty
    BULK_ABORT = 0x12  # utf-8 reason; either side, then close
    BULK_DATA = 0x13  # up to BULK_CHUNK_BYTES of stream bytes
    BULK_END = 0x14  # empty: the sender has sent everything
    BULK_DONE = 0x15  # empty: the receiver has all bytes


def nonce(counter: int) -> bytes:
    return counter.to_bytes(NONCE_BYTES, "big")


class _Direction:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("record keys are 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._counter = 0
        self._bytes = 0
        self._dead: str | None = None
        self.records = 0

    def has_room(self, records: int, nbytes: int) -> bool:
        """Whether ``records`` more records carrying ``nbytes`` fit under the key's limits
        (a reused bulk connection checks this before a stream, not halfway through)."""
        return (
            self._dead is None
            and self._counter + records <= MAX_RECORDS
            and self._bytes + nbytes <= MAX_BYTES
        )

    def _next_nonce(self, n: int) -> bytes:
        if self._dead is not None:
            raise BadRecord(f"channel is closed: {self._dead}")
        if self._counter >= MAX_RECORDS or self._bytes + n > MAX_BYTES:
            self._dead = "key exhausted"
            raise KeyExhausted(
                f"key used for {self._counter} records / {self._bytes} bytes; reconnect"
            )
        out = nonce(self._counter)
        self._counter += 1
        self._bytes += n
        self.records = self._counter
        return out


class RecordSealer(_Direction):
    """Encrypts our outgoing records."""

    def seal(self, rtype: int, payload: bytes | bytearray | memoryview) -> bytes:
        """The complete framed record for ``payload``."""
        ct = self._aead.encrypt(self._next_nonce(len(payload)), payload, bytes((rtype,)))
        return RECORD_HEADER.pack(1 + len(ct), rtype) + ct

    def seal_into(
        self, rtype: int, payload: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> int:
        """Write the framed record into ``out`` (no intermediate copy); returns its length."""
        n = len(payload)
        total = RECORD_OVERHEAD + n
        if len(out) < total:
            raise ValueError(f"output buffer of {len(out)} bytes is smaller than {total}")
        view = memoryview(out)
        nonce_ = self._next_nonce(n)
        RECORD_HEADER.pack_into(view, 0, 1 + n + TAG_BYTES, rtype)
        self._aead.encrypt_into(nonce_, payload, bytes((rtype,)), view[RECORD_HEADER.size : total])
        return total


class RecordOpener(_Direction):
    """Decrypts the peer's records, strictly in order."""

    def open(self, body: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        """Open a frame body (``type | ciphertext | tag``); returns (type, payload)."""
        if len(body) < 1 + TAG_BYTES:
            self._dead = "short record"
            raise BadRecord(f"record of {len(body)} bytes is shorter than type and tag")
        view = memoryview(body)
        rtype = view[0]
        nonce_ = self._next_nonce(len(body) - 1 - TAG_BYTES)
        try:
            return rtype, self._aead.decrypt(nonce_, view[1:], bytes((rtype,)))
        except InvalidTag as exc:
            self._dead = "bad tag"
            raise BadRecord(
                "record failed authentication (tampered, replayed, reordered or wrong key)"
            ) from exc

    def open_into(
        self, rtype: int, ciphertext: bytes | bytearray | memoryview, out: memoryview
    ) -> None:
        """Decrypt ``ciphertext`` (payload | tag) of a ``rtype`` record into ``out``.

        ``out`` must be exactly the payload length. On failure its contents are
        undefined (it may hold unauthenticated plaintext) and must be discarded.
        """
        n = len(ciphertext) - TAG_BYTES
        if n < 0:
            self._dead = "short record"
            raise BadRecord("record is shorter than its tag")
        if len(out) != n:
            raise ValueError(f"output is {len(out)} bytes, payload is {n}")
        nonce_ = self._next_nonce(n)
        try:
            self._aead.decrypt_into(nonce_, ciphertext, bytes((rtype,)), out)
        except InvalidTag as exc:
            self._dead = "bad tag"
            raise BadRecord(
                "record failed authentication (tampered, replayed, reordered or wrong key)"
            ) from exc
