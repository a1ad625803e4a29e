import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoal.compression import (
    EncodedTensor,
    MalformedEncodingError,
    NonFiniteTensorError,
    get_codec,
)
from shoal.compression.int8 import Int8Codec, max_abs_error

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
    st.sampled_from([1, 3, 16, 4096]),
)
def test_round_trip_error_within_documented_bound(x: np.ndarray, chunk: int) -> None:
    codec = Int8Codec(chunk_size=chunk)
    t = torch.from_numpy(x)
    decoded = codec.decode(codec.encode(t))
    assert decoded.shape == t.shape and decoded.dtype == torch.float32
    if x.size:
        err = np.abs(x.astype(np.float64) - decoded.numpy().astype(np.float64)).reshape(-1)
        assert (err <= chunk_bounds(x, chunk)).all()


def test_bound_is_tight_but_not_loose() -> None:
    # On random data the worst error should come close to scale/2; a bound 10x too
    # generous would pass the test above without meaning anything.
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    decoded = get_codec("int8").decode(get_codec("int8").encode(x))
    ratio = (x - decoded).abs().reshape(-1, 4096).amax(1) / (
        x.abs().reshape(-1, 4096).amax(1) / 127
    )
    assert 0.45 < float(ratio.max()) <= 0.5 + 2**-14


def test_payload_is_a_quarter_of_fp32_plus_scales() -> None:
    enc = get_codec("int8").encode(torch.ones(10_000))
    assert enc.nbytes == 10_000 + 4 * 3  # 3 chunks of 4096


def test_zeros_and_extremes_are_exact_or_bounded() -> None:
    codec = get_codec("int8")
    assert torch.equal(codec.decode(codec.encode(torch.zeros(5))), torch.zeros(5))
    big = torch.tensor([3.4e38, -3.4e38, 1e-45])
    out = codec.decode(codec.encode(big))
    assert torch.isfinite(out).all() and out[0] == pytest.approx(3.4e38, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", ["int8", "none"])
def test_non_finite_input_rejected(bad: float, name: str) -> None:
    x = torch.randn(100)
    x[37] = bad
    with pytest.raises(NonFiniteTensorError):
        get_codec(name).encode(x)
    assert issubclass(NonFiniteTensorError, ValueError)


def test_decode_rejects_malformed_payloads() -> None:
    codec = get_codec("int8")
    enc = codec.encode(torch.randn(10))
    payload = bytes(enc.payload)
    cases = [
        EncodedTensor("int8", (10,), payload[:-1], 4096),  # short
        EncodedTensor("int8", (11,), payload, 4096),  # shape disagrees
        EncodedTensor("int8", (10,), payload, 0),  # no chunk size
        EncodedTensor("none", (10,), payload, 4096),  # wrong codec
        EncodedTensor("int8", (10,), np.float32(np.nan).tobytes() + payload[4:], 4096),
        EncodedTensor("int8", (10,), np.float32(-1).tobytes() + payload[4:], 4096),
        EncodedTensor("int8", (10,), payload[:4] + b"\x80" + payload[5:], 4096),  # -128
        EncodedTensor("int8", (1 << 40,), payload, 4096),  # huge claim, tiny payload
    ]
    for bad in cases:
        with pytest.raises(MalformedEncodingError):
            codec.decode(bad)


def test_decode_reads_read_only_buffers_without_warning() -> None:
    codec = get_codec("int8")
    enc = codec.encode(torch.randn(3, 7))
    frozen = EncodedTensor(enc.codec, enc.shape, bytes(enc.payload), enc.chunk_size)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        out = codec.decode(frozen)
    out += 1  # the result is writable
    assert out.shape == (3, 7)
