"""Error feedback: whatever quantisation dropped this round is added back next round.

Without it, int8's rounding error is lost every round and biases training; with it,
the sum of what was sent tracks the sum of the true updates to within one round's
error (the residual), however many rounds pass. Each peer keeps one residual per
tensor it sends, keyed by name; the residual is peer-local state, never sent.
"""

from __future__ import annotations

import torch

from shoal.compression.codec import Codec, CompressionError, EncodedTensor, NonFiniteTensorError
from shoal.numerics import all_finite


class ErrorFeedback:
    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._residuals: dict[str, torch.Tensor] = {}

    def encode(self, key: str, tensor: torch.Tensor) -> EncodedTensor:
        """Encode `tensor` plus the residual left from the last call with this key."""
        # Checked before the residual is touched, so a bad tensor leaves the state intact.
        if not tensor.is_floating_point() or not all_finite(tensor):
            raise NonFiniteTensorError(f"update {key!r} is non-float or holds NaN/Inf")
        residual = self._residuals.get(key)
        if residual is not None and residual.shape != tensor.shape:
            raise CompressionError(
                f"update {key!r} changed shape {tuple(residual.shape)} -> {tuple(tensor.shape)}"
            )
        # corrected = tensor + residual, built in the residual's buffer (no new allocation).
        if residual is None:
            corrected = tensor.detach().to(device="cpu", dtype=torch.float32, copy=True)
        else:
            corrected = residual.add_(tensor.detach().to(device="cpu", dtype=torch.float32))
        encoded = self.codec.encode(corrected)
        # new residual = corrected - what the receivers will see.
        self._residuals[key] = corrected.sub_(self.codec.decode(encoded))
        return encoded

    def residual(self, key: str) -> torch.Tensor | None:
        return self._residuals.get(key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The residuals, for a checkpoint (they are local, so they are never sent)."""
        return {k: v.clone() for k, v in self._residuals.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._residuals = {k: v.detach().to(torch.float32).clone() for k, v in state.items()}

    def reset(self) -> None:
        self._residuals.clear()
