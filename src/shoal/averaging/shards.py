"""Which contiguous slice of the flat vector each group member owns.

Shard j of a vector of ``numel`` values split ``n`` ways is ``[lo, hi)``. The vector is
cut into ``align``-value units (the last one may be short) and the first
``units % n`` shards get one unit more than the rest. Every member computes the same
boundaries from the same three integers, so nothing about them is sent.

Why ``align``: a compressed all-reduce aligns shards to the codec's chunk grid. A peer
quantises its whole pseudo-gradient once, with error feedback, on chunks counted from
value 0; re-encoding a shard that starts mid-chunk would regroup the values under new
scales and lose more, outside what error feedback accounted for. On the same grid the
re-encode gives back the same bits.
"""

from __future__ import annotations


def shard_bounds(numel: int, n: int, align: int = 1) -> list[tuple[int, int]]:
    """``n`` contiguous ``(lo, hi)`` slices that tile ``range(numel)``; every ``lo`` is a
    multiple of ``align`` and the shards' unit counts differ by at most one."""
    if n < 1:
        raise ValueError(f"need at least one shard, got {n}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    base, extra = divmod(-(-numel // align), n)
    bounds = []
    lo = 0
    for j in range(n):
        hi = min(numel, lo + (base + (1 if j < extra else 0)) * align)
        bounds.append((lo, hi))
        lo = hi
    return bounds
