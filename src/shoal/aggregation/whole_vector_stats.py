"""Whole-vector statistics from per-slice parts: who is present everywhere, distances.

Each owner sees only its shard, so a squared distance between two members' vectors is
the sum over owners of the squared distance between their shards. Owners compute the
partial matrix, ``global_sum`` adds the matrices up, and every owner then holds the
same full matrix and decides the same way. A member counts only if its contribution
reached every owner (its row is complete); one missing anywhere is left out everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shoal.aggregation.base import AggregationError, GlobalSum


def eligible_members(parts: Sequence[torch.Tensor | None], global_sum: GlobalSum) -> list[int]:
    """Indices of the members whose contribution every slice holds (same at every owner)."""
    n = len(parts)
    flags = torch.zeros(n + 1, dtype=torch.float32)
    flags[0] = 1.0  # counts the slices
    for i, p in enumerate(parts):
        if p is not None:
            flags[i + 1] = 1.0
    counts = torch.round(global_sum(flags)).to(torch.int64).tolist()
    slices = counts[0]
    chosen = [i for i in range(n) if counts[i + 1] == slices]
    if not chosen:
        raise AggregationError("no member's contribution reached every owner")
    return chosen


def partial_sq_distances(parts: Sequence[torch.Tensor | None], members: list[int]) -> torch.Tensor:
    """Squared distances between the members' slices (float64 math, fp32 out)."""
    m = len(members)
    out = torch.zeros(m, m, dtype=torch.float64)
    xs = []
    for i in members:
        p = parts[i]
        if p is None:
            raise AggregationError(f"member {i} is eligible but its slice is missing here")
        xs.append(p.to(torch.float64))
    for a in range(m):
        for b in range(a + 1, m):
            d = float(torch.sum((xs[a] - xs[b]) ** 2))
            out[a, b] = out[b, a] = d
    return out.to(torch.float32)


def partial_sq_norms(xs: Sequence[torch.Tensor], center: torch.Tensor) -> torch.Tensor:
    """||x_i - center||^2 of each slice (float64 math, fp32 out)."""
    c = center.to(torch.float64)
    return torch.tensor(
        [float(torch.sum((x.to(torch.float64) - c) ** 2)) for x in xs], dtype=torch.float32
    )
