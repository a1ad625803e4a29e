"""Property tests: Shamir round trips from any t shares; fixed-point sums decode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.secagg import fixed_point, shamir


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, t, list(range(1, n + 1)))
    pick = data.draw(st.permutations(sorted(shares)))[:t]
    assert shamir.reconstruct({x: shares[x] for x in pick}, t) == secret


def test_shamir_errors() -> None:
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"short", 2, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 3, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 2, [1, 1])
    sh = shamir.split(bytes(32), 2, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.reconstruct({1: sh[1][:-1], 2: sh[2]}, 2)
    with pytest.raises(shamir.ShamirError):
        shamir.reconstruct({1: b"\xff" * shamir.SHARE_BYTES, 2: sh[2]}, 2)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=3, max_size=3),
        min_size=1,
        max_size=8,
    )
)
def test_fixed_point_sum_decodes(values: list[list[float]]) -> None:
    xs = [torch.tensor(v, dtype=torch.float32) for v in values]
    fixed_point.check_capacity(len(xs), 8.0, 16)
    acc = torch.zeros(3, dtype=torch.int64)
    for x in xs:
        acc = (acc + fixed_point.encode(x, 8.0, 16)) & fixed_point.MASK
    got = fixed_point.decode(acc, 16)
    want = torch.stack(xs).double().sum(0)
    assert torch.allclose(got.double(), want, atol=len(xs) * 2.0**-16 + 1e-4)
