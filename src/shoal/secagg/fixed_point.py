"""Floats to and from the ring Z_(2^32), where masked sums are computed exactly.

A value is clipped to [-clip, clip], scaled by 2^frac_bits and rounded; the ring keeps
it modulo 2^32 (negatives wrap). A sum of n encodings decodes correctly while
n * clip * 2^frac_bits < 2^31; ``check_capacity`` refuses settings that could wrap.
Rounding error per value is at most 2^-(frac_bits+1).
"""

from __future__ import annotations

import torch

RING_BITS = 32
RING = 1 << RING_BITS
MASK = RING - 1


class RingOverflow(ValueError):
    """The settings let a sum of encodings wrap around the ring."""


def check_capacity(n: int, clip: float, frac_bits: int) -> None:
    if n < 1 or not clip > 0 or not 0 <= frac_bits < RING_BITS:
        raise ValueError(f"bad fixed-point settings n={n} clip={clip} frac_bits={frac_bits}")
    if n * clip * (1 << frac_bits) >= RING // 2:
        raise RingOverflow(
            f"{n} values of magnitude {clip} at 2^{frac_bits} scale can wrap a 2^{RING_BITS} ring"
        )


def encode(x: torch.Tensor, clip: float, frac_bits: int) -> torch.Tensor:
    """int64 tensor of ring elements in [0, 2^32)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot encode NaN/Inf")
    scaled = torch.round(x.double().clamp(-clip, clip) * float(1 << frac_bits))
    return scaled.to(torch.int64) & MASK


def decode(q: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Ring elements (any int64, reduced mod 2^32) back to fp32, read as signed."""
    r = q & MASK
    signed = torch.where(r >= RING // 2, r - RING, r)
    return (signed.double() / float(1 << frac_bits)).to(torch.float32)
