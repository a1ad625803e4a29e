import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.wire.frames import (
    HEADER,
    FrameDecoder,
    FrameTooLarge,
    TruncatedStream,
    encode_frame,
)


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    dec.eof()
    assert out == payloads


def test_oversized_length_rejected_before_buffering() -> None:
    dec = FrameDecoder(max_frame=1000)
    with pytest.raises(FrameTooLarge, match="1001"):
        dec.feed(HEADER.pack(1001))
    assert dec.buffered == 0


def test_encode_refuses_oversized() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 11, max_frame=10)


@given(st.binary(min_size=1, max_size=200))
def test_truncated_stream_detected(frame_body: bytes) -> None:
    stream = encode_frame(frame_body)
    dec = FrameDecoder()
    dec.feed(stream[:-1])
    with pytest.raises(TruncatedStream):
        dec.eof()


@given(st.binary(max_size=2000))
def test_random_bytes_give_frames_or_frame_error(junk: bytes) -> None:
    dec = FrameDecoder(max_frame=512)
    try:
        frames = dec.feed(junk)
    except FrameTooLarge:
        return
    assert all(len(f) <= 512 for f in frames)
    # memory stays bounded: at most one partial frame plus a header is held
    assert dec.buffered <= 512 + HEADER.size
