"""all_finite must agree with the exact element-wise scan on every input."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoal.numerics import all_finite

floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@given(arrays(np.float32, st.integers(0, 300), elements=floats))
def test_agrees_with_isfinite(values: np.ndarray) -> None:
    t = torch.from_numpy(values)
    assert all_finite(t) == bool(torch.isfinite(t).all())


def test_overflowing_sum_of_finite_values_is_still_finite() -> None:
    t = torch.full((1000,), 3e38, dtype=torch.float32)
    assert math.isinf(float(t.sum()))
    assert all_finite(t)


def test_inf_minus_inf_is_caught() -> None:
    t = torch.tensor([math.inf, -math.inf, 1.0])
    assert not all_finite(t)
    assert not all_finite(torch.tensor([1.0, math.nan]))
