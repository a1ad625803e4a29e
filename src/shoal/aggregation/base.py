"""The aggregator interface shared by the data plane, the tests and the bench.

An aggregator turns the contributions to one slice of the flat vector (a shard at its
owner in the all-reduce, or the whole vector in-process) into one slice. ``parts`` is
in group order (sorted by peer id) with ``None`` for members whose contribution is
missing or was refused, so member indices line up at every owner.

Coordinate-wise rules (median, trimmed mean) need nothing but the slice. Rules that
look at whole vectors (Multi-Krum, centered clipping) compute small per-slice
statistics and ask ``global_sum`` to add them up over all slices; in the all-reduce
that is a nested all-reduce among the group, so every owner gets the same bits and
takes the same decision. In-process, with the whole vector as one slice, the sum over
slices is the statistic itself (``whole_vector``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

# Adds a small fp32 statistic over every shard of the vector; identical result at
# every caller.
GlobalSum = Callable[[torch.Tensor], torch.Tensor]


def whole_vector(stats: torch.Tensor) -> torch.Tensor:
    """The GlobalSum when the slice is the whole vector: nothing else to add."""
    return stats


class AggregationError(ValueError):
    """The aggregator cannot produce a result from these contributions."""


class Aggregator(Protocol):
    name: str
    # True when the rule needs whole-vector statistics (calls ``global_sum``).
    needs_global_stats: bool

    def aggregate(
        self,
        parts: Sequence[torch.Tensor | None],
        weights: Sequence[float],
        global_sum: GlobalSum = whole_vector,
    ) -> torch.Tensor: ...


def present(parts: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """The contributions that arrived, in group order; all 1-D fp32 of one length."""
    got = [p for p in parts if p is not None]
    if not got:
        raise AggregationError("no contributions to aggregate")
    k = got[0].numel()
    for p in got:
        if p.dim() != 1 or p.numel() != k or p.dtype != torch.float32:
            raise AggregationError(f"contribution of shape {tuple(p.shape)} {p.dtype}; want ({k},)")
    return got


def ordered_mean(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Unweighted mean, summed in the given order with separate fp32 mul and add."""
    acc = torch.zeros_like(xs[0])
    tmp = torch.empty_like(xs[0])
    w = torch.tensor(1.0 / len(xs), dtype=torch.float32)
    for x in xs:
        torch.mul(x, w, out=tmp)
        acc.add_(tmp)
    return acc
