"""The `int8` codec: per-chunk absmax scaling, 4x smaller than fp32.

The flat tensor is cut into chunks of `chunk_size` values (the last may be short).
For each chunk, with a = max |x| and scale = a / 127, every value is sent as
q = round(x * fp32(127 / a)) ~= x / scale, an int8 in [-127, 127]; the receiver
computes q * fp32(a / 127) in fp32 (that formula, exactly, since members must agree
on the bits), except for a chunk at either end of the fp32 range (a < 127 * 2**-126,
where a / 127 is subnormal, or a >= 2**127, where 127 * fp32(a / 127) can round past
the largest float), which decodes as fp32(q / 127) * a so as to stay within the bound
below.

Payload layout (little-endian): n_chunks fp32 absmax values, then numel int8 values.
So the cost is 1 byte per value plus 4 bytes per chunk (0.1% at 4096).

Worst-case error, per element (see `max_abs_error`):
    |x - decode(encode(x))| <= scale / 2          in exact arithmetic,
    <= scale * (1/2 + 2**-14) + 2**-149           with fp32 rounding included,
where the second term covers the two fp32 roundings on each side (~2**-15.1 of
scale for the encoder's factor and product, as much for the decoder's) and the last
the subnormal grid. A chunk of zeros has a = 0 and decodes to exact zeros.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import torch

from shoal.compression.codec import (
    FLOAT32_LE,
    Buffer,
    EncodedTensor,
    MalformedEncodingError,
    absmax_error_bound,
    check_shape,
    flat_float32,
    float_output,
    non_finite_error,
)

DEFAULT_CHUNK_SIZE = 4096
QMAX = 127  # symmetric: -128 is never produced, so it is rejected on decode
MAX_CHUNK_SIZE = 1 << 24  # bounds the per-chunk work an attacker can ask for
# Chunks with absmax outside [_MIN, _MAX) decode by the slower formula: below, absmax / 127
# is a subnormal fp32; from _MAX on, q * fp32(absmax / 127) may overflow. See the docstring.
_MIN_FAST_DECODE_ABSMAX = QMAX * 2.0**-126
_MAX_FAST_DECODE_ABSMAX = 2.0**127
BLOCK_VALUES = 1 << 19  # values per encode/decode step: 2 MiB of fp32, in cache


def max_abs_error(absmax: npt.NDArray[np.float32] | float) -> npt.NDArray[np.float64] | float:
    """Documented worst-case |x - decoded x| for a chunk whose largest |x| is `absmax`."""
    return absmax_error_bound(absmax, QMAX)


def _spans(numel: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) value ranges of about BLOCK_VALUES each, on chunk boundaries; the
    short tail chunk, if any, is a span of its own.

    Working a block at a time keeps every pass in cache and the scratch small: a
    whole-shard pass per step was ~10x slower on a 16 MiB shard (measured).
    """
    full = numel - numel % chunk
    step = max(1, BLOCK_VALUES // chunk) * chunk
    spans = [(v0, min(full, v0 + step)) for v0 in range(0, full, step)]
    if full < numel:
        spans.append((full, numel))
    return spans


def _rows(flat: torch.Tensor, start: int, stop: int, chunk: int) -> torch.Tensor:
    """Values [start, stop) of a span as a 2-D view, one row per chunk."""
    return flat[start:stop].view(-1, min(chunk, stop - start))


_SCRATCH = threading.local()
_MAX_SCRATCH_VALUES = 4 * BLOCK_VALUES
_INF = float("inf")


def _scratch(values: int) -> torch.Tensor:
    """A per-thread fp32 scratch of at least ``values`` (reused: a fresh MiB costs page
    faults on every call)."""
    if values > _MAX_SCRATCH_VALUES:  # a huge chunk_size: do not keep that much around
        return torch.empty(values, dtype=torch.float32)
    buf: torch.Tensor | None = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < values:
        buf = torch.empty(values, dtype=torch.float32)
        _SCRATCH.buf = buf
    return buf[:values]


def _quantize(rows: torch.Tensor, absmax: torch.Tensor, codes: torch.Tensor) -> None:
    """One span: each row's absmax into ``absmax``, its codes into ``codes`` (same
    shape as ``rows``, int8)."""
    # max and -min instead of abs(): no temporary. "+ 0" turns the -0.0 of an all-zero
    # chunk into +0.0.
    a = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg()) + 0.0
    absmax.copy_(a)
    # q = round(x * fp32(127 / a)): one multiply per value instead of x / a * 127. A zero
    # chunk gets factor 0 (127 / inf). |x| <= a, so |x * fp32(127 / a)| is at most
    # 127 (1 + 2^-24)^2 < 127.5 and the codes stay in [-127, 127]; the extra rounding
    # of the factor is ~2^-24 relative, well inside the documented bound.
    inv = torch.div(QMAX, torch.where(a > 0, a, _INF))
    scaled = _scratch(rows.numel()).view(rows.shape)
    if bool(inv.isinf().any()):
        # 127 / a overflowed: a < ~7e-37 (subnormal-sized data). x / a stays in [-1, 1].
        torch.div(rows, torch.where(a > 0, a, 1.0)[:, None], out=scaled).mul_(QMAX)
    else:
        torch.mul(rows, inv[:, None], out=scaled)
    # round: half to even, as rint; then an exact conversion of small integers.
    codes.copy_(scaled.round_())


def _dequantize_rows(
    codes: torch.Tensor, absmax: npt.NDArray[np.float32], out: torch.Tensor
) -> None:
    """One span: out = q * fp32(absmax / 127) of its row (IEEE fp32 division, then
    int8 -> fp32 and one multiply per value), the formula every decode uses. Two passes
    over the values; (q / 127) * absmax took three. Rows at the ends of the fp32 range
    (see the module docstring) are redone as fp32(q / 127) * absmax. The per-row
    numbers are worked in numpy: torch ops on a few hundred values cost several times
    more (and each releases and retakes the GIL)."""
    scale = np.divide(absmax, np.float32(QMAX))
    out.copy_(codes).mul_(torch.from_numpy(scale)[:, None])
    edge = np.flatnonzero((absmax < _MIN_FAST_DECODE_ABSMAX) | (absmax >= _MAX_FAST_DECODE_ABSMAX))
    for r in edge.tolist():  # subnormal- or huge-sized data only
        out[r].copy_(codes[r]).div_(QMAX).mul_(float(absmax[r]))


def payload_size(numel: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of an int8 payload for ``numel`` values."""
    return 4 * -(-numel // chunk_size) + numel


class Int8Codec:
    name = "int8"
    entropy_coded = False

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
        self.chunk_size = chunk_size

    def encode(
        self,
        tensor: torch.Tensor,
        out: Buffer | None = None,
        *,
        roundtrip: torch.Tensor | None = None,
    ) -> EncodedTensor:
        """Encode ``tensor``; into ``out`` (writable, exactly the payload size) if given.

        ``roundtrip`` (contiguous fp32, same numel, may be ``tensor`` itself) receives
        ``decode(result)``, bit for bit, computed while each block is still in cache.
        """
        flat = torch.from_numpy(flat_float32(tensor, check_finite=False))
        chunk = self.chunk_size
        numel = flat.numel()
        n_chunks = -(-numel // chunk)
        size = payload_size(numel, chunk)
        payload: Buffer = bytearray(size) if out is None else out
        view = memoryview(payload)
        if view.readonly or view.nbytes != size:
            raise ValueError(f"int8 output buffer must be {size} writable bytes")
        back = None if roundtrip is None else float_output(roundtrip, numel)
        absmax_np = np.frombuffer(payload, dtype=FLOAT32_LE, count=n_chunks)
        absmax_out = torch.from_numpy(absmax_np)
        q_out = torch.from_numpy(np.frombuffer(payload, dtype=np.int8, offset=4 * n_chunks))
        # torch ops, not numpy: vectorised, release the GIL, same bits.
        for start, stop in _spans(numel, chunk):
            c0, c1 = start // chunk, -(-stop // chunk)
            codes = _rows(q_out, start, stop, chunk)
            _quantize(_rows(flat, start, stop, chunk), absmax_out[c0:c1], codes)
            if back is not None:  # after the reads of flat: roundtrip may alias tensor
                _dequantize_rows(codes, absmax_np[c0:c1], _rows(back, start, stop, chunk))
        # amax/amin/maximum propagate NaN and Inf gives an Inf scale: checking the
        # n_chunks scales is the finite check of the whole input, for free.
        if n_chunks and not bool(torch.isfinite(absmax_out).all()):
            raise non_finite_error(flat)
        return EncodedTensor(self.name, tuple(tensor.shape), payload, chunk_size=chunk)

    def check(self, encoded: EncodedTensor) -> None:
        """Everything decode checks about an untrusted payload, without decoding it:
        raises MalformedEncodingError. A payload that passes decodes to finite values
        only (|value| <= its chunk's scale), so it needs no NaN/Inf scan afterwards."""
        absmax, q = self._views(encoded)
        if not (np.isfinite(absmax).all() and (absmax >= 0).all()):
            raise MalformedEncodingError("int8 payload has a negative or non-finite scale")
        if q.size and q.min() < -QMAX:
            raise MalformedEncodingError("int8 payload holds -128, which the encoder never emits")

    def decode(self, encoded: EncodedTensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode (untrusted payload); into ``out`` (contiguous fp32 of the right numel)
        if given. If it raises, ``out`` may hold part of the values: discard it."""
        self.check(encoded)
        numel = check_shape(encoded.shape)
        result = torch.empty(numel, dtype=torch.float32) if out is None else out
        self.decode_range(encoded, 0, numel, result)
        return result.reshape(encoded.shape)

    def decode_range(
        self, encoded: EncodedTensor, start: int, stop: int, out: torch.Tensor
    ) -> None:
        """Values ``[start, stop)`` of a payload that passed `check` into ``out``.
        ``start`` is a multiple of the chunk size (a block of a bigger reduce)."""
        absmax, q = self._views(encoded)
        chunk = encoded.chunk_size
        if not (0 <= start <= stop <= q.size) or start % chunk:
            raise ValueError(f"bad decode range [{start}, {stop}) of {q.size} values")
        dest = float_output(out, stop - start)
        c0, c1 = start // chunk, -(-stop // chunk)
        _dequantize(q[start:stop], absmax[c0:c1], dest, chunk)

    def accumulate_range(
        self,
        encoded: EncodedTensor,
        start: int,
        stop: int,
        weight: float,
        acc: torch.Tensor,
        scratch: torch.Tensor,
        *,
        first: bool = False,
    ) -> None:
        """``acc += weight * values[start, stop)`` of a payload that passed `check`
        (``acc = ...`` if ``first``), for a weighted sum. ``start`` is a multiple of the
        chunk size; ``scratch`` is fp32 with at least ``stop - start`` values.

        Each value is q * fp32(absmax * weight / 127): one widening copy and one fused
        multiply-add per value, where ``weight * decode()`` would take five passes. So
        the bits differ from that by a rounding or two (the reduce needs no exact
        decode: only the owner computes the sum, and everyone gets its bytes).
        """
        absmax, q = self._views(encoded)
        chunk = encoded.chunk_size
        if not (0 <= start <= stop <= q.size) or start % chunk:
            raise ValueError(f"bad accumulate range [{start}, {stop}) of {q.size} values")
        dest = float_output(acc, stop - start)
        if scratch.dtype != torch.float32 or scratch.numel() < stop - start:
            raise ValueError(f"scratch must be fp32 with at least {stop - start} values")
        c0, c1 = start // chunk, -(-stop // chunk)
        factor = torch.from_numpy((absmax[c0:c1] * np.float64(weight / QMAX)).astype(np.float32))
        block = q[start:stop]
        codes = torch.from_numpy(block if block.flags.writeable else block.copy())
        for s0, s1 in _spans(stop - start, chunk):
            f = factor[s0 // chunk : -(-s1 // chunk), None]
            wide = _rows(scratch, s0, s1, chunk).copy_(_rows(codes, s0, s1, chunk))
            rows = _rows(dest, s0, s1, chunk)
            if first:
                torch.mul(wide, f, out=rows)
            else:
                rows.addcmul_(wide, f)

    def _views(
        self, encoded: EncodedTensor
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
        """(scales, codes) as views over the payload, after the size checks."""
        if encoded.codec != self.name:
            raise MalformedEncodingError(f"{self.name} codec got a {encoded.codec!r} payload")
        chunk = encoded.chunk_size
        if not 1 <= chunk <= MAX_CHUNK_SIZE:
            raise MalformedEncodingError(f"bad int8 chunk_size {chunk}")
        numel = check_shape(encoded.shape)
        n_chunks = -(-numel // chunk)
        expected = 4 * n_chunks + numel
        if encoded.nbytes != expected:
            raise MalformedEncodingError(
                f"int8 payload of {encoded.nbytes} bytes; {numel} values in chunks of "
                f"{chunk} need {expected}"
            )
        # Views straight over the (possibly read-only) payload: no copy of the input.
        absmax = np.frombuffer(encoded.payload, dtype=FLOAT32_LE, count=n_chunks)
        q = np.frombuffer(encoded.payload, dtype=np.int8, offset=4 * n_chunks)
        return absmax, q


def _dequantize(
    q: npt.NDArray[np.int8],
    absmax: npt.NDArray[np.float32],
    out: torch.Tensor,
    chunk: int,
) -> None:
    """out = the decoded values (see _dequantize_rows), a span at a time. A read-only
    payload, which torch would not wrap without a warning, is copied a span at a time."""
    for start, stop in _spans(q.size, chunk):
        c0, c1 = start // chunk, -(-stop // chunk)
        span = q[start:stop]
        codes = torch.from_numpy(span if span.flags.writeable else span.copy())
        _dequantize_rows(
            _rows(codes, 0, stop - start, chunk), absmax[c0:c1], _rows(out, start, stop, chunk)
        )
