"""Which contiguous slice of the flat vector each group member owns.

Shard j of a vector of ``numel`` values split ``n`` ways is ``[lo, hi)`` with the first
``numel % n`` shards one value longer than the rest. Every member computes the same
boundaries from the same two integers, so nothing about them is sent.
"""

from __future__ import annotations


def shard_bounds(numel: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ``(lo, hi)`` slices that tile ``range(numel)``, sizes differing by <= 1."""
    if n < 1:
        raise ValueError(f"need at least one shard, got {n}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    base, extra = divmod(numel, n)
    bounds = []
    lo = 0
    for j in range(n):
        hi = lo + base + (1 if j < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds
