"""Byzantine-robust aggregation rules, selectable per run by name.

Each rule is deterministic and pure torch on CPU (``base.Aggregator``). See each
module's docstring for its trade-off and cost, and docs/ARCHITECTURE.md for how they
plug into the all-reduce and which of them combine with secure aggregation.
"""

from __future__ import annotations

from shoal.aggregation.base import AggregationError, Aggregator, GlobalSum, whole_vector
from shoal.aggregation.centered_clipping import CenteredClipping
from shoal.aggregation.krum import MultiKrum
from shoal.aggregation.mean import WeightedMean
from shoal.aggregation.median import CoordinateMedian
from shoal.aggregation.trimmed_mean import TrimmedMean

AGGREGATORS = ("mean", "median", "trimmed_mean", "centered_clip", "krum")


def make_aggregator(name: str, byzantine_fraction: float = 0.3) -> Aggregator:
    """The aggregator called ``name``; ``byzantine_fraction`` sets trim / f where used."""
    if name == "mean":
        return WeightedMean()
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(byzantine_fraction)
    if name == "centered_clip":
        return CenteredClipping()
    if name == "krum":
        return MultiKrum(byzantine_fraction)
    raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(AGGREGATORS)}")


__all__ = [
    "AGGREGATORS",
    "AggregationError",
    "Aggregator",
    "CenteredClipping",
    "CoordinateMedian",
    "GlobalSum",
    "MultiKrum",
    "TrimmedMean",
    "WeightedMean",
    "make_aggregator",
    "whole_vector",
]
