"""The `none` codec: raw little-endian fp32. The baseline every other codec is measured by."""

from __future__ import annotations

import numpy as np
import torch

from shoal.compression.codec import (
    FLOAT32_LE,
    EncodedTensor,
    MalformedEncodingError,
    NonFiniteTensorError,
    check_shape,
    flat_float32,
)


class Fp32Codec:
    name = "none"
    entropy_coded = False

    def encode(self, tensor: torch.Tensor) -> EncodedTensor:
        flat = flat_float32(tensor)
        # One copy, on purpose: a payload that aliased the tensor would change under the
        # sender's feet when the tensor is updated in place (ErrorFeedback does exactly that).
        return EncodedTensor(self.name, tuple(tensor.shape), flat.tobytes())

    def decode(self, encoded: EncodedTensor) -> torch.Tensor:
        if encoded.codec != self.name:
            raise MalformedEncodingError(f"{self.name} codec got a {encoded.codec!r} payload")
        numel = check_shape(encoded.shape)
        if encoded.nbytes != 4 * numel:
            raise MalformedEncodingError(
                f"fp32 payload of {encoded.nbytes} bytes for {numel} values"
            )
        values = np.frombuffer(encoded.payload, dtype=FLOAT32_LE, count=numel)
        if not np.isfinite(values).all():
            raise NonFiniteTensorError("fp32 payload holds NaN/Inf")
        # One copy: the payload may be read-only, the result must be a writable tensor.
        out = torch.from_numpy(values.astype(np.float32, copy=True))
        return out.reshape(encoded.shape)
