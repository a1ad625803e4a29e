"""Lossless entropy coding of a codec's payload, for the wire only.

A pseudo-gradient is heavy-tailed, so most int4 codes sit on the few levels around 0:
on one peer's real DiLoCo update (250 local steps, docs/BENCHMARKS.md) the 15 levels
carry 3.2 bits of information per value, not 4. Huffman-coding the packed bytes (each
byte is a pair of codes, so the code table covers pairs) gets within 0.2% of that
entropy at about 1 ms per 190 KB shard; LZ matching finds nothing in quantisation
noise, so DEFLATE runs Huffman-only.

This changes only the bytes that travel: the codec's payload is rebuilt bit for bit
before anything reads it, so a model trained over "int4z" is the model trained over
"int4" (tests/averaging/test_int4z.py: the same model hash over fewer bytes).

Wire frame: one method byte, then the body.

    METHOD_STORED   body = the payload as it is (used when coding would not shrink it)
    METHOD_DEFLATE  body = a raw DEFLATE stream (RFC 1951, no zlib header) of the payload

The receiver knows the exact payload size from the codec and the shard length, and
treats the frame as untrusted: it inflates at most one byte more than that (a frame
cannot make it allocate more: no decompression bomb), and refuses a frame that inflates
to another size, that does not end where its stream ends, or that has bytes after it.
"""

from __future__ import annotations

import zlib

from shoal.compression.codec import Buffer, MalformedEncodingError

METHOD_STORED = 0
METHOD_DEFLATE = 1
FRAME_HEADER_BYTES = 1
# Raw DEFLATE (negative wbits: no zlib header or checksum; the transport authenticates
# every byte already). Huffman-only: see the module docstring.
_WBITS = -15
_LEVEL = 9  # with Z_HUFFMAN_ONLY the level changes nothing but the block splitting
_MEM_LEVEL = 9


def max_frame_size(payload_size: int) -> int:
    """The largest frame a payload of ``payload_size`` bytes may travel as: stored, plus
    the method byte (the encoder never sends a coded body larger than the payload)."""
    return payload_size + FRAME_HEADER_BYTES


def pack(payload: Buffer) -> bytes:
    """The wire frame for ``payload``: coded if that is smaller, else stored."""
    raw = memoryview(payload).cast("B")
    coder = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zlib.Z_HUFFMAN_ONLY)
    body = coder.compress(raw) + coder.flush()
    if len(body) < raw.nbytes:
        return bytes((METHOD_DEFLATE,)) + body
    return bytes((METHOD_STORED,)) + bytes(raw)


def unpack_into(frame: Buffer, out: bytearray | memoryview) -> None:
    """Rebuild a payload of exactly ``len(out)`` bytes from an untrusted ``frame``.

    Raises MalformedEncodingError for an unknown method, a body that does not inflate,
    or one that inflates to another size or has bytes after its end."""
    view = memoryview(frame).cast("B")
    dest = memoryview(out).cast("B")
    size = dest.nbytes
    if view.nbytes < FRAME_HEADER_BYTES:
        raise MalformedEncodingError("empty entropy-coded frame")
    method, body = view[0], view[FRAME_HEADER_BYTES:]
    if method == METHOD_STORED:
        if body.nbytes != size:
            raise MalformedEncodingError(
                f"stored frame of {body.nbytes} bytes; the payload is {size}"
            )
        dest[:] = body
        return
    if method != METHOD_DEFLATE:
        raise MalformedEncodingError(f"unknown entropy-coding method {method}")
    if body.nbytes >= size:
        raise MalformedEncodingError("coded frame is not smaller than its payload")
    inflater = zlib.decompressobj(_WBITS)
    try:
        # max_length bounds what an attacker's frame can make us allocate; one byte
        # over the payload leaves inflate room to read the stream's end-of-block code
        # (and shows a frame that would inflate to more).
        data = inflater.decompress(body, size + 1)
    except zlib.error as exc:
        raise MalformedEncodingError(f"coded frame does not inflate: {exc}") from None
    if len(data) != size:
        raise MalformedEncodingError(f"coded frame inflates to {len(data)} bytes, not {size}")
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise MalformedEncodingError("coded frame does not end where its payload does")
    dest[:] = data


def unpack(frame: Buffer, size: int) -> bytearray:
    """`unpack_into` a new buffer of ``size`` bytes."""
    out = bytearray(size)
    unpack_into(frame, out)
    return out
