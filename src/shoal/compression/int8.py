"""The `int8` codec: per-chunk absmax scaling, 4x smaller than fp32.

The flat tensor is cut into chunks of `chunk_size` values (the last may be short).
For each chunk, with a = max |x| and scale = a / 127, every value is sent as
q = round(x / scale), an int8 in [-127, 127]; the receiver computes q * scale.

Payload layout (little-endian): n_chunks fp32 absmax values, then numel int8 values.
So the cost is 1 byte per value plus 4 bytes per chunk (0.1% at 4096).

Worst-case error, per element (see `max_abs_error`):
    |x - decode(encode(x))| <= scale / 2          in exact arithmetic,
    <= scale * (1/2 + 2**-14) + 2**-149           with fp32 rounding included,
where the second term covers the two fp32 roundings on each side and the last the
subnormal grid. A chunk of zeros has a = 0 and decodes to exact zeros.
"""

from __future__ import annotations

import threading
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from shoal.compression.codec import (
    FLOAT32_LE,
    Buffer,
    EncodedTensor,
    MalformedEncodingError,
    check_shape,
    flat_float32,
    non_finite_error,
)

DEFAULT_CHUNK_SIZE = 4096
QMAX = 127  # symmetric: -128 is never produced, so it is rejected on decode
MAX_CHUNK_SIZE = 1 << 24  # bounds the per-chunk work an attacker can ask for
BLOCK_VALUES = 1 << 18  # values per encode/decode step: 1 MiB of fp32 stays in cache

_A = TypeVar("_A", torch.Tensor, npt.NDArray[np.float32], npt.NDArray[np.int8])


def max_abs_error(absmax: npt.NDArray[np.float32] | float) -> npt.NDArray[np.float64] | float:
    """Documented worst-case |x - decoded x| for a chunk whose largest |x| is `absmax`."""
    scale = np.asarray(absmax, dtype=np.float64) / QMAX
    bound = scale * (0.5 + 2.0**-14) + 2.0**-149
    return float(bound) if bound.ndim == 0 else bound


def _chunked(flat: _A, chunk: int) -> list[_A]:
    """2-D views (rows = chunks) over `flat`: the full chunks, then the short tail if any."""
    size = flat.shape[0]
    full = size // chunk
    views = [flat[: full * chunk].reshape(full, chunk)] if full else []
    if size % chunk:
        views.append(flat[full * chunk :].reshape(1, -1))
    return views


def _blocks(flat: _A, chunk: int) -> list[tuple[int, _A]]:
    """(first chunk index, 2-D rows) blocks of about BLOCK_VALUES values each.

    Working a block at a time keeps every pass in cache and the scratch small: a
    whole-shard pass per step was ~10x slower on a 16 MiB shard (measured).
    """
    rows_per_block = max(1, BLOCK_VALUES // chunk)
    out: list[tuple[int, _A]] = []
    row = 0
    for rows in _chunked(flat, chunk):
        for r0 in range(0, rows.shape[0], rows_per_block):
            out.append((row + r0, rows[r0 : r0 + rows_per_block]))
        row += rows.shape[0]
    return out


_SCRATCH = threading.local()
_MAX_SCRATCH_VALUES = 4 * BLOCK_VALUES


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


def payload_size(numel: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of an int8 payload for ``numel`` values."""
    return 4 * -(-numel // chunk_size) + numel


class Int8Codec:
    name = "int8"

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
        n_chunks = -(-flat.numel() // chunk)
        size = payload_size(flat.numel(), chunk)
        payload: Buffer = bytearray(size) if out is None else out
        view = memoryview(payload)
        if view.readonly or view.nbytes != size:
            raise ValueError(f"int8 output buffer must be {size} writable bytes")
        back = None if roundtrip is None else _float_view(roundtrip, flat.numel()).numpy()
        absmax_np = np.frombuffer(payload, dtype=FLOAT32_LE, count=n_chunks)
        q_np = np.frombuffer(payload, dtype=np.int8, offset=4 * n_chunks)
        absmax_out = torch.from_numpy(absmax_np)
        q_out = torch.from_numpy(q_np)
        one = torch.ones((), dtype=torch.float32)
        scratch = _scratch(min(flat.numel(), max(chunk, BLOCK_VALUES)))
        # torch ops, not numpy: vectorised, release the GIL, same bits.
        for row, rows in _blocks(flat, chunk):
            n = rows.shape[0]
            # max and -min instead of abs(): no temporary. "+ 0" turns the -0.0 of an
            # all-zero chunk into +0.0.
            a = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg()) + 0.0
            absmax_out[row : row + n] = a
            # x / a first keeps everything in [-1, 1]: x * (127 / a) would overflow
            # to Inf for subnormal a. A zero chunk divides by 1 and stays zero.
            safe = torch.where(a > 0, a, one)[:, None]
            scaled = scratch[: rows.numel()].view(rows.shape)
            torch.div(rows, safe, out=scaled)
            # round: half to even, as rint. No clamp: x <= a, so x / a <= 1 exactly
            # (correct rounding of a quotient <= 1) and the codes stay in [-127, 127].
            scaled.mul_(QMAX).round_()
            start, stop = row * chunk, row * chunk + rows.numel()
            q_out[start:stop].copy_(scaled.reshape(-1))
            if back is not None:  # after the reads of rows: roundtrip may alias tensor
                _dequantize(q_np[start:stop], absmax_np[row : row + n], back[start:stop], chunk)
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
        dest = _float_view(out, stop - start).numpy()
        c0 = start // chunk
        _dequantize(q[start:stop], absmax[c0 : c0 - (-(stop - start) // chunk)], dest, chunk)

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


def _float_view(out: torch.Tensor, numel: int) -> torch.Tensor:
    if (
        out.dtype != torch.float32
        or out.device.type != "cpu"
        or not out.is_contiguous()
        or out.numel() != numel
    ):
        raise ValueError(f"decode output must be a contiguous CPU fp32 tensor of {numel}")
    return out.view(-1)


def _dequantize(
    q: npt.NDArray[np.int8],
    absmax: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    chunk: int,
) -> None:
    """out = (q / 127) * scale of its chunk, in fp32: the one formula decode uses.

    In torch where it can (int8 -> fp32, then an IEEE fp32 division by 127: the same
    bits as numpy's, checked for all 255 codes by the tests; ~1.6x faster); numpy for
    a read-only payload, which torch would not wrap without copying it.
    """
    if not q.flags.writeable:
        for (row, rows), (_, q_rows) in zip(_blocks(out, chunk), _blocks(q, chunk), strict=True):
            n = rows.shape[0]
            np.divide(q_rows, np.float32(QMAX), out=rows, dtype=np.float32)
            rows *= absmax[row : row + n, None]
        return
    out_t, q_t, a_t = torch.from_numpy(out), torch.from_numpy(q), torch.from_numpy(absmax)
    for (row, dest), (_, codes) in zip(_blocks(out_t, chunk), _blocks(q_t, chunk), strict=True):
        dest.copy_(codes).div_(QMAX).mul_(a_t[row : row + dest.shape[0], None])
