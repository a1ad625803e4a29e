"""The codec interface every pseudo-gradient compressor implements.

A codec turns a float tensor into an `EncodedTensor`: one bytes-like payload (what
goes on the wire, streamed in chunks by the transport) plus the few numbers needed to
read it back. `decode` treats the payload as untrusted: a payload whose length does
not match its metadata, or that decodes to NaN/Inf, raises instead of returning junk.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from shoal.numerics import all_finite

# Every multi-byte number in a payload is little-endian, whatever the host is.
FLOAT32_LE = np.dtype("<f4")

Buffer = bytes | bytearray | memoryview


class CompressionError(ValueError):
    """A tensor cannot be encoded, or a payload cannot be decoded."""


class NonFiniteTensorError(CompressionError):
    """The tensor holds NaN or Inf; encoding it would poison every peer's model."""


class MalformedEncodingError(CompressionError):
    """The payload does not match its metadata (wrong length, bad scale, bad value)."""


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """A compressed tensor: `payload` is the wire bytes, the rest says how to read it."""

    codec: str
    shape: tuple[int, ...]
    payload: Buffer
    chunk_size: int = 0  # values per scale block; 0 for codecs without blocks

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return memoryview(self.payload).nbytes


@runtime_checkable
class Codec(Protocol):
    name: str
    entropy_coded: bool  # the wire carries entropy.pack(payload), not the payload

    def encode(self, tensor: torch.Tensor) -> EncodedTensor: ...

    def decode(self, encoded: EncodedTensor) -> torch.Tensor: ...


def flat_float32(tensor: torch.Tensor, *, check_finite: bool = True) -> npt.NDArray[np.float32]:
    """A flat fp32 numpy view of `tensor`; copies only if it is not already CPU fp32 contiguous.

    Raises NonFiniteTensorError on NaN/Inf, so no codec ever sees them. A codec that
    detects them itself on the way (int8: a NaN/Inf makes its chunk's scale non-finite)
    passes ``check_finite=False`` and must call `non_finite_error` when it does.
    """
    if not tensor.is_floating_point():
        raise CompressionError(f"codecs take floating-point tensors, got {tensor.dtype}")
    flat = tensor.detach().to(device="cpu", dtype=torch.float32).reshape(-1).contiguous()
    if check_finite and not all_finite(flat):
        raise non_finite_error(flat)
    if sys.byteorder != "little":  # numpy view below would be big-endian
        return flat.numpy().astype(FLOAT32_LE)
    array: npt.NDArray[np.float32] = flat.numpy()
    return array


def non_finite_error(flat: torch.Tensor) -> NonFiniteTensorError:
    """The error for a tensor known to hold NaN/Inf (counts them: error path only)."""
    bad = int((~torch.isfinite(flat)).sum())
    return NonFiniteTensorError(f"tensor has {bad} NaN/Inf value(s) of {flat.numel()}")


def absmax_error_bound(
    absmax: npt.NDArray[np.float32] | float, qmax: int
) -> npt.NDArray[np.float64] | float:
    """Worst-case |x - decoded x| of an absmax codec with codes in [-qmax, qmax], for a
    chunk whose largest |x| is `absmax`: half a step, plus the fp32 roundings on each
    side (2**-14 of a step) and the subnormal grid."""
    scale = np.asarray(absmax, dtype=np.float64) / qmax
    bound = scale * (0.5 + 2.0**-14) + 2.0**-149
    return float(bound) if bound.ndim == 0 else bound


def float_output(out: torch.Tensor, numel: int) -> torch.Tensor:
    """``out`` as a flat view, if it is a contiguous CPU fp32 tensor of ``numel`` values."""
    if (
        out.dtype != torch.float32
        or out.device.type != "cpu"
        or not out.is_contiguous()
        or out.numel() != numel
    ):
        raise ValueError(f"decode output must be a contiguous CPU fp32 tensor of {numel}")
    return out.view(-1)


def check_shape(shape: tuple[int, ...]) -> int:
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise MalformedEncodingError(f"bad shape {shape!r}")
    return math.prod(shape)


def get_codec(name: str) -> Codec:
    """The codec registered under `name` ("none" for fp32, "int8", "int4", "int4z")."""
    # Imported here: codec modules import this one.
    from shoal.compression.fp32 import Fp32Codec
    from shoal.compression.int4 import Int4Codec
    from shoal.compression.int4z import Int4ZCodec
    from shoal.compression.int8 import Int8Codec

    codecs: dict[str, type[Fp32Codec] | type[Int8Codec] | type[Int4Codec]] = {
        Fp32Codec.name: Fp32Codec,
        Int8Codec.name: Int8Codec,
        Int4Codec.name: Int4Codec,
        Int4ZCodec.name: Int4ZCodec,
    }
    if name not in codecs:
        raise ValueError(f"unknown codec {name!r}; known: {sorted(codecs)}")
    return codecs[name]()
