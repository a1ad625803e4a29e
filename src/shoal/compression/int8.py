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

from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from shoal.compression.codec import (
    FLOAT32_LE,
    EncodedTensor,
    MalformedEncodingError,
    check_shape,
    flat_float32,
)

DEFAULT_CHUNK_SIZE = 4096
QMAX = 127  # symmetric: -128 is never produced, so it is rejected on decode
MAX_CHUNK_SIZE = 1 << 24  # bounds the per-chunk work an attacker can ask for

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


class Int8Codec:
    name = "int8"

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
        self.chunk_size = chunk_size

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        flat = torch.from_numpy(flat_float32(tensor))
        chunk = self.chunk_size
        n_chunks = -(-flat.numel() // chunk)
        payload = bytearray(4 * n_chunks + flat.numel())
        absmax_out = torch.from_numpy(np.frombuffer(payload, dtype=FLOAT32_LE, count=n_chunks))
        q_out = torch.from_numpy(np.frombuffer(payload, dtype=np.int8, offset=4 * n_chunks))
        row = 0
        # torch ops, not numpy: vectorised and ~7x faster on a 16 MiB shard, same bits.
        for rows in _chunked(flat, chunk):
            n = rows.shape[0]
            # max and -min instead of abs(): no full-size temporary. "+ 0" turns the
            # -0.0 of an all-zero chunk into +0.0.
            a = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg()) + 0.0
            absmax_out[row : row + n] = a
            # x / a first keeps everything in [-1, 1]: x * (127 / a) would overflow
            # to Inf for subnormal a. A zero chunk divides by 1 and stays zero.
            safe = torch.where(a > 0, a, torch.ones((), dtype=torch.float32))[:, None]
            scaled = rows / safe
            scaled.mul_(QMAX).round_().clamp_(-QMAX, QMAX)  # round: half to even, as rint
            start = row * chunk
            q_out[start : start + rows.numel()] = scaled.reshape(-1)
            row += n
        return EncodedTensor(self.name, tuple(tensor.shape), payload, chunk_size=chunk)

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
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
        if not (np.isfinite(absmax).all() and (absmax >= 0).all()):
            raise MalformedEncodingError("int8 payload has a negative or non-finite scale")
        if numel and q.min() < -QMAX:
            raise MalformedEncodingError("int8 payload holds -128, which the encoder never emits")
        out = np.empty(numel, dtype=np.float32)
        row = 0
        for rows, q_rows in zip(_chunked(out, chunk), _chunked(q, chunk), strict=True):
            n = rows.shape[0]
            np.divide(q_rows, np.float32(QMAX), out=rows, dtype=np.float32)
            rows *= absmax[row : row + n, None]
            row += n
        return torch.from_numpy(out).reshape(encoded.shape)
