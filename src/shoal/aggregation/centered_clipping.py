"""Centered clipping (Karimireddy, He, Jaggi 2021).

Start from a robust center ``v`` (the coordinate-wise median) and repeat
``v <- v + mean_i clip(x_i - v, tau)``, where ``clip`` scales a whole vector down to
norm ``tau``. By default ``tau`` is the median of the distances ``||x_i - v||`` each
iteration, so at most half the peers are clipped and no radius needs tuning.

Trade-off: every peer keeps some influence (no hard rejection), bounded by ``tau`` per
peer, so f attackers move the result by at most about ``f/n * tau`` per iteration:
smoother than Krum and close to the mean with honest peers, but a coordinated
attack that stays within ``tau`` (ALIE) passes, and it ignores sample weights.
Cost: O(iters n k) time, n k memory, and per iteration one extra small exchange of n
norms among the group (plus one of n+1 flags), i.e. ``iters + 1`` extra round trips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shoal.aggregation.base import AggregationError, GlobalSum, whole_vector
from shoal.aggregation.median import coordinate_median
from shoal.aggregation.whole_vector_stats import eligible_members, partial_sq_norms


class CenteredClipping:
    name = "centered_clip"
    needs_global_stats = True

    def __init__(self, iterations: int = 3, radius: float | None = None) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if radius is not None and not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.iterations = iterations
        self.radius = radius

    def aggregate(
        self,
        parts: Sequence[torch.Tensor | None],
        weights: Sequence[float],
        global_sum: GlobalSum = whole_vector,
    ) -> torch.Tensor:
        members = eligible_members(parts, global_sum)
        xs = [p for i in members if (p := parts[i]) is not None]
        if len(xs) != len(members):
            raise AggregationError("an eligible member's slice is missing here")
        v = coordinate_median(xs)
        inv_n = torch.tensor(1.0 / len(xs), dtype=torch.float32)
        tmp = torch.empty_like(v)
        for _ in range(self.iterations):
            norms = torch.sqrt(global_sum(partial_sq_norms(xs, v)).to(torch.float64))
            tau = self.radius if self.radius is not None else float(torch.median(norms))
            step = torch.zeros_like(v)
            for x, norm in zip(xs, norms.tolist(), strict=True):
                scale = 1.0 if norm <= tau else tau / norm
                torch.sub(x, v, out=tmp)
                tmp.mul_(torch.tensor(scale, dtype=torch.float32) * inv_n)
                step.add_(tmp)
            v.add_(step)
        return v
