"""Int8Codec writing into caller buffers: same bits as the allocating path, checked sizes."""

from __future__ import annotations

import pytest
import torch

from shoal.compression import EncodedTensor, MalformedEncodingError
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
