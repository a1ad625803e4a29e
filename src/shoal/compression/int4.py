"""The `int4` codec: per-chunk absmax scaling, two values per byte, 8x smaller than fp32.

The same scheme as int8 (`int8.py`) with 15 levels instead of 255: for each chunk of
`chunk_size` values, with a = max |x| and scale = a / 7, a value is sent as
q = round(x / a * 7) in [-7, 7]; the receiver computes (q / 7) * a. Error feedback
(`error_feedback.py`) carries what the coarser grid drops into the next round, which is
what makes 4 bits enough for DiLoCo's pseudo-gradients (Streaming DiLoCo sends 4-bit).

Chunks are 256 values (`DEFAULT_CHUNK_SIZE`). Payload layout (little-endian): n_chunks
fp32 absmax values, then ceil(numel / 2) bytes.
Byte i holds value 2i in its low nibble and value 2i + 1 in its high nibble, each as
q + 8, so nibbles are in [1, 15]. Nibble 0 (q = -8) is never produced and is rejected
on decode, as is an odd tail's padding nibble unless it is 8 (q = 0): one payload per
tensor, nothing hidden in spare bits.

Worst-case error, per element (`max_abs_error`): scale / 2 in exact arithmetic, plus the
fp32 roundings on each side, bounded as for int8.
"""

from __future__ import annotations

from collections.abc import Callable

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

# Even, so no chunk but the last splits a byte. 256, not int8's 4096: with 15 levels one
# scale per 4096 values rounds most of a heavy-tailed update to 0; at 256 the scales
# cost 3% more bytes and DiLoCo's loss recovers most of what int4 lost against int8
# (docs/BENCHMARKS.md, in-process H = 400: 1.1734 -> 1.1442, int8 1.1380).
DEFAULT_CHUNK_SIZE = 256
QMAX = 7
OFFSET = 8  # nibble = q + OFFSET: [1, 15]; 0 is never emitted
MAX_CHUNK_SIZE = 1 << 24  # bounds the per-chunk work an attacker can ask for
BLOCK_CHUNKS_VALUES = 1 << 18  # values per encode/decode step: 1 MiB of fp32 stays in cache


def max_abs_error(absmax: npt.NDArray[np.float32] | float) -> npt.NDArray[np.float64] | float:
    """Documented worst-case |x - decoded x| for a chunk whose largest |x| is `absmax`."""
    return absmax_error_bound(absmax, QMAX)


def payload_size(numel: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes of an int4 payload for ``numel`` values."""
    return 4 * -(-numel // chunk_size) + -(-numel // 2)


class Int4Codec:
    name = "int4"
    entropy_coded = False  # int4z (int4z.py) is this codec, entropy-coded on the wire

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 2 <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 2:
            raise ValueError(f"chunk_size must be even and in [2, {MAX_CHUNK_SIZE}]")
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
        ``decode(result)``, bit for bit (the all-reduce's owner keeps what it sends).
        """
        flat = torch.from_numpy(flat_float32(tensor, check_finite=False))
        numel, chunk = flat.numel(), self.chunk_size
        n_chunks = -(-numel // chunk)
        size = payload_size(numel, chunk)
        payload: Buffer = bytearray(size) if out is None else out
        view = memoryview(payload)
        if view.readonly or view.nbytes != size:
            raise ValueError(f"int4 output buffer must be {size} writable bytes")
        absmax = torch.from_numpy(np.frombuffer(payload, dtype=FLOAT32_LE, count=n_chunks))
        packed = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8, offset=4 * n_chunks))
        one = torch.ones((), dtype=torch.float32)
        step = max(chunk, BLOCK_CHUNKS_VALUES // chunk * chunk)
        for lo in range(0, numel, step):
            block = flat[lo : lo + step]
            rows = _rows(block, chunk)
            c0 = lo // chunk
            # "+ 0.0" turns an all-zero chunk's -0.0 into +0.0; NaN propagates, Inf stays.
            a = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg()) + 0.0
            absmax[c0 : c0 + a.numel()] = a
            safe = torch.where(a > 0, a, one)
            codes = _per_chunk(block, safe, chunk, torch.div)
            # x / a <= 1 exactly, so no clamp is needed: codes stay in [-7, 7].
            nibbles = codes.mul_(QMAX).round_().add_(OFFSET).to(torch.uint8)
            if nibbles.numel() % 2:  # only the tensor's last block can be odd
                nibbles = torch.cat([nibbles, torch.tensor([OFFSET], dtype=torch.uint8)])
            pairs = nibbles.view(-1, 2)
            dest = packed[lo // 2 : lo // 2 + pairs.shape[0]]
            torch.mul(pairs[:, 1], 16, out=dest).add_(pairs[:, 0])
        # amax/amin propagate NaN and Inf gives an Inf scale: the scales are the check.
        if n_chunks and not bool(torch.isfinite(absmax).all()):
            raise non_finite_error(flat)
        encoded = EncodedTensor(self.name, tuple(tensor.shape), payload, chunk_size=chunk)
        if roundtrip is not None:  # after every read of tensor: roundtrip may alias it
            self.decode_range(encoded, 0, numel, roundtrip)
        return encoded

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
        (``acc = ...`` if ``first``): the all-reduce's weighted sum, as for int8.
        ``scratch`` is fp32 with at least ``stop - start`` values."""
        if scratch.dtype != torch.float32 or scratch.numel() < stop - start:
            raise ValueError(f"scratch must be fp32 with at least {stop - start} values")
        if acc.numel() != stop - start:
            raise ValueError(f"acc must hold {stop - start} values")
        values = scratch[: stop - start]
        self.decode_range(encoded, start, stop, values)
        if first:
            torch.mul(values, weight, out=acc.view(-1))
        else:
            acc.view(-1).add_(values, alpha=weight)

    def check(self, encoded: EncodedTensor) -> None:
        """Everything decode checks about an untrusted payload: raises
        MalformedEncodingError. A payload that passes decodes to finite values only."""
        absmax, packed, numel = self._views(encoded)
        if not (np.isfinite(absmax).all() and (absmax >= 0).all()):
            raise MalformedEncodingError("int4 payload has a negative or non-finite scale")
        if packed.size:
            low_zero = not (packed & 0x0F).all()
            if low_zero or not (packed >> 4).all():
                raise MalformedEncodingError("int4 payload holds nibble 0 (q = -8), never emitted")
            if numel % 2 and packed[-1] >> 4 != OFFSET:
                raise MalformedEncodingError("int4 payload's padding nibble is not zero (8)")

    def decode(self, encoded: EncodedTensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode (untrusted payload); into ``out`` (contiguous fp32 of the right numel)."""
        self.check(encoded)
        numel = check_shape(encoded.shape)
        result = torch.empty(numel, dtype=torch.float32) if out is None else out
        self.decode_range(encoded, 0, numel, result)
        return result.reshape(encoded.shape)

    def decode_range(
        self, encoded: EncodedTensor, start: int, stop: int, out: torch.Tensor
    ) -> None:
        """Values ``[start, stop)`` of a payload that passed `check` into ``out``.
        ``start`` is a multiple of the chunk size (so it is even)."""
        absmax, packed, numel = self._views(encoded)
        chunk = encoded.chunk_size
        if not (0 <= start <= stop <= numel) or start % chunk:
            raise ValueError(f"bad decode range [{start}, {stop}) of {numel} values")
        dest_all = float_output(out, stop - start)
        scales = torch.from_numpy(absmax.copy() if not absmax.flags.writeable else absmax)
        step = max(chunk, BLOCK_CHUNKS_VALUES // chunk * chunk)
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            raw = packed[lo // 2 : -(-hi // 2)]
            src = torch.from_numpy(raw if raw.flags.writeable else raw.copy())
            values = torch.stack([src & 0x0F, src >> 4], dim=1).view(-1)[: hi - lo]
            dest = dest_all[lo - start : hi - start]
            dest.copy_(values).sub_(OFFSET).div_(QMAX)
            c0 = lo // chunk
            _per_chunk(dest, scales[c0 : -(-hi // chunk)], chunk, torch.mul, out=dest)

    def _views(
        self, encoded: EncodedTensor
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], int]:
        """(scales, packed codes, numel) as views over the payload, after the size checks."""
        if encoded.codec != self.name:
            raise MalformedEncodingError(f"{self.name} codec got a {encoded.codec!r} payload")
        chunk = encoded.chunk_size
        if not 2 <= chunk <= MAX_CHUNK_SIZE or chunk % 2:
            raise MalformedEncodingError(f"bad int4 chunk_size {chunk}")
        numel = check_shape(encoded.shape)
        n_chunks = -(-numel // chunk)
        expected = payload_size(numel, chunk)
        if encoded.nbytes != expected:
            raise MalformedEncodingError(
                f"int4 payload of {encoded.nbytes} bytes; {numel} values in chunks of "
                f"{chunk} need {expected}"
            )
        absmax = np.frombuffer(encoded.payload, dtype=FLOAT32_LE, count=n_chunks)
        packed = np.frombuffer(encoded.payload, dtype=np.uint8, offset=4 * n_chunks)
        return absmax, packed, numel


def _rows(block: torch.Tensor, chunk: int) -> torch.Tensor:
    """The block as rows of one chunk each (the last row padded with zeros if short)."""
    full = block.numel() // chunk
    if block.numel() % chunk == 0:
        return block.view(full, chunk)
    padded = torch.zeros((full + 1) * chunk, dtype=block.dtype)
    padded[: block.numel()] = block
    return padded.view(full + 1, chunk)


def _per_chunk(
    block: torch.Tensor,
    per_row: torch.Tensor,
    chunk: int,
    op: Callable[..., torch.Tensor],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``op(value, per_row[its chunk])`` for every value of the block, flat."""
    full = block.numel() // chunk
    result = torch.empty_like(block) if out is None else out
    if full:
        body = block[: full * chunk].view(full, chunk)
        op(body, per_row[:full, None], out=result[: full * chunk].view(full, chunk))
    if block.numel() % chunk:
        tail = block[full * chunk :]
        op(tail, per_row[full], out=result[full * chunk :])
    return result
