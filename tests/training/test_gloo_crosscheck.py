"""weighted_average against a real collective engine: torch.distributed with gloo."""

from pathlib import Path

import pytest
import torch

from shoal.training.diloco_math import weighted_average
from tests.gloo_reference import gloo_sums

WORLD = 3
NUMEL = 10_000
SAMPLES = [100, 250, 7]


def _tensor(rank: int) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(1000 + rank)) * (rank + 1)


@pytest.mark.slow
def test_weighted_average_matches_gloo_all_reduce(tmp_path: Path) -> None:
    xs = [_tensor(r) for r in range(WORLD)]
    (tmp_path / "plain").mkdir()
    (tmp_path / "weighted").mkdir()
    plain = gloo_sums(xs, tmp_path / "plain")
    weighted_sums = gloo_sums(
        [x * s for x, s in zip(xs, SAMPLES, strict=True)], tmp_path / "weighted"
    )

    equal = weighted_average([(x, 1) for x in xs])
    weighted = weighted_average(list(zip(xs, SAMPLES, strict=True)))
    for p, w in zip(plain, weighted_sums, strict=True):  # every rank got the same sum
        assert torch.allclose(equal, p / WORLD, rtol=1e-5, atol=1e-6)
        assert torch.allclose(weighted, w / sum(SAMPLES), rtol=1e-5, atol=1e-5)
    # And the check is not vacuous: a different weighting is far off.
    assert not torch.allclose(weighted, plain[0] / WORLD, rtol=1e-3, atol=1e-3)
