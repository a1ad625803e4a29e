"""Coordinate-wise trimmed mean: drop the ``b`` largest and ``b`` smallest values of each
coordinate, average the rest.

Trade-off: tolerates up to ``b`` arbitrary peers and is less noisy than the median with
honest peers, but ``b`` must be set to the number of attackers one expects (too small
and an attacker gets through; too large and it becomes the median), it ignores sample
weights, and like the median it is open to ALIE-style coordinated shifts.
Cost: as the median (a per-coordinate sort), O(n log n k) time, n k extra memory.
Fits reduce-scatter directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from shoal.aggregation.base import AggregationError, GlobalSum, ordered_mean, present, whole_vector


class TrimmedMean:
    name = "trimmed_mean"
    needs_global_stats = False

    def __init__(self, trim_fraction: float = 0.3) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def trim_count(self, n: int) -> int:
        # ceil, so that 30% of 10 peers trims 3 per side; capped to keep one value.
        return min(math.ceil(self.trim_fraction * n - 1e-9), (n - 1) // 2)

    def aggregate(
        self,
        parts: Sequence[torch.Tensor | None],
        weights: Sequence[float],
        global_sum: GlobalSum = whole_vector,
    ) -> torch.Tensor:
        xs = present(parts)
        n = len(xs)
        b = self.trim_count(n)
        if n - 2 * b < 1:
            raise AggregationError(f"cannot trim {b} per side from {n} contributions")
        stacked, _ = torch.sort(torch.stack(xs), dim=0)
        return ordered_mean(list(stacked[b : n - b]))
