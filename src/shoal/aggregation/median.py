"""Coordinate-wise median.

Trade-off: tolerates up to half the peers being arbitrary (breakdown point 1/2) with no
parameter to tune, but ignores sample weights and is a noisier estimate than the mean
with honest peers (about 1.25x the variance for Gaussian noise), and because each
coordinate is judged alone it can be steered by many small coordinated shifts (ALIE).
With an even count it averages the two middle values, so it is symmetric.
Cost: a sort of n values per coordinate, O(n log n k) time, n k extra memory for the
stacked copy. Fits reduce-scatter directly: each owner applies it to its shard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shoal.aggregation.base import GlobalSum, present, whole_vector


def coordinate_median(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    stacked, _ = torch.sort(torch.stack(list(xs)), dim=0)
    n = stacked.shape[0]
    if n % 2:
        return stacked[n // 2].clone()
    lo, hi = stacked[n // 2 - 1], stacked[n // 2]
    return (lo + hi) * torch.tensor(0.5, dtype=torch.float32)


class CoordinateMedian:
    name = "median"
    needs_global_stats = False

    def aggregate(
        self,
        parts: Sequence[torch.Tensor | None],
        weights: Sequence[float],
        global_sum: GlobalSum = whole_vector,
    ) -> torch.Tensor:
        return coordinate_median(present(parts))
