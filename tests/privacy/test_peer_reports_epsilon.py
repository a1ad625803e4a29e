"""A training peer with DP on reports the epsilon it has spent (three peers, one loop,
real Transports and all-reduce; shoal.attacks.swarm_peer's main)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
import torch

from shoal.attacks.swarm_peer import main
from shoal.privacy import closed_form_epsilon


def test_dp_peers_report_epsilon(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rounds, sigma = 3, 0.8

    def ns(i: int) -> argparse.Namespace:
        return argparse.Namespace(
            dir=str(tmp_path), index=i, peers=3, attackers=0, rounds=rounds, seed=0,
            aggregator="mean", attack="none", attack_param=[], dp_noise=sigma,
            dp_clip=0.5, dp_delta=1e-5,
        )  # fmt: skip

    async def go() -> list[dict[str, object]]:
        async with asyncio.timeout(120):
            return list(await asyncio.gather(*(main(ns(i)) for i in range(3))))

    results = asyncio.run(go())
    want = closed_form_epsilon(sigma, rounds, 1e-5)
    for r in results:
        assert r["epsilon"] == pytest.approx(want, rel=1e-9)
    assert len({r["model_hash"] for r in results}) == 1
