"""The robust rules on whole vectors: known answers, robustness, determinism, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.aggregation import (
    AggregationError,
    CenteredClipping,
    CoordinateMedian,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
    make_aggregator,
)
from shoal.aggregation.krum import krum_select

RULES = ["mean", "median", "trimmed_mean", "centered_clip", "krum"]


def _honest(n: int, k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(k, generator=g)
    return [base + 0.1 * torch.randn(k, generator=g) for _ in range(n)]


def test_median_odd_and_even() -> None:
    xs = [torch.tensor([1.0, 5.0]), torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.0])]
    assert CoordinateMedian().aggregate(xs, [1, 1, 1]).tolist() == [2.0, 0.0]
    xs.append(torch.tensor([10.0, 4.0]))
    assert CoordinateMedian().aggregate(xs, [1, 1, 1, 1]).tolist() == [2.5, 2.0]


def test_trimmed_mean_drops_extremes() -> None:
    xs = [torch.tensor([float(v)]) for v in [1, 2, 3, 4, 1000]]
    assert TrimmedMean(0.2).aggregate(xs, [1] * 5).tolist() == [3.0]
    assert TrimmedMean(0.2).trim_count(10) == 2
    assert TrimmedMean(0.3).trim_count(10) == 3


def test_mean_matches_weights() -> None:
    xs = [torch.tensor([0.0, 2.0]), torch.tensor([4.0, 2.0])]
    assert torch.allclose(WeightedMean().aggregate(xs, [1.0, 3.0]), torch.tensor([3.0, 2.0]))


def test_missing_parts_are_skipped() -> None:
    xs = _honest(5, 50)
    parts: list[torch.Tensor | None] = list(xs)
    parts[2] = None
    for name in RULES:
        out = make_aggregator(name).aggregate(parts, [1.0] * 5)
        assert out.shape == (50,)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "centered_clip", "krum"])
def test_robust_rules_bound_an_outlier_mean_does_not(name: str) -> None:
    honest = _honest(7, 200)
    center = torch.stack(honest).mean(0)
    evil = [torch.full((200,), 1e4) for _ in range(3)]
    parts = [*honest, *evil]
    robust = make_aggregator(name).aggregate(parts, [1.0] * 10)
    mean = WeightedMean().aggregate(parts, [1.0] * 10)
    assert float((robust - center).norm()) < 0.2 * float(center.norm())
    assert float((mean - center).norm()) > 100 * float(center.norm())


def test_krum_drops_the_far_vectors() -> None:
    parts = [*_honest(7, 100), *[torch.full((100,), 50.0)] * 3]
    k = MultiKrum(0.3)
    k.aggregate(parts, [1.0] * 10)
    assert k.last_selected == list(range(7))


def test_krum_select_ties_break_by_index() -> None:
    dist = torch.zeros(5, 5)
    assert krum_select(dist, 1, 3) == [0, 1, 2]
    with pytest.raises(AggregationError):
        krum_select(torch.zeros(3, 3), 1, 2)


def test_centered_clipping_fixed_radius_bounds_influence() -> None:
    honest = [torch.zeros(10) for _ in range(9)]
    out = CenteredClipping(iterations=1, radius=1.0).aggregate(
        [*honest, torch.full((10,), 1e6)], [1] * 10
    )
    assert float(out.norm()) <= 1.0 / 10 + 1e-6


def test_errors() -> None:
    with pytest.raises(AggregationError):
        CoordinateMedian().aggregate([None, None], [1, 1])
    with pytest.raises(AggregationError):
        CoordinateMedian().aggregate([torch.zeros(3), torch.zeros(4)], [1, 1])
    with pytest.raises(AggregationError):
        WeightedMean().aggregate([torch.zeros(3)], [float("nan")])
    with pytest.raises(ValueError):
        make_aggregator("average")
    with pytest.raises(ValueError):
        TrimmedMean(0.5)
    with pytest.raises(ValueError):
        CenteredClipping(iterations=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    k=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(RULES),
)
def test_deterministic_bounded_and_permutation_safe(n: int, k: int, seed: int, name: str) -> None:
    xs = _honest(n, k, seed)
    a = make_aggregator(name).aggregate(xs, [1.0] * n)
    b = make_aggregator(name).aggregate([x.clone() for x in xs], [1.0] * n)
    assert torch.equal(a, b)  # same inputs, same bits
    stacked = torch.stack(xs)
    # Every rule returns a value inside the per-coordinate range of its inputs.
    assert bool((a >= stacked.min(0).values - 1e-5).all())
    assert bool((a <= stacked.max(0).values + 1e-5).all())
