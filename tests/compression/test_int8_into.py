"""Int8Codec writing into caller buffers: same bits as the allocating path, checked sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.compression import EncodedTensor, MalformedEncodingError, NonFiniteTensorError
from shoal.compression.int8 import BLOCK_VALUES, Int8Codec, max_abs_error, payload_size


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
    factor = torch.from_numpy(np.float32(127) / a.numpy())  # IEEE fp32 division
    q = (full * factor[:, None]).round().clamp(-127, 127).to(torch.int8).reshape(-1)
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


def test_decode_formula_on_every_code_read_only_or_not() -> None:
    """decode is q * fp32(absmax / 127) (IEEE fp32 division), or fp32(q / 127) * absmax
    for a chunk whose absmax / 127 is subnormal or whose absmax is >= 2^127; read-only
    and writable payloads give the same bits, for all 255 codes."""
    codes = np.arange(-127, 128, dtype=np.int8)
    scales = np.array([1.0, 3.7e-3, 1.2e30, 1e-40, 2e-36, 3.4028235e38], dtype=np.float32)
    rows = len(scales)
    payload = scales.tobytes() + np.tile(codes, rows).tobytes()
    enc_ro = EncodedTensor("int8", (rows * 255,), payload, chunk_size=255)
    enc_rw = EncodedTensor("int8", (rows * 255,), bytearray(payload), chunk_size=255)
    codec = Int8Codec(chunk_size=255)
    got_ro, got_rw = codec.decode(enc_ro), codec.decode(enc_rw)
    q = np.tile(codes, (rows, 1)).astype(np.float32)
    with np.errstate(over="ignore"):  # the top row overflows: why it takes the other formula
        fast = q * (scales / np.float32(127))[:, None]
    slow = np.divide(q, np.float32(127), dtype=np.float32) * scales[:, None]
    edge = (scales < 127 * 2.0**-126) | (scales >= 2.0**127)
    expected = np.where(edge[:, None], slow, fast).reshape(-1)
    assert np.array_equal(got_ro.numpy(), expected)
    assert np.array_equal(got_rw.numpy(), expected)
    assert not np.array_equal(fast[3], slow[3])  # not vacuous: the subnormal row differs
    assert np.isinf(fast[5]).any() and np.isfinite(got_rw.numpy()).all()  # and the top one
    err = np.abs(slow[3].astype(np.float64) - codes * (1e-40 / 127))
    assert (err <= max_abs_error(np.float32(1e-40)) - 1e-40 / 127 / 2).all()


def test_tiny_scales_take_the_division_path_and_stay_in_bound() -> None:
    """127 / a overflows fp32 for a below ~7e-37: such chunks are quantised as x / a * 127
    (a block with one of them entirely), so codes stay in [-127, 127], within the bound."""
    rng = torch.Generator().manual_seed(4)
    x = torch.randn(4 * 4096, generator=rng)
    x[4096:8192] *= 1e-39  # subnormal chunk: 127 / a = inf
    x[8192:12288] = 0.0  # zero chunk next to it: factor 0, exact zeros
    codec = Int8Codec()
    enc = codec.encode(x)
    q = torch.frombuffer(bytearray(enc.payload), dtype=torch.int8, offset=16)
    assert int(q[4096:8192].abs().max()) == 127  # the chunk's absmax maps to +-127
    back = codec.decode(enc)
    assert torch.equal(back[8192:12288], torch.zeros(4096))
    err = (x.double() - back.double()).abs().reshape(-1, 4096).amax(1).numpy()
    absmax = x.abs().reshape(-1, 4096).amax(1).numpy()
    assert (err <= max_abs_error(absmax)).all()
    assert float(err[1]) > 0  # not vacuous: the subnormal chunk is actually quantised


def test_codes_never_leave_the_symmetric_range() -> None:
    """x * fp32(127 / a) can exceed 127 by a few ulps at x = +-a; rounding brings it back."""
    codec = Int8Codec()
    for seed in range(20):
        x = torch.randn(3 * 4096, generator=torch.Generator().manual_seed(seed)) * 10.0**seed
        q = torch.frombuffer(bytearray(codec.encode(x).payload), dtype=torch.int8, offset=12)
        assert int(q.abs().max()) == 127 and int(q.min()) >= -127


def test_accumulate_range_is_a_weighted_decode_up_to_rounding() -> None:
    """The reduce's fused path: acc = w * decode (first) then acc += w' * decode', a block
    at a time, within a few fp32 roundings of the exact weighted sum of decoded values;
    read-only payloads work too, bad ranges and scratch are refused."""
    codec = Int8Codec()
    n = BLOCK_VALUES + 3 * 4096 + 77  # a full block, whole chunks and a short tail
    xs = [torch.randn(n, generator=torch.Generator().manual_seed(s)) * (s + 1) for s in (5, 6)]
    encs = [codec.encode(xs[0]), codec.encode(xs[1])]
    encs[1] = EncodedTensor("int8", (n,), bytes(encs[1].payload), chunk_size=4096)  # read-only
    ws = [0.3, 0.7]
    acc = torch.full((n,), float("nan"))  # first=True must overwrite it
    scratch = torch.empty(n)
    for start, stop in [(0, BLOCK_VALUES), (BLOCK_VALUES, n)]:
        for i, (enc, w) in enumerate(zip(encs, ws, strict=True)):
            codec.accumulate_range(enc, start, stop, w, acc[start:stop], scratch, first=i == 0)
    exact = sum(w * codec.decode(e).double() for e, w in zip(encs, ws, strict=True))
    assert isinstance(exact, torch.Tensor)
    err = (acc.double() - exact).abs()
    assert float(err.max()) <= 4 * 2.0**-24 * float(exact.abs().max())
    with pytest.raises(ValueError, match="range"):
        codec.accumulate_range(encs[0], 1, 10, 1.0, acc[:9], scratch)
    with pytest.raises(ValueError, match="scratch"):
        codec.accumulate_range(encs[0], 0, 4096, 1.0, acc[:4096], torch.empty(100))
    with pytest.raises(ValueError, match="decode output"):
        codec.accumulate_range(encs[0], 0, 4096, 1.0, acc[:4095], scratch)
