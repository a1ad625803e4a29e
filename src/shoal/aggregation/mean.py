"""Plain weighted mean: the data plane's default, the baseline every rule is compared to.

Trade-off: optimal with honest peers (uses every sample), no robustness at all: one
peer can move the result anywhere, and a peer's claimed weight is taken as given.
Cost: O(n k) time, no memory beyond the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from shoal.aggregation.base import AggregationError, GlobalSum, whole_vector


class WeightedMean:
    name = "mean"
    needs_global_stats = False

    def aggregate(
        self,
        parts: Sequence[torch.Tensor | None],
        weights: Sequence[float],
        global_sum: GlobalSum = whole_vector,
    ) -> torch.Tensor:
        if len(parts) != len(weights):
            raise AggregationError(f"{len(parts)} parts but {len(weights)} weights")
        pairs = [(x, float(w)) for x, w in zip(parts, weights, strict=True) if x is not None]
        if not pairs:
            raise AggregationError("no contributions to aggregate")
        if any(not math.isfinite(w) or w <= 0 for _, w in pairs):
            raise AggregationError("weights must be finite and > 0")
        total = sum(w for _, w in pairs)
        acc = torch.zeros_like(pairs[0][0])
        tmp = torch.empty_like(acc)
        for x, w in pairs:
            # w / total in float64, one rounding to fp32: as allreduce and diloco_math.
            torch.mul(x, torch.tensor(w / total, dtype=torch.float32), out=tmp)
            acc.add_(tmp)
        return acc
