"""Int8Codec writing into caller buffers: same bits as the allocating path, checked sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.compression import EncodedTensor, MalformedEncodingError, NonFiniteTensorError
from shoal.compression.int8 import BLOCK_VALUES, Int8Codec, payload_size


@pytest.mark.parametrize("numel", [0, 1, 4095, 4096, BLOCK_VALUES + 4097, 3 * BLOCK_VALUES])
def test_encode_and_decode_into_match_the_allocating_path(numel: int) -> None:
    codec = Int8Codec()
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    ref = codec.encode(x)
    out = bytearray(b"\xaa" * payload_size(numel))  # stale junk must be overwritten
    got = codec.encode(x, out=out)
    assert got.payload is out and bytes(out) == bytes(ref.payload)
    dest = torch.full((numel,), float("nan"))
    decoded = codec.decode(ref, out=dest)
    assert decoded.data_ptr() == dest.data_ptr() or numel == 0
    assert torch.equal(dest, codec.decode(ref))


def test_blockwise_codes_match_a_whole_shard_reference() -> None:
    """The block loop gives the codes the formula gives on the whole vector at once."""
    x = torch.randn(2 * BLOCK_VALUES + 100, generator=torch.Generator().manual_seed(1)) * 3
    payload = Int8Codec().encode(x).payload
    n_chunks = -(-x.numel() // 4096)
    full = x[: (x.numel() // 4096) * 4096].reshape(-1, 4096)
    a = full.abs().amax(dim=1)
    q = (full / a[:, None]).mul(127).round().clamp(-127, 127).to(torch.int8).reshape(-1)
    got_scales = torch.frombuffer(bytearray(payload), dtype=torch.float32, count=n_chunks)
    got_q = torch.frombuffer(bytearray(payload), dtype=torch.int8, offset=4 * n_chunks)
    assert torch.equal(got_scales[: a.numel()], a)
    assert torch.equal(got_q[: q.numel()], q)


def test_wrong_output_buffers_are_refused() -> None:
    codec = Int8Codec()
    x = torch.randn(5000)
    with pytest.raises(ValueError, match="writable"):
        codec.encode(x, out=bytearray(payload_size(5000) - 1))
    with pytest.raises(ValueError, match="writable"):
        codec.encode(x, out=bytes(payload_size(5000)))
    enc = codec.encode(x)
    for bad in (torch.empty(4999), torch.empty(5000, dtype=torch.float64), torch.empty(10000)[::2]):
        with pytest.raises(ValueError, match="decode output"):
            codec.decode(enc, out=bad)


def test_decode_into_still_rejects_bad_payloads() -> None:
    codec = Int8Codec()
    enc = codec.encode(torch.randn(100))
    raw = bytearray(enc.payload)
    raw[10] = 0x80  # -128 in the int8 area
    with pytest.raises(MalformedEncodingError):
        codec.decode(EncodedTensor("int8", (100,), raw, chunk_size=4096), out=torch.empty(100))


@pytest.mark.parametrize("numel", [0, 7, 4096 * 3 + 5, BLOCK_VALUES + 4097])
def test_roundtrip_is_decode_of_the_payload_even_in_place(numel: int) -> None:
    codec = Int8Codec()
    x = torch.randn(numel, generator=torch.Generator().manual_seed(2)) * 5
    back = torch.empty(numel)
    enc = codec.encode(x, roundtrip=back)
    assert torch.equal(back, codec.decode(enc))
    y = x.clone()
    enc2 = codec.encode(y, roundtrip=y)  # the owner's case: the shard becomes its decode
    assert bytes(enc2.payload) == bytes(enc.payload)
    assert torch.equal(y, back)


def test_decode_range_matches_slices_of_a_full_decode() -> None:
    codec = Int8Codec()
    x = torch.randn(3 * 4096 + 100, generator=torch.Generator().manual_seed(3))
    enc = codec.encode(x)
    full = codec.decode(enc)
    for start, stop in [(0, 4096), (4096, 3 * 4096 + 100), (8192, 8192), (0, x.numel())]:
        part = torch.empty(stop - start)
        codec.decode_range(enc, start, stop, part)
        assert torch.equal(part, full[start:stop])
    with pytest.raises(ValueError, match="range"):
        codec.decode_range(enc, 1, 10, torch.empty(9))
    with pytest.raises(ValueError, match="range"):
        codec.decode_range(enc, 0, x.numel() + 1, torch.empty(x.numel() + 1))


def test_check_rejects_what_decode_rejects() -> None:
    codec = Int8Codec()
    good = codec.encode(torch.randn(5000))
    codec.check(good)
    raw = bytearray(good.payload)
    raw[0:4] = torch.tensor([float("nan")]).numpy().tobytes()
    with pytest.raises(MalformedEncodingError, match="scale"):
        codec.check(EncodedTensor("int8", (5000,), raw, chunk_size=4096))
    with pytest.raises(MalformedEncodingError, match="bytes"):
        codec.check(EncodedTensor("int8", (5001,), good.payload, chunk_size=4096))


def test_non_finite_input_is_refused_by_the_free_scale_check() -> None:
    codec = Int8Codec()
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(10_000)
        x[7777] = bad
        with pytest.raises(NonFiniteTensorError, match="1 NaN/Inf"):
            codec.encode(x)


def test_torch_and_numpy_dequantize_agree_on_every_code() -> None:
    """decode takes a torch path for writable payloads and numpy for read-only ones;
    both must give the same bits (q / 127 as an IEEE fp32 division) for all 255 codes."""
    codes = np.arange(-127, 128, dtype=np.int8)
    scales = np.array([1.0, 3.7e-3, 1.2e30, 1e-40], dtype=np.float32)  # incl. subnormal
    payload = scales.tobytes() + np.tile(codes, 4)[: 4 * 255].tobytes()
    enc_ro = EncodedTensor("int8", (4 * 255,), payload, chunk_size=255)
    enc_rw = EncodedTensor("int8", (4 * 255,), bytearray(payload), chunk_size=255)
    codec = Int8Codec(chunk_size=255)
    got_ro, got_rw = codec.decode(enc_ro), codec.decode(enc_rw)
    expected = (np.divide(np.tile(codes, 4), np.float32(127), dtype=np.float32)).reshape(4, 255)
    expected = (expected * scales[:, None]).reshape(-1)
    assert np.array_equal(got_ro.numpy(), expected)
    assert np.array_equal(got_rw.numpy(), expected)
