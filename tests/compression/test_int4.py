import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoal.compression import (
    EncodedTensor,
    ErrorFeedback,
    MalformedEncodingError,
    NonFiniteTensorError,
    get_codec,
)
from shoal.compression.int4 import DEFAULT_CHUNK_SIZE, Int4Codec, max_abs_error, payload_size

finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def chunk_bounds(x: np.ndarray, chunk: int) -> np.ndarray:
    """max_abs_error for each element's chunk, computed independently of the codec."""
    flat = x.reshape(-1)
    absmax = np.array(
        [np.abs(flat[i : i + chunk]).max() for i in range(0, flat.size, chunk)], np.float32
    )
    return np.repeat(max_abs_error(absmax), chunk)[: flat.size]


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(0, 5), st.integers(1, 50)), elements=finite_f32),
    st.sampled_from([2, 4, 16, 4096]),
)
def test_round_trip_error_within_documented_bound(x: np.ndarray, chunk: int) -> None:
    codec = Int4Codec(chunk_size=chunk)
    t = torch.from_numpy(x)
    enc = codec.encode(t)
    assert enc.nbytes == payload_size(x.size, chunk)
    decoded = codec.decode(enc)
    assert decoded.shape == t.shape and decoded.dtype == torch.float32
    if x.size:
        err = np.abs(x.astype(np.float64) - decoded.numpy().astype(np.float64)).reshape(-1)
        assert (err <= chunk_bounds(x, chunk)).all()


def test_bound_is_tight_and_every_level_is_used() -> None:
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    codec = get_codec("int4")
    enc = codec.encode(x)
    decoded = codec.decode(enc)
    chunk = DEFAULT_CHUNK_SIZE
    scale = x.abs().reshape(-1, chunk).amax(1) / 7
    ratio = (x - decoded).abs().reshape(-1, chunk).amax(1) / scale
    assert 0.45 < float(ratio.max()) <= 0.5 + 2**-14
    packed = np.frombuffer(enc.payload, np.uint8, offset=4 * ((1 << 16) // chunk))
    nibbles = set(np.unique(packed & 0x0F)) | set(np.unique(packed >> 4))
    assert nibbles == set(range(1, 16))  # 15 levels, nibble 0 never


def test_payload_is_an_eighth_of_fp32_plus_scales() -> None:
    enc = get_codec("int4").encode(torch.ones(10_001))
    assert DEFAULT_CHUNK_SIZE == 256
    assert enc.nbytes == 5_001 + 4 * 40  # ceil(10001 / 2) bytes, 40 chunks of 256


def test_decode_range_matches_whole_decode() -> None:
    codec = Int4Codec(chunk_size=64)
    x = torch.randn(1001, generator=torch.Generator().manual_seed(1))
    enc = codec.encode(x)
    whole = codec.decode(enc)
    part = torch.empty(1001 - 320)
    codec.decode_range(enc, 320, 1001, part)
    assert torch.equal(part, whole[320:])
    with pytest.raises(ValueError):
        codec.decode_range(enc, 33, 100, torch.empty(67))  # not on a chunk boundary


def test_zeros_and_extremes() -> None:
    codec = get_codec("int4")
    assert torch.equal(codec.decode(codec.encode(torch.zeros(5))), torch.zeros(5))
    big = torch.tensor([3.4e38, -3.4e38, 1e-45])
    out = codec.decode(codec.encode(big))
    assert torch.isfinite(out).all() and out[0] == pytest.approx(3.4e38, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_rejected(bad: float) -> None:
    x = torch.randn(100)
    x[37] = bad
    with pytest.raises(NonFiniteTensorError):
        get_codec("int4").encode(x)


def test_decode_rejects_malformed_payloads() -> None:
    codec = get_codec("int4")
    enc = codec.encode(torch.randn(11))  # odd: the last byte has a padding nibble
    p = bytes(enc.payload)
    cases = [
        EncodedTensor("int4", (11,), p[:-1], 4096),  # short
        EncodedTensor("int4", (13,), p, 4096),  # shape disagrees
        EncodedTensor("int4", (11,), p, 0),  # no chunk size
        EncodedTensor("int4", (11,), p, 3),  # odd chunk size
        EncodedTensor("int8", (11,), p, 4096),  # wrong codec
        EncodedTensor("int4", (11,), np.float32(np.nan).tobytes() + p[4:], 4096),
        EncodedTensor("int4", (11,), np.float32(-1).tobytes() + p[4:], 4096),
        EncodedTensor("int4", (11,), p[:4] + bytes([p[4] & 0xF0]) + p[5:], 4096),  # low 0
        EncodedTensor("int4", (11,), p[:4] + bytes([p[4] & 0x0F]) + p[5:], 4096),  # high 0
        EncodedTensor("int4", (11,), p[:-1] + bytes([(p[-1] & 0x0F) | 0x90]), 4096),  # pad
        EncodedTensor("int4", (1 << 40,), p, 4096),  # huge claim, tiny payload
    ]
    for bad in cases:
        with pytest.raises(MalformedEncodingError):
            codec.decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 120), st.sampled_from([2, 8, 4096]))
def test_random_payloads_raise_or_decode_finite(blob: bytes, numel: int, chunk: int) -> None:
    codec = get_codec("int4")
    try:
        out = codec.decode(EncodedTensor("int4", (numel,), blob, chunk))
    except MalformedEncodingError:
        return
    assert out.numel() == numel and bool(torch.isfinite(out).all())


def test_read_only_payload_decodes_without_warning() -> None:
    codec = get_codec("int4")
    enc = codec.encode(torch.randn(3, 7))
    frozen = EncodedTensor(enc.codec, enc.shape, bytes(enc.payload), enc.chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = codec.decode(frozen)
    assert out.shape == (3, 7)
    assert torch.equal(out, codec.decode(enc))


def test_error_feedback_keeps_the_sum_of_updates_on_track() -> None:
    # 4 bits drop a lot each round; error feedback must carry it forward so the sum
    # of what was sent stays within one round's error of the sum of the true updates.
    gen = torch.Generator().manual_seed(2)
    ef, codec = ErrorFeedback(get_codec("int4")), get_codec("int4")
    true_sum, sent_sum = torch.zeros(5000), torch.zeros(5000)
    for _ in range(30):
        u = torch.randn(5000, generator=gen)
        true_sum += u
        sent_sum += codec.decode(ef.encode("p", u))
    residual = ef.residual("p")
    assert residual is not None
    assert torch.allclose(true_sum - sent_sum, residual, atol=1e-4)
    assert float((true_sum - sent_sum).abs().max()) < 1.0  # one round's error, not 30


def test_roundtrip_and_accumulate_match_decode() -> None:
    codec = Int4Codec(chunk_size=64)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    back = x.clone()
    enc = codec.encode(back, roundtrip=back)  # aliasing the input is allowed
    assert torch.equal(back, codec.decode(enc))
    decoded = codec.decode(enc)
    acc, scratch = torch.empty(1000 - 128), torch.empty(2000)
    codec.accumulate_range(enc, 128, 1000, 0.25, acc, scratch, first=True)
    assert torch.equal(acc, decoded[128:] * 0.25)
    codec.accumulate_range(enc, 128, 1000, 0.5, acc, scratch)
    assert torch.allclose(acc, decoded[128:] * 0.75, atol=1e-6)
    with pytest.raises(ValueError):
        codec.accumulate_range(enc, 128, 1000, 1.0, acc, torch.empty(10))
