"""Entropy frames (`shoal.compression.entropy`): exact round trips, and an untrusted
frame either rebuilds to exactly the payload or raises MalformedEncodingError."""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.compression import MalformedEncodingError, get_codec
from shoal.compression.entropy import (
    METHOD_DEFLATE,
    METHOD_STORED,
    max_frame_size,
    pack,
    unpack,
    unpack_into,
)


def heavy_tailed(numel: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(numel, generator=g) * torch.rand(numel, generator=g).pow(4)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def whole_inflation(frame: bytes) -> bytes:
    """What a frame holds, read without any bound (trusted test input only)."""
    return frame[1:] if frame[0] == METHOD_STORED else zlib.decompress(frame[1:], -15)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096) | st.binary(max_size=64).map(lambda b: b * 50))
def test_pack_round_trips_any_payload(payload: bytes) -> None:
    frame = pack(payload)
    assert len(frame) <= max_frame_size(len(payload))
    assert unpack(frame, len(payload)) == payload


def test_incompressible_payload_travels_stored() -> None:
    payload = os.urandom(10_000)
    frame = pack(payload)
    assert frame[0] == METHOD_STORED and frame[1:] == payload
    assert len(frame) == max_frame_size(len(payload))


def test_int4z_payload_shrinks_and_decodes_to_the_int4_values() -> None:
    x = heavy_tailed(100_003, seed=1)
    z, plain = get_codec("int4z"), get_codec("int4")
    enc = z.encode(x)
    assert bytes(enc.payload) == bytes(plain.encode(x).payload)  # same math as int4
    frame = pack(enc.payload)
    assert frame[0] == METHOD_DEFLATE
    # heavy tails put most codes on a few levels: well under int4's 4 bits a value
    assert len(frame) < 0.85 * enc.nbytes, (len(frame), enc.nbytes)
    rebuilt = unpack(frame, enc.nbytes)
    assert rebuilt == bytes(enc.payload)
    again = type(enc)(enc.codec, enc.shape, rebuilt, enc.chunk_size)
    assert torch.equal(z.decode(again), plain.decode(plain.encode(x)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2000))
def test_untrusted_frame_rebuilds_exactly_or_raises(frame: bytes, size: int) -> None:
    out = bytearray(size)
    try:
        unpack_into(frame, out)
    except MalformedEncodingError:
        return
    # accepted: then the frame holds exactly these bytes, nothing cut off or left over
    assert frame[0] in (METHOD_STORED, METHOD_DEFLATE)
    assert bytes(out) == whole_inflation(frame)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.data())
def test_corrupted_coded_frame_never_passes_as_another_size(
    payload: bytes, data: st.DataObject
) -> None:
    frame = bytearray(pack(payload * 8))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    try:
        got = unpack(bytes(frame), len(payload) * 8)
    except MalformedEncodingError:
        return
    # a flipped bit may rebuild other bytes of that size, but never part of a stream
    assert bytes(got) == whole_inflation(bytes(frame))


@pytest.mark.parametrize(
    ("frame", "size", "reason"),
    [
        (b"", 10, "empty"),
        (b"\x07" + b"x" * 9, 10, "unknown"),
        (b"\x00" + b"x" * 9, 10, "stored frame of 9"),
        (b"\x00" + b"x" * 11, 10, "stored frame of 11"),
        (b"\x01" + b"\xff" * 5, 10, "does not inflate"),
        (b"\x01" + raw_deflate(b"a" * 9), 10, "inflates to 9"),
        (b"\x01" + raw_deflate(b"a" * 11), 10, "inflates to 11"),
        (b"\x01" + raw_deflate(b"a" * 10) + b"tail", 10, "does not end"),
        (b"\x01" + raw_deflate(b"a" * 10)[:-1], 10, "does not end"),
        (b"\x01" + b"y" * 12, 10, "not smaller"),
    ],
)
def test_bad_frames_are_refused_with_the_reason(frame: bytes, size: int, reason: str) -> None:
    with pytest.raises(MalformedEncodingError, match=reason):
        unpack(frame, size)


def test_decompression_bomb_is_cut_at_the_payload_size() -> None:
    """16 MiB of zeros deflate to ~16 KB; claimed for a 64 KiB payload, the frame must
    be refused after inflating at most one byte more than that."""
    frame = b"\x01" + raw_deflate(bytes(1 << 24))
    assert len(frame) < 1 << 16
    with pytest.raises(MalformedEncodingError, match="inflates to 65537"):
        unpack(frame, 1 << 16)
